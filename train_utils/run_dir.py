"""The run directory: created once, never clobbered, checked for room, and given the run's config and log."""
import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict

import torch
import torchvision
import yaml
from tqdm import tqdm

from core.cli import UsageError
from core.platform import atomic_write
from core.runtime import Runtime

from .distributed import DistInfo

LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = ("last.pth", "best.pth")


def prepare_output_dir(args: argparse.Namespace, est_checkpoint_bytes: int) -> Path:
    """Creates the run directory and refuses to clobber an existing run or to start on a full disk."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a directory; choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write_test", lambda f: f.write(b"ok"))
        (out / ".write_test").unlink()
    except OSError as e:
        raise UsageError(f"--output-dir {out} is not writable ({e.strerror or e}); choose another "
                         f"--output-dir") from None
    restarting = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    existing = [n for n in CHECKPOINTS if (out / n).exists()]
    if existing and not (args.resume or args.overwrite or restarting):
        raise UsageError(f"--output-dir {out} already holds a run ({', '.join(existing)}); pass --resume auto to "
                         f"continue it, --overwrite to start over, or choose another --output-dir")
    if existing and args.overwrite and not args.resume:
        (out / LOG_FILE).unlink(missing_ok=True)  # a new log; the records are rewound by the recorders
    check_free_space(out, shutil.disk_usage(out).free, est_checkpoint_bytes)
    return out


def check_free_space(out: Path, free_bytes: int, checkpoint_bytes: int) -> None:
    """Room for last.pth, best.pth and one temporary copy is needed, or hours of training end unsaved."""
    need = 3 * checkpoint_bytes + (64 << 20)
    if free_bytes < need:
        raise UsageError(f"--output-dir {out}: only {free_bytes / 2**30:.2f} GiB free, checkpoints need about "
                         f"{need / 2**30:.2f} GiB; free some space or choose another --output-dir")


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
        file_handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(file_handler)
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    # Per-interval loss lines go to the file only: on the console the progress bar shows them.
    console.addFilter(lambda r: not getattr(r, "file_only", False))
    log.addHandler(console)
    return log


def environment(info: DistInfo, runtime: Runtime) -> Dict[str, Any]:
    env = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
           "python": sys.version.split()[0], "platform": sys.platform, "device": str(runtime.device),
           "precision": runtime.precision, "world_size": info.world_size}
    if runtime.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(runtime.device)
    return env


def write_config(out: Path, args: argparse.Namespace, info: DistInfo, runtime: Runtime) -> None:
    """The resolved arguments plus versions and device, next to the checkpoints."""
    data = {"args": vars(args), "environment": environment(info, runtime)}
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(out / CONFIG_FILE, lambda f: f.write(text.encode()))
