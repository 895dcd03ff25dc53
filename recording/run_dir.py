"""The run directory: created once, owned by one run at a time, never clobbered, checked for room, cleaned of
what killed writes left, and given the run's config and log."""
import argparse
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torchvision
import yaml
from tqdm import tqdm

from core.cli import UsageError
from core.platform import FileLock, atomic_write
from core.runtime import Runtime

from .run_files import BEST, CHECKPOINTS, CONFIG_FILE, LAST, LOG_FILE, ORPHAN_PATTERNS, RECORDS, RUN_LOCK

# The run directories this process owns (one per directory, held until the run ends or the process dies).
_OWNED: Dict[str, FileLock] = {}


def claim_run_dir(out: Path, wait_s: float = 0.0) -> None:
    """Makes this process the owner of the run directory `out`, or raises a UsageError naming the owner.

    The lock is a file lock, so a run that crashes or is killed (kill -9 included) leaves it free. Only rank 0
    takes it; an elastic restart waits up to `wait_s` for the dead attempt's processes to be gone.
    """
    key = str(out.resolve())
    if key in _OWNED:  # a second run in the same process, after the first one ended or failed
        return
    lock = FileLock(out / RUN_LOCK)
    owner = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if not lock.acquire(blocking=wait_s > 0, timeout=wait_s, owner=owner):
        holder = lock.owner() or "another process"
        raise UsageError(f"--output-dir {out} is in use by another run ({holder}); wait for it to finish or stop "
                         f"it, or choose another --output-dir")
    _OWNED[key] = lock


def release_run_dir(out: Path) -> None:
    """Gives up the ownership taken by claim_run_dir (a no-op if this process does not own `out`)."""
    lock = _OWNED.pop(str(Path(out).resolve()), None)
    if lock is not None:
        lock.release()


def run_files(out: Path) -> List[str]:
    """The files of `out` that hold a run: checkpoints, and records that are not empty."""
    return [n for n in (*CHECKPOINTS, *RECORDS) if (out / n).is_file() and (out / n).stat().st_size > 0]


def remove_orphaned_temporaries(out: Path) -> List[str]:
    """Deletes the temporary files that killed writes of a run left in `out`; call it as the owner only."""
    notes = []
    for pattern in ORPHAN_PATTERNS:
        for path in sorted(out.glob(pattern)):
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                notes.append(f"removed {path.name} ({size / 2**20:.1f} MiB), left by an interrupted write")
    return notes


def prepare_output_dir(args: argparse.Namespace, est_checkpoint_bytes: int,
                       restarting: bool = False) -> Tuple[Path, List[str]]:
    """Creates and claims the run directory, refusing to clobber an existing run or to start on a full disk.

    Args:
        args: the resolved training arguments (output_dir, resume, overwrite).
        est_checkpoint_bytes: the size of one checkpoint of this run's model.
        restarting: an elastic restart of torchrun, which continues the run in place.
    Returns the directory and notes for the log (orphaned temporary files removed).
    """
    out = Path(args.output_dir)
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output-dir {out} is a file, not a directory; choose another --output-dir")
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write_test.", suffix=".tmp")  # a name of its own
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--output-dir {out} is not writable ({e.strerror or e}); choose another "
                         f"--output-dir") from None
    # Everything below reads and changes the directory: only as its owner, so no other run interleaves.
    claim_run_dir(out, wait_s=60.0 if restarting else 0.0)
    # Records without any checkpoint are those of a run that died before its first one: a new run replaces them.
    existing = [n for n in CHECKPOINTS if (out / n).exists()]
    if existing and not (args.resume or args.overwrite or restarting):
        raise UsageError(f"--output-dir {out} already holds a run ({', '.join(existing)}); pass --resume auto to "
                         f"continue it, --overwrite to start over, or choose another --output-dir")
    resumable = (out / LAST).is_file()
    if args.resume == "auto" and not resumable and existing and not (args.overwrite or restarting):
        # Starting afresh here would wipe the records and replace best.pth with an epoch-0 model.
        raise UsageError(f"--resume auto: --output-dir {out} holds a run ({', '.join(run_files(out))}) but no "
                         f"{LAST} to continue from; resume from another checkpoint (--resume {out / BEST}), "
                         f"start over with --overwrite, or choose another --output-dir")
    if existing and args.overwrite and not (args.resume and resumable):
        (out / LOG_FILE).unlink(missing_ok=True)  # a new log; the records are rewound by the recorders
    notes = remove_orphaned_temporaries(out)
    check_free_space(out, shutil.disk_usage(out).free, est_checkpoint_bytes, replaced_checkpoint_bytes(out))
    return out, notes


def replaced_checkpoint_bytes(out: Path) -> int:
    """Bytes of the checkpoints in `out` that the run's own writes will replace (hard links counted once)."""
    seen: Dict[Tuple[int, int], int] = {}
    for name in CHECKPOINTS:
        with contextlib.suppress(OSError):
            st = (out / name).stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def check_free_space(out: Path, free_bytes: int, checkpoint_bytes: int, existing_bytes: int = 0) -> None:
    """Room for last.pth, best.pth and one temporary copy is needed, or hours of training end unsaved. The
    checkpoints already there (`existing_bytes`, at most two) are replaced, so their room counts as room."""
    need = 3 * checkpoint_bytes + (64 << 20) - min(existing_bytes, 2 * checkpoint_bytes)
    if free_bytes < need:
        raise UsageError(f"--output-dir {out}: only {free_bytes / 2**30:.2f} GiB free, checkpoints need about "
                         f"{need / 2**30:.2f} GiB more; free some space or choose another --output-dir")


class _TqdmHandler(logging.Handler):
    """Console lines written through tqdm, so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def setup_logging(out: Path, is_main: bool) -> logging.Logger:
    """Logger writing to <out>/train.log and to the console."""
    log = logging.getLogger("fcn.train")
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if is_main:
        # backslashreplace: a path that is not valid UTF-8 (undecodable bytes in a file name) is logged, escaped,
        # instead of a "Logging error" traceback.
        file_handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8", errors="backslashreplace")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(file_handler)
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    # Per-interval loss lines go to the file only: on the console the progress bar shows them.
    console.addFilter(lambda r: not getattr(r, "file_only", False))
    log.addHandler(console)
    return log


def environment(runtime: Runtime, world_size: int = 1) -> Dict[str, Any]:
    """Versions, platform, device and precision: what a number depends on besides the arguments."""
    env = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
           "python": sys.version.split()[0], "platform": sys.platform, "device": str(runtime.device),
           "precision": runtime.precision, "world_size": world_size}
    if runtime.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(runtime.device)
    return env


def write_config(out: Path, args: argparse.Namespace, runtime: Runtime, world_size: int = 1) -> None:
    """The resolved arguments plus versions and device, next to the checkpoints."""
    data = {"args": vars(args), "environment": environment(runtime, world_size)}
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(out / CONFIG_FILE, lambda f: f.write(text.encode()))
