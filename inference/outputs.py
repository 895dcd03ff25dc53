"""The names of the files predict.py writes for a folder of photos: one distinct stem per photo, and no output
that would replace an input."""
import os
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from core.cli import UsageError
from core.outputs import check_output
from data_utils import IMAGE_EXTENSIONS

PathLike = Union[str, os.PathLike]
# What predict.py writes, by the ending of the file name.
OUTPUT_KINDS = {".png": "png", ".npy": "npy"}


def output_stems(paths: Sequence[Path], endings: Sequence[str] = (".png",)) -> List[str]:
    """A stem per photo such that no two photos' output files (stem + each of `endings`) coincide: the photo's
    own stem, stem_ext when photos share a stem (a.jpg and a.png give a_jpg and a_png), then numbered
    (stem_2, ...) where a name is still taken, e.g. by another photo's overlay. Compared case-insensitively,
    as macOS and Windows file systems compare names."""
    shared = Counter(p.stem.casefold() for p in paths)
    claimed: set = set()
    stems = []
    for path in paths:
        stem = path.stem if shared[path.stem.casefold()] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        name, n = stem, 1
        while any((name + ending).casefold() in claimed for ending in endings):
            n += 1
            name = f"{stem}_{n}"
        claimed.update((name + ending).casefold() for ending in endings)
        stems.append(name)
    return stems


def _resolved(path: Path) -> str:
    """The absolute path with links followed; a link loop (which the reader reports and skips) stays as named."""
    try:
        return str(path.resolve()).casefold()
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError for a loop, later ones OSError
        return os.path.abspath(path).casefold()


def refuse_overwriting_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Raises a UsageError before anything is written if an output file would replace an input photo."""
    by_name = {_resolved(p): p for p in inputs}
    for out in outputs:
        photo = by_name.get(_resolved(out))
        if photo is None and out.exists():
            photo = next((p for p in inputs if p.exists() and out.samefile(p)), None)  # hard or symbolic links
        if photo is not None:
            raise UsageError(f"--output: writing {out} would overwrite the input photo {photo}; write the "
                             f"predictions to another folder (--output)")


def check_output_files(outputs: Sequence[Path], inputs: Sequence[Optional[PathLike]] = ()) -> None:
    """Raises a UsageError before anything is written if an output would replace one of `inputs` (the
    checkpoint, the config) or an existing file of another kind than it is (a mask over a JPEG or a text)."""
    for out in outputs:
        check_output("--output", out, OUTPUT_KINDS[out.suffix.lower()], inputs)


def output_target(output: Optional[str], single: bool) -> Tuple[Optional[Path], Path]:
    """(mask file, None) or (None, folder) that --output names: the file itself for one photo and a .png name,
    else a folder (predictions/ by default). A file name of another kind is refused, rather than made a folder
    of that name."""
    if output is None:
        return None, Path("predictions")
    path = Path(output)
    suffix = path.suffix.lower()
    if path.is_dir() or not (suffix == ".png" or suffix in IMAGE_EXTENSIONS or suffix == ".npy"):
        return None, path
    if not single:
        raise UsageError(f"--output {path}: --image is a folder, so --output names a folder for its masks, not a "
                         f"{suffix} file; give a folder name")
    if suffix != ".png":
        raise UsageError(f"--output {path}: masks are written as PNG; name the file {path.with_suffix('.png')}, "
                         f"or give a folder")
    return path, path.parent
