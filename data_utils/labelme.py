"""labelme annotations (one JSON file of shapes per photo) -> the folder layout with index masks.

    python my_dataset.py import-labelme SRC_DIR --out DATA --classes classes.json [--val-fraction 0.2]

Shapes are rasterised as labelme itself does (PIL ImageDraw, in list order, so later shapes paint over
earlier ones): polygons, rectangles (two corners), circles (centre and a point on the rim), lines and
linestrips 10 px wide, points as discs of radius 5. Pixels no shape covers get class 0; shapes labelled
"__ignore__" (labelme's convention) become IGNORE_INDEX. The photo is the file's embedded imageData when it
has one (what labelme showed), else the file imagePath names, relative to the JSON file.
"""
import base64
import binascii
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from core.constants import IGNORE_INDEX
from core.palette import PathLike, load_class_names

from .io import image_size, open_image, save_mask
from .staging import check_new_folder, staged_folder

IGNORE_LABEL = "__ignore__"
LINE_WIDTH, POINT_RADIUS = 10, 5  # labelme's shape_to_mask defaults
# PIL draws in 32-bit integers: shapes with coordinates of 1e9 come out empty or wrong, up to 1e7 exact.
MAX_COORDINATE = 1e7
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point")
# Points each shape type needs: (minimum, maximum or None).
_POINTS = {"polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2), "linestrip": (2, None),
           "point": (1, 1)}
# MPO is what Pillow calls a JPEG from a camera that stores a second (preview or stereo) frame after the first:
# a JPEG file to every other reader, torchvision's decoder included.
_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm"}


@dataclass(frozen=True)
class LabelmeFile:
    """One labelme JSON file, checked: shapes as (label, shape type, points), and where its photo comes from."""

    path: Path
    shapes: tuple[tuple[str, str, tuple[tuple[float, float], ...]], ...]
    image_data: Optional[bytes]
    image_path: Optional[Path]
    size: Optional[tuple[int, int]]  # (height, width) the file declares


def _points(raw: Any, where: str) -> tuple[tuple[float, float], ...]:
    try:
        points = tuple((float(x), float(y)) for x, y in raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: points must be a list of [x, y] numbers, got {str(raw)[:80]}") from None
    if not all(math.isfinite(v) for point in points for v in point):
        raise ValueError(f"{where}: points must be finite numbers, got {str(raw)[:80]}")
    if not all(abs(v) <= MAX_COORDINATE for point in points for v in point):
        raise ValueError(f"{where}: points must lie within {MAX_COORDINATE:,.0f} pixels of the image, got "
                         f"{str(raw)[:80]}; fix or delete the shape")
    return points


def _shape(raw: Any, where: str) -> tuple[str, str, tuple[tuple[float, float], ...]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("label"), str):
        raise ValueError(f"{where}: a shape must be an object with a string label")
    kind = raw.get("shape_type") or "polygon"  # old labelme files have no shape_type: polygons
    if kind not in SHAPE_TYPES:
        raise ValueError(f"{where}: shape type {kind!r} is not supported; use one of {', '.join(SHAPE_TYPES)}")
    points = _points(raw.get("points"), where)
    low, high = _POINTS[kind]
    if len(points) < low or (high is not None and len(points) > high):
        wanted = f"{low}" if low == high else f"at least {low}"
        raise ValueError(f"{where}: a {kind} needs {wanted} points, got {len(points)}; fix or delete the shape")
    return raw["label"], kind, points


def _embedded(data: Any, path: Path) -> Optional[bytes]:
    if not data:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError(f"{path}: imageData is not valid base64; re-save the file in labelme") from None


def read_labelme(path: PathLike) -> LabelmeFile:
    """Parses and checks one labelme JSON file (shapes, point counts, image source); ValueError names it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM is not JSON
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save it in labelme") from None
    except RecursionError:  # arrays nested thousands deep
        raise ValueError(f"{path} is nested too deeply to be a labelme file; re-save it in labelme") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise ValueError(f"{path} is not a labelme file: it has no list of shapes")
    shapes = tuple(_shape(s, f"{path}: shape {i}") for i, s in enumerate(doc["shapes"]))
    image_path = doc.get("imagePath")
    if image_path is not None and not isinstance(image_path, str):
        raise ValueError(f"{path}: imagePath must be a string, got {image_path!r}")
    size = None
    if doc.get("imageHeight") is not None and doc.get("imageWidth") is not None:
        try:
            size = (int(doc["imageHeight"]), int(doc["imageWidth"]))
        except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is inf to JSON
            raise ValueError(f"{path}: imageHeight and imageWidth must be integers") from None
    source = path.parent / image_path.replace("\\", "/") if image_path else None  # Windows paths too
    return LabelmeFile(path, shapes, _embedded(doc.get("imageData"), path), source, size)


def check_source(doc: LabelmeFile, class_index: Mapping[str, int], classes_file: PathLike) -> None:
    """Raises ValueError naming the file for an unknown label or a photo that is neither embedded nor found."""
    for i, (label, _, _) in enumerate(doc.shapes):
        if label != IGNORE_LABEL and label not in class_index:
            raise ValueError(f"{doc.path}: shape {i} has label {label!r}, which {classes_file} does not list "
                             f"({', '.join(class_index)}); add it there or relabel the shape "
                             f"({IGNORE_LABEL} = ignore)")
    if doc.image_data is None and (doc.image_path is None or not doc.image_path.is_file()):
        raise FileNotFoundError(f"{doc.path}: its photo {doc.image_path or '(no imagePath)'} not found and the "
                                f"file embeds no imageData; put the photo there or save it with image data")


def draw_shapes(shapes: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], height: int, width: int,
                class_index: Mapping[str, int]) -> np.ndarray:
    """(H, W) uint8 mask of the shapes, drawn in order with PIL as labelme draws them; 0 where none is.

    Args:
        shapes: (label, shape type, points) in the file's order.
        height, width: the photo's size.
        class_index: label -> class index; IGNORE_LABEL draws IGNORE_INDEX.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for label, kind, points in shapes:
        value = IGNORE_INDEX if label == IGNORE_LABEL else class_index[label]
        if kind in ("circle", "point"):
            (cx, cy) = points[0]
            r = math.dist(points[0], points[1]) if kind == "circle" else POINT_RADIUS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = points  # either diagonal, in either order
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value)
        elif kind in ("line", "linestrip"):
            draw.line(list(points), fill=value, width=LINE_WIDTH)
        else:
            draw.polygon(list(points), outline=value, fill=value)
    return np.array(canvas)


