"""Checks on the files a run will write, made before any work: an output must not be one of the run's inputs,
and an existing file it would replace must be of the kind the flag writes (a --json must not replace a
checkpoint, a mask must not replace a photo), so that a slip of the command line never destroys data.

    check_output("--json", args.json, "json", inputs=[args.weights, args.config])
"""
import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

from .cli import UsageError

PathLike = Union[str, os.PathLike]

# What each kind of output looks like, by its first bytes; "text" and "json" are decided by decoding.
_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "npy": (b"\x93NUMPY",),
    "jpeg": (b"\xff\xd8\xff",),
    "checkpoint": (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"),  # torch.save: zip or pickle
    "gif": (b"GIF87a", b"GIF89a"),
    "tiff": (b"II*\x00", b"MM\x00*"),
    "bmp": (b"BM",),
}
KIND_NAMES = {"png": "PNG picture", "npy": "NumPy array", "jpeg": "JPEG photo", "checkpoint": "PyTorch file",
              "json": "JSON file", "text": "text file", "onnx": "ONNX model", "binary": "binary file",
              "gif": "GIF picture", "tiff": "TIFF picture", "bmp": "BMP picture", "webp": "WebP picture"}


# A JSON object, or an array whose first element is a JSON value; a line such as validation.py's record
# header "[2026-12-03 07:00:00] weights: ..." starts with "[" too and is text.
_JSON_START = re.compile(r'\s*(\{|\[\s*([\[{"\]]|-?\d+(\.\d+)?([eE][+-]?\d+)?\s*[,\]]|true\b|false\b|null\b))')


def file_kind(path: PathLike) -> str:
    """What an existing file holds, from its first 4 KiB: a key of KIND_NAMES, or "empty"."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    for kind, magics in _MAGIC.items():
        if head.startswith(magics):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut by the 4 KiB boundary
                return "binary"
            text = head[:e.start].decode("utf-8")
        return "json" if _JSON_START.match(text) else "text"
    # ONNX is protobuf: ModelProto starts with field 1 (ir_version, a varint) and names its producer.
    if head[:1] == b"\x08" and b"pytorch" in head[:200].lower():
        return "onnx"
    return "binary"


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def check_output(flag: str, path: Optional[PathLike], kind: str, inputs: Iterable[Optional[PathLike]] = (),
                 also: Sequence[str] = ()) -> None:
    """Raises a UsageError naming `flag` if `path` is one of `inputs` (also through a link), or exists and is
    not a file of `kind` (or of one of `also`); an empty file may be replaced. Nothing is written.

    Args:
        flag: the command-line flag, for the message.
        path: the output file (None: not asked for; nothing to check).
        kind: what the flag writes, a key of KIND_NAMES.
        inputs: files the run reads (checkpoints, configs, photos, masks); None entries are skipped.
        also: other kinds the flag may replace (e.g. "text" for a record that is plain text).
    """
    if path is None:
        return
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and _same(path, Path(source)):
            raise UsageError(f"{flag} {path} is {source}, an input of this run; writing it would destroy that "
                             f"input: choose another {flag}")
    if path.is_file():
        found = file_kind(path)
        if found not in (kind, *also, "empty"):
            raise UsageError(f"{flag} {path} exists and is a {KIND_NAMES.get(found, found)}, not a "
                             f"{KIND_NAMES[kind]}; this run would replace it: choose another {flag}, or move "
                             f"that file away")


def check_distinct(outputs: Sequence[tuple]) -> None:
    """Raises a UsageError if two of the (flag, path) outputs name the same file (the second would replace the
    first)."""
    seen: List[tuple] = []
    for flag, path in outputs:
        if path is None:
            continue
        for other_flag, other in seen:
            if _same(Path(path), Path(other)) or os.path.abspath(path) == os.path.abspath(other):
                raise UsageError(f"{flag} {path} is also {other_flag}; give each output its own file")
        seen.append((flag, path))


def is_within(path: PathLike, folder: PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it, links resolved."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def check_output_folder(flag: str, folder: PathLike, data: Iterable[PathLike], what: str = "the dataset") -> None:
    """Raises a UsageError if the output `folder` holds, or lies inside, one of the `data` folders or files
    (whatever is written there could replace them)."""
    for item in data:
        if is_within(folder, item) or is_within(item, folder):
            inside = "lies inside" if is_within(folder, item) else "holds"
            raise UsageError(f"{flag} {folder} {inside} {what} ({item}); files written there could replace it: "
                             f"choose a {flag} outside the data")


# A temporary file of core.platform.atomic_write: .<name>.<random>.tmp
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def remove_leftovers(folders: Iterable[PathLike]) -> List[Path]:
    """Removes the temporary files an interrupted atomic write left in `folders` (not recursive) and returns
    them; the caller says so. Only names atomic_write makes are touched."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                except OSError:
                    continue  # another run's file that just went away, or not ours to remove
                removed.append(path)
    return removed
