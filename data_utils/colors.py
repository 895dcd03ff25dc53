"""Colour masks (one RGB colour per class, as many annotation tools export them) -> index masks.

    python my_dataset.py convert-colors MASK_DIR --colors colors.json --out DIR

colors.json maps each class name to its colour, in class-index order; a class may have several colours, and
"__ignore__" lists colours that become IGNORE_INDEX:

    {"background": [0, 0, 0], "road": [128, 64, 128], "car": [[0, 0, 142], [0, 0, 143]],
     "__ignore__": [255, 255, 255]}
"""
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.constants import IGNORE_INDEX
from core.palette import PathLike, check_class_names, palette_from_colors, read_json_object

from .io import IMAGE_EXTENSIONS, open_image, save_mask
from .staging import check_new_folder, staged_folder

IGNORE_LABEL = "__ignore__"
_SHOWN = 5  # unknown colours listed per file


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(type(v) is int and 0 <= v <= 255 for v in value)):
        raise ValueError(f"{where}: a colour must be [r, g, b] with integers in 0..255, got {value!r}")
    return tuple(value)


def load_colors(path: PathLike) -> tuple[list[str], dict[tuple[int, int, int], int]]:
    """Class names (file order) and colour -> class index (IGNORE_INDEX for "__ignore__") from colors.json."""
    path = Path(path)
    mapping = read_json_object(path, "colours", '{"background": [0, 0, 0], "road": [128, 64, 128]}')
    names = check_class_names([name for name in mapping if name != IGNORE_LABEL], str(path))
    table: dict[tuple[int, int, int], int] = {}
    for name, value in mapping.items():
        index = IGNORE_INDEX if name == IGNORE_LABEL else names.index(name)
        several = isinstance(value, list) and value and isinstance(value[0], list)
        for color in (value if several else [value]):
            color = _color(color, f"{path}: {name}")
            if color in table and table[color] != index:
                raise ValueError(f"{path}: colour {color} is given to two classes; each colour must mean one class")
            table[color] = index
    return names, table


def colors_to_index(rgb: np.ndarray, table: dict[tuple[int, int, int], int], source: str) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 class indices; ValueError listing every unknown colour."""
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    colors = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in unique]
    unknown = [(color, int(n)) for color, n in zip(colors, counts) if color not in table]
    if unknown:
        unknown.sort(key=lambda item: -item[1])
        shown = ", ".join(f"colour {c} on {n} pixels" for c, n in unknown[:_SHOWN])
        more = f" and {len(unknown) - _SHOWN} more colours" if len(unknown) > _SHOWN else ""
        raise ValueError(f"{source}: {shown}{more} not in the colours file; add them (to a class or to "
                         f"{IGNORE_LABEL}); JPEG masks blend colours at edges, export PNG")
    lut = np.array([table[color] for color in colors], dtype=np.uint8)
    return lut[inverse].reshape(codes.shape)


def read_color_mask(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 colours of a mask file (alpha dropped; a mask's EXIF orientation is not applied)."""
    with open_image(path) as image:  # empty files, bombs and unreadable headers: one ValueError naming it
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ValueError(f"{path} is a 16/32-bit image, not a colour mask")
        try:
            return np.array(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read {path}: {e}; replace it or remove it from {path.parent}") from None


def convert_colors(mask_dir: PathLike, colors_file: PathLike, out: PathLike, progress: bool = True) -> int:
    """Writes one index PNG per colour mask of `mask_dir` into `out` (same stem, drawn in the file's colours)
    plus out/classes.json. Nothing is written unless every mask converts.

    Args:
        mask_dir: folder of RGB colour masks.
        colors_file: class name -> colour(s) JSON (see the module docstring).
        out: new folder for the index masks.
        progress: show a progress bar.

    Returns: the number of masks converted.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"{mask_dir}: no such folder of colour masks")
    files = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no mask images ({', '.join(IMAGE_EXTENSIONS)}) in {mask_dir}")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"{mask_dir}: several masks named {twice[0]}.*; each output is <stem>.png, rename one")
    check_new_folder(out)
    names, table = load_colors(colors_file)
    first = {}
    for color, index in table.items():
        first.setdefault(index, color)
    palette = palette_from_colors([first.get(i, (0, 0, 0)) for i in range(len(names))])
    failures = []
    with staged_folder(out) as root:
        (root / "classes.json").write_text(json.dumps({n: i for i, n in enumerate(names)}, indent=2) + "\n",
                                           encoding="utf-8")
        for path in tqdm(files, desc="colours", unit="mask", disable=not progress):
            try:
                save_mask(colors_to_index(read_color_mask(path), table, str(path)), root / f"{path.stem}.png",
                          palette)
            except ValueError as e:  # go on, to report how many masks are affected
                failures.append(str(e))
        if failures:
            more = f" (and {len(failures) - 1} more masks with problems)" if len(failures) > 1 else ""
            raise ValueError(failures[0] + more)
    return len(files)
