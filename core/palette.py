"""Colour palettes and class-name files, each defined once."""
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .constants import IGNORE_INDEX

PathLike = Union[str, os.PathLike]
ClassNames = Union[None, PathLike, Sequence[str]]
# A flat [r0, g0, b0, r1, g1, b1, ...] list of 256 colours, the form PIL's putpalette takes.
Palette = List[int]

VOC_CLASSES_FILE = Path(__file__).resolve().parents[1] / "pascal_voc_classes.json"


def voc_palette() -> Palette:
    """VOCdevkit's labelcolormap: bits 0, 1, 2 of the label go to the top bit of r, g, b, the next three
    bits to the bit below, and so on, so small labels get distinct saturated colours."""
    palette = []
    for label in range(256):
        r = g = b = 0
        bits = label
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [r, g, b]
    return palette


# IGNORE_INDEX is drawn as (224, 224, 192), VOC's cream boundary.
VOC_PALETTE: Palette = voc_palette()


def palette_from_colors(colors: Sequence[Sequence[int]]) -> Palette:
    """A 256-entry palette whose first entries are `colors` ((r, g, b) per class); the rest, IGNORE_INDEX
    included, keep the VOC colours."""
    palette = list(VOC_PALETTE)
    for index, rgb in enumerate(colors):
        if index >= IGNORE_INDEX:
            break
        palette[3 * index:3 * index + 3] = [int(c) for c in rgb]
    return palette


def check_palette(palette: object, source: str) -> Palette:
    """`palette` as a flat list of 768 ints in 0..255, or a ValueError naming `source`."""
    if (not isinstance(palette, (list, tuple)) or len(palette) != 768
            or not all(type(v) is int and 0 <= v <= 255 for v in palette)):
        raise ValueError(f"{source}: the palette must be a list of 768 integers in 0..255 (256 RGB colours)")
    return list(palette)


def check_class_names(names: Sequence[str], source: str) -> List[str]:
    """`names` as a list, or a ValueError naming `source`: non-empty, unique strings, at most 255."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ValueError(f"class names from {source} must be a list of names, got {type(names).__name__}")
    names = list(names)
    if not names or len(set(map(str, names))) != len(names) or not all(isinstance(n, str) for n in names):
        shown = names if len(repr(names)) < 200 else f"{len(names)} entries"
        raise ValueError(f"class names from {source} must be a non-empty list of unique strings, got {shown}")
    if len(names) > IGNORE_INDEX:
        # Mask value IGNORE_INDEX marks unlabelled pixels, so it cannot also be a class.
        raise ValueError(f"{source} has {len(names)} classes; at most {IGNORE_INDEX} fit in uint8 masks")
    return names


def read_json_object(path: PathLike, what: str, example: str) -> dict:
    """The non-empty JSON object in `path`, a file of `what`; the errors name the file and show `example`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a folder; give a JSON file like {example}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found; give a JSON file like {example}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Notepad) is not a key
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); write it like {example}") from None
    except RecursionError:  # arrays nested thousands deep
        raise ValueError(f"{path} is nested too deeply to be a {what} file; write it like {example}") from None
    except OSError as e:  # unreadable (permissions, an I/O error)
        raise ValueError(f"cannot read the {what} file {path} ({e.strerror or e}); fix its permissions or give "
                         f"another file") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path} must be a non-empty JSON object, like {example}")
    return mapping


def load_class_names(path: PathLike) -> List[str]:
    """Class names ordered by index, from a JSON file like pascal_voc_classes.json.

    Args:
        path: JSON object mapping each name to its index ({"background": 0, ...}); indices must be 0..N-1.
    """
    path = Path(path)
    mapping = read_json_object(path, "class names", f'{VOC_CLASSES_FILE.name} ({{"background": 0, ...}})')
    if not all(type(v) is int for v in mapping.values()):
        raise ValueError(f"{path} must be a JSON object mapping class names to integer indices, "
                         f"like {{\"background\": 0, \"cat\": 1}}")
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: class indices must be exactly 0..{len(mapping) - 1} (each once), got "
                         f"{sorted(mapping.values())[:20]}; renumber the classes")
    return check_class_names(sorted(mapping, key=mapping.__getitem__), str(path))


def resolve_class_names(class_names: ClassNames, default_file: PathLike = VOC_CLASSES_FILE) -> List[str]:
    """Class names from a list, a JSON file path, or (None) `default_file`.

    Args:
        class_names: list of names ordered by index, path to a JSON file, or None.
        default_file: JSON file used when class_names is None.
    """
    if class_names is None:
        class_names = default_file
    if isinstance(class_names, (str, os.PathLike)):
        return load_class_names(class_names)
    return check_class_names(class_names, "the class_names argument")


def default_class_names(num_classes: int) -> List[str]:
    """The VOC names for 21 classes, else "0", "1", ...: for checkpoints that carry no names."""
    if num_classes == 21:
        return load_class_names(VOC_CLASSES_FILE)
    return [str(i) for i in range(num_classes)]


def class_name(class_names: Optional[Sequence[str]], index: int) -> str:
    """The name of class `index`, or its number when the list is shorter."""
    return class_names[index] if class_names is not None and index < len(class_names) else str(index)
