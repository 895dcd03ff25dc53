"""Checkpoints and run records, written so that a crash or kill at any moment leaves no corrupt file.

Every file is written to a temporary name in the same directory, flushed to disk, then moved over the old
one with os.replace (atomic on POSIX): a reader sees the old file or the new one, never half of either.
Appending to the record files works the same way (copy + append + replace), under a lock.
"""
import contextlib
import fcntl
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Union

import numpy as np
import torch

from .distributed import is_main_process


# Read once: reading it means setting it, which would briefly give files other threads create no umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], write: Callable[[Any], None], mode: str = "wb") -> None:
    """Calls write(file) on a temporary file next to `path`, then atomically replaces `path` with it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """torch.save(state) to `path` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def atomic_copy(src: Union[str, Path], dst: Union[str, Path]) -> None:
    """Makes `dst` a copy of `src` atomically: a hard link where the filesystem has them (no bytes written;
    `src` is later replaced, never modified in place, so the link keeps its content), else a full copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 16 << 20))


def save_on_master(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Saves only on rank 0 (every rank holds the same weights under DDP)."""
    if is_main_process():
        save_checkpoint(state, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # flock on the directory serialises appends from concurrent processes (e.g. two validation runs).
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_text(path: Union[str, Path], text: str) -> None:
    """Appends `text` to `path` (created if missing) so that the file is always either before or after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write(path, lambda f: f.write(old + text.encode("utf-8")))


def append_jsonl(path: Union[str, Path], record: Dict[str, Any]) -> None:
    """Appends one JSON line (NaN written as null, so every line parses as strict JSON)."""
    append_text(path, json.dumps(nan_to_none(record), sort_keys=False) + "\n")


def nan_to_none(obj: Any) -> Any:
    """NaN floats (anywhere in dicts, lists, tuples) to None, so that json.dumps writes strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def get_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, as plain types and tensors (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restores what `get_rng_state` saved (the CUDA part only when the device count matches)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