def split_stems(stems: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """stem -> "train" or "val": a seeded shuffle puts round(val_fraction x N) files in val (at least one when
    the fraction is positive, and at least one file stays in train)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    order = sorted(stems)
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(order))
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    val = set(order[:n_val])
    return {stem: "val" if stem in val else "train" for stem in stems}


def _write_photo(doc: LabelmeFile, folder: Path) -> Path:
    """Writes the photo's bytes unchanged (embedded data or the referenced file) and returns its path."""
    data = doc.image_data if doc.image_data is not None else doc.image_path.read_bytes()
    where = f"{doc.path}: its imageData" if doc.image_data is not None else str(doc.image_path)
    if not data:
        raise ValueError(f"{where} is empty (0 bytes); re-save the file in labelme or replace the photo")
    with open_image(data, where) as image:  # unreadable or over the pixel limit: a ValueError naming it
        fmt = image.format or ""
    suffix = _SUFFIX.get(fmt)
    if suffix is None:
        raise ValueError(f"{doc.path}: its photo is a {fmt or 'unknown'} file; convert it to JPEG or PNG")
    out = folder / f"{doc.path.stem}{suffix}"
    out.write_bytes(data)
    return out


def import_labelme(src_dir: PathLike, out: PathLike, classes_file: PathLike, val_fraction: float = 0.2,
                   seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Converts every labelme JSON file in `src_dir` into out/{train,val}/{images,masks} plus out/classes.json.
    Every file is checked before anything is written, and `out` appears only once it is complete.

    Args:
        src_dir: folder of labelme .json files (and the photos they reference).
        out: new folder for the dataset (use it as --dataset folder --data-path).
        classes_file: JSON {"background": 0, "cat": 1, ...}; every label must be one of its names.
        val_fraction: share of the files that go to val.
        seed: seed of the train/val shuffle.
        progress: show a progress bar.

    Returns: the number of images per split.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: no such folder of labelme JSON files")
    skip = Path(classes_file).resolve()
    files = sorted(p for p in src_dir.glob("*.json") if p.resolve() != skip)  # the class file may sit there too
    if not files:
        raise ValueError(f"no .json files in {src_dir}; give the folder labelme saved its annotations in")
    check_new_folder(out)
    class_names = load_class_names(classes_file)
    class_index = {name: i for i, name in enumerate(class_names)}
    docs = [read_labelme(path) for path in files]
    for doc in docs:
        check_source(doc, class_index, classes_file)
    splits = split_stems([doc.path.stem for doc in docs], val_fraction, seed)
    with staged_folder(out) as root:
        text = json.dumps(class_index, indent=2) + "\n"
        (root / "classes.json").write_text(text, encoding="utf-8")
        for split in set(splits.values()):
            (root / split / "images").mkdir(parents=True)
            (root / split / "masks").mkdir()
        for doc in tqdm(docs, desc="labelme", unit="file", disable=not progress):
            split = root / splits[doc.path.stem]
            photo = _write_photo(doc, split / "images")
            height, width = image_size(photo)  # as displayed: labelme annotates the EXIF-turned photo
            if doc.size is not None and doc.size != (height, width):
                raise ValueError(f"{doc.path}: declares a {doc.size[0]}x{doc.size[1]} (HxW) image but its photo "
                                 f"is {height}x{width}; the JSON belongs to another image or the photo was edited")
            save_mask(draw_shapes(doc.shapes, height, width, class_index), split / "masks" / f"{doc.path.stem}.png")
    return {split: list(splits.values()).count(split) for split in ("train", "val")}
