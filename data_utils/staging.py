"""Writing a whole output folder or nothing: converters fill a hidden sibling folder that is renamed at the end."""
import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from core.palette import PathLike


def check_new_folder(out: PathLike) -> Path:
    """`out` as a Path, or a ValueError when it already holds something (converters never overwrite)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not empty; give a new folder or remove it")
    return out


@contextlib.contextmanager
def staged_folder(out: PathLike) -> Iterator[Path]:
    """A new empty folder next to `out`; it becomes `out` when the block succeeds and is deleted otherwise,
    so an error or an interruption leaves no half-written output.

    Args:
        out: the folder to create; it must not exist or be empty.
    """
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
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
