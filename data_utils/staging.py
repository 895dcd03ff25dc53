"""Writing a whole output folder or nothing: converters fill a hidden sibling folder that is renamed at the end.

A staging folder `.NAME.partial-XXXXXXXX` is held, while it fills, by a lock on the file next to it
(`.NAME.partial-XXXXXXXX.lock`), which the OS frees when the process ends however it ends. A kill -9 or a power
cut leaves the folder behind; the next conversion to the same output finds it unlocked, removes it and says so.
"""
import contextlib
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator, List

from core.palette import PathLike
from core.platform import FileLock

_LOCK_SUFFIX = ".lock"


def check_new_folder(out: PathLike) -> Path:
    """`out` as a Path, or a ValueError when it already holds something (converters never overwrite)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not empty; give a new folder or remove it")
    return out


def _lock_of(staging: Path) -> Path:
    return staging.with_name(staging.name + _LOCK_SUFFIX)


def remove_leftovers(out: PathLike) -> List[Path]:
    """Removes the staging folders of `out` that no running conversion holds (left by a killed one), prints
    one line for each, and returns them."""
    out = Path(out)
    removed = []
    for staging in sorted(out.parent.glob(f".{out.name}.partial-*")):
        if staging.name.endswith(_LOCK_SUFFIX) or not staging.is_dir() or staging.is_symlink():
            continue
        lock = FileLock(_lock_of(staging))
        if not lock.acquire(blocking=False):  # a conversion running now
            continue
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            lock.release()
            _lock_of(staging).unlink(missing_ok=True)
        print(f"removed {staging}, the unfinished output of an interrupted earlier conversion", file=sys.stderr)
        removed.append(staging)
    return removed


@contextlib.contextmanager
def staged_folder(out: PathLike) -> Iterator[Path]:
    """A new empty folder next to `out`; it becomes `out` when the block succeeds and is deleted otherwise,
    so an error or an interruption leaves no half-written output (a kill leaves it for the next run to remove).

    Args:
        out: the folder to create; it must not exist or be empty.
    """
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    lock = FileLock(_lock_of(staging))
    lock.acquire()  # before the folder exists, so no other run ever sees it unlocked
    try:
        staging.mkdir()  # mkdir (not mkdtemp) so the result gets the usual permissions
        try:
            yield staging
            check_new_folder(out)
            if out.exists():
                out.rmdir()
            os.rename(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        lock.release()
        _lock_of(staging).unlink(missing_ok=True)
