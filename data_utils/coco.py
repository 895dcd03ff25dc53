"""COCO 2017 restricted to the 20 Pascal VOC categories, built as torchvision's segmentation reference builds it.

Layout: <data-path>/{train2017,val2017}/*.jpg and <data-path>/annotations/instances_{train,val}2017.json.
Each kept annotation (polygons, or RLE for crowds) becomes an instance mask; the target is the per-pixel max of
VOC class x instance mask, pixels covered by more than one instance are IGNORE_INDEX, and an image without kept
annotations is all background. The train split drops images whose kept annotations cover 1000 pixels or less.

Masks are decoded on the fly with pycocotools (an optional dependency). tools/prepare_coco.py writes them once
as palette PNGs under <data-path>/voc_masks/; when its manifest is there, the split reads those PNGs instead
and needs neither pycocotools nor the annotation file.

COCO's polygons were drawn on the stored pixels (browsers ignored EXIF orientation when it was annotated,
and pycocotools' own tools do too), so a mask is turned by its photo's EXIF orientation, like the photo.
"""
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import ExifTags, Image

from core.cli import shown
from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike
from core.platform import file_sha256

from .datasets import SegmentationDataset, Transforms
from .io import check_pixels, open_image
from .pairs import Pair, complete_pairs, missing_files

try:
    from pycocotools import mask as coco_mask
except ImportError:  # optional: only on-the-fly decoding needs it
    coco_mask = None

# COCO category id of VOC classes 0..20 (0 is no COCO category: background is what no kept instance covers).
COCO_VOC_CATEGORIES = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
# The reference keeps a training image only if its kept annotations' "area" fields sum to more than this.
MIN_TRAIN_AREA = 1000
TRAIN_SPLIT = "train2017"
PREPARED_DIR = "voc_masks"

# PIL's transpose for each EXIF orientation (what ImageOps.exif_transpose applies to the photo).
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class ImageAnnotations:
    """The kept annotations of one COCO image: its stored size and (VOC class, segmentation, annotation id)."""

    height: int
    width: int
    objects: tuple[tuple[int, Any, int], ...]
    area: float


def annotation_file(data_path: PathLike, split: str) -> Path:
    """<data-path>/annotations/instances_<split>.json."""
    return Path(data_path) / "annotations" / f"instances_{split}.json"


def require_pycocotools() -> None:
    if coco_mask is None:
        raise ValueError("--dataset coco decodes its masks with pycocotools, which is not installed: "
                         "pip install pycocotools (or run tools/prepare_coco.py once where it is)")


def _number(value: Any) -> bool:
    """A finite JSON number (bool is an int to Python, not to COCO)."""
    return type(value) in (int, float) and math.isfinite(value)


def _count(value: Any) -> bool:
    """A non-negative JSON integer."""
    return type(value) is int and value >= 0


def _check_image(entry: Any) -> str:
    """The problem of one `images` entry, or ""."""
    if not isinstance(entry, dict):
        return f"an image entry is {type(entry).__name__}, not an object"
    if type(entry.get("id")) is not int:
        return f"image entry {shown(entry.get('id'))} has an id that is not an integer"
    name = f"image {entry['id']} ({shown(entry.get('file_name'))})"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        return f"{name}: file_name must be a non-empty string"
    for key in ("height", "width"):
        if not (type(entry.get(key)) is int and entry[key] > 0):
            return f"{name}: {key} {shown(entry.get(key))} is not a positive integer"
    return ""


def _check_fields(ann: Any, images: Mapping[int, tuple[str, int, int]]) -> str:
    """The problem of one annotation's ids and area (its segmentation is checked as it is decoded), or ""."""
    if not isinstance(ann, dict):
        return f"an annotation is {type(ann).__name__}, not an object"
    image_id, category, area = ann.get("image_id"), ann.get("category_id"), ann.get("area", 0.0)
    # The common case first, in one test: this runs for each of COCO train's 860,000 annotations.
    if (type(image_id) is int and image_id in images and type(category) is int and "segmentation" in ann
            and type(area) in (int, float) and math.isfinite(area) and area >= 0):
        return ""
    name = f"annotation {shown(ann.get('id', '(no id)'))}"
    if type(image_id) is not int or image_id not in images:
        return f"{name}: image_id {shown(image_id)} is not the id of an image in the file"
    name += f" (image {images[image_id][0]})"
    if type(category) is not int:  # a string id would silently match no category
        return f"{name}: category_id {shown(category)} is not an integer"
    if "segmentation" not in ann:
        return f"{name}: it has no segmentation"
    return f"{name}: area {shown(area)} is not a non-negative number"


def _image_annotations(data: dict, path: Path) -> dict[str, ImageAnnotations]:
    """File name -> kept annotations; every image entry and annotation is checked first, and the problems are
    raised together (the first few), so that none is silently dropped."""
    voc_class = {cat: index for index, cat in enumerate(COCO_VOC_CATEGORIES) if cat}
    if not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} is not a COCO instances file (bad or missing field: images or annotations "
                         f"must be lists); use annotations/instances_*2017.json from annotations_trainval2017.zip")
    problems = [p for p in map(_check_image, data["images"]) if p]
    images: dict[int, tuple[str, int, int]] = {}
    names: dict[str, int] = {}
    for entry in data["images"] if not problems else ():
        if entry["file_name"] in names:  # the second entry's annotations would replace the first's
            problems.append(f"images {names[entry['file_name']]} and {entry['id']} have the same file_name "
                            f"{entry['file_name']}")
        if entry["id"] in images:
            problems.append(f"two image entries have the id {entry['id']}")
        names.setdefault(entry["file_name"], entry["id"])
        images[entry["id"]] = (entry["file_name"], entry["height"], entry["width"])
    kept: dict[int, list] = {image_id: [] for image_id in images}
    for ann in data["annotations"] if not problems else ():
        problem = _check_fields(ann, images)
        if problem:
            problems.append(problem)
        elif ann["category_id"] in voc_class:
            kept[ann["image_id"]].append(ann)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{path} is not a COCO instances file as COCO defines it: {'; '.join(problems[:3])}{more}; "
                         f"fix or remove these entries")
    return {name: ImageAnnotations(height, width,
                                   tuple((voc_class[a["category_id"]], a["segmentation"], a.get("id", -1))
                                         for a in kept[image_id]),
                                   float(sum(a.get("area", 0) for a in kept[image_id])))
            for image_id, (name, height, width) in images.items()}


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, size: int, mtime_ns: int) -> dict[str, ImageAnnotations]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); download annotations_trainval2017.zip again") from None
    except RecursionError:  # arrays nested thousands deep
        raise ValueError(f"{path} is nested too deeply to be a COCO instances file; download "
                         f"annotations_trainval2017.zip again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO instances file (no images/annotations object)")
    return _image_annotations(data, Path(path))


def load_annotations(path: PathLike) -> dict[str, ImageAnnotations]:
    """Image file name -> its kept annotations, from a COCO instances file (parsed once per file version).

    Args:
        path: annotations/instances_<split>.json.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data-path must hold annotations/instances_{{train,val}}2017"
                                f".json (annotations_trainval2017.zip) next to train2017/ and val2017/")
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _clip_polygon(xs: list[float], ys: list[float], low: float, high_x: float,
                  high_y: float) -> tuple[list[float], list[float]]:
    """The polygon clipped to the box [low, high_x] x [low, high_y] (Sutherland-Hodgman: exact for a box), so
    that pycocotools, which walks every edge pixel by pixel, never sees coordinates far outside the image."""
    for axis, bound, keep_below in ((0, low, False), (0, high_x, True), (1, low, False), (1, high_y, True)):
        points = list(zip(xs, ys))
        out: list[tuple[float, float]] = []
        for k, cur in enumerate(points):
            prev = points[k - 1]
            cur_in = cur[axis] <= bound if keep_below else cur[axis] >= bound
            prev_in = prev[axis] <= bound if keep_below else prev[axis] >= bound
            if cur_in != prev_in:  # the edge crosses the bound: add the crossing point
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append((cross[0], cross[1]))
            if cur_in:
                out.append(cur)
        xs, ys = [x for x, _ in out], [y for _, y in out]
    return xs, ys


def _polygons(segmentation: list, height: int, width: int) -> list[list[float]]:
    """The polygons checked (finite (x, y) pairs), clipped to just outside the image; those of fewer than 3
    points are left out."""
    polygons = []
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(_number(v) for v in polygon):
            raise ValueError(f"a polygon must be a list of finite numbers x1, y1, x2, y2, ..., got "
                             f"{shown(polygon)}")
        if len(polygon) % 2:
            raise ValueError(f"a polygon must list (x, y) pairs, got {len(polygon)} numbers")
        if len(polygon) < 6:  # fewer than 3 points enclose no pixel; dropped, as detectron2 drops them
            continue
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -1 or min(ys) < -1 or max(xs) > width + 1 or max(ys) > height + 1:
            xs, ys = _clip_polygon(xs, ys, -1.0, width + 1.0, height + 1.0)
            if len(xs) < 3:  # wholly outside the image: covers nothing
                continue
        polygons.append([v for point in zip(xs, ys) for v in point])
    return polygons


def _string_counts_sum(counts: str) -> int:
    """The pixels a compressed RLE string covers (pycocotools' rleFrString), or ValueError for a bad string."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts) or not 48 <= ord(counts[p]) < 112:
                raise ValueError("its compressed RLE counts are not a valid RLE string")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("its compressed RLE has a negative run length")
        runs.append(x)
    return sum(runs)


def _check_rle(segmentation: dict, height: int, width: int) -> None:
    """An RLE whose size is the image's and whose run lengths cover exactly height x width pixels (pycocotools
    decodes shorter counts into uninitialised memory)."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width]:
        raise ValueError(f"its RLE size {shown(size)} is not the image's [height, width] [{height}, {width}]")
    if isinstance(counts, list):
        if not all(_count(c) for c in counts):
            raise ValueError(f"its RLE counts must be non-negative integers, got {shown(counts)}")
        total = sum(counts)
    elif isinstance(counts, str):
        total = _string_counts_sum(counts)
    else:
        raise ValueError(f"its RLE counts must be a list of run lengths or an RLE string, got {shown(counts)}")
    if total != height * width:
        raise ValueError(f"its RLE counts cover {total} pixels, but the image has {height} x {width} = "
                         f"{height * width}")


def instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/1 mask of one annotation: polygons (merged), uncompressed RLE (crowds) or compressed RLE,
    decoded by pycocotools as its COCO.annToMask does, after checking what pycocotools does not check (a
    ValueError says what is wrong): polygons of finite (x, y) pairs (clipped to the image; fewer than 3 points
    cover nothing), RLE run lengths that cover the image exactly."""
    require_pycocotools()
    if isinstance(segmentation, list):
        polygons = _polygons(segmentation, height, width)
        if not polygons:  # an annotation without polygons (or only outside the image) covers nothing
            return np.zeros((height, width), dtype=np.uint8)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        _check_rle(segmentation, height, width)
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": segmentation["size"], "counts": counts.encode()}
    else:
        raise ValueError(f"a segmentation must be a list of polygons or an RLE object, got {shown(segmentation)}")
    return coco_mask.decode(rle)


def coco_target(annotations: ImageAnnotations, source: str = "") -> np.ndarray:
    """(H, W) uint8 VOC class mask of one image: max of class x instance mask, 255 where instances overlap."""
    require_pycocotools()
    h, w = annotations.height, annotations.width
    check_pixels(w, h, f"{source} (its height and width in the annotation file)")
    target = np.zeros((h, w), dtype=np.uint8)
    cover = np.zeros((h, w), dtype=np.uint16)  # instances per pixel
    for voc_class, segmentation, ann_id in annotations.objects:
        try:
            mask = instance_mask(segmentation, h, w)
        except ValueError as e:  # what the checks found
            raise ValueError(f"{source}: annotation {ann_id}: {e}; fix or remove that annotation") from None
        except (AttributeError, IndexError, KeyError, TypeError) as e:
            raise ValueError(f"{source}: annotation {ann_id} has a segmentation pycocotools cannot decode "
                             f"({type(e).__name__}: {e}); fix or remove that annotation") from None
        if mask.shape != (h, w):
            raise ValueError(f"{source}: annotation {ann_id} decodes to {mask.shape[0]}x{mask.shape[1]} but its "
                             f"image is {h}x{w} (HxW); fix the RLE's size or the image's height/width")
        np.maximum(target, mask * np.uint8(voc_class), out=target)
        cover += mask
    target[cover > 1] = IGNORE_INDEX
    return target


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation 1..8 of a photo (1 when it has none), from its header."""
    try:
        with open_image(path) as image:
            return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1  # read_image reports an unreadable photo, with its name


def orient_like_photo(mask: np.ndarray, orientation: int) -> np.ndarray:
    """`mask` turned by the EXIF `orientation` of its photo, as read_image turns the photo."""
    method = _EXIF_TRANSPOSE.get(orientation)
    return mask if method is None else np.array(Image.fromarray(mask).transpose(method))


class COCOSegmentation(SegmentationDataset):
    """COCO images whose masks are decoded from their annotations as they are loaded.

    Args:
        pairs: (image path, annotation file) per sample.
        annotations: image file name -> its kept annotations (load_annotations).
        class_names: the 21 VOC classes.
        transforms: joint transform called as transforms(image, mask).
        palette: colours of the mask values.
    """

    def __init__(self, pairs: Sequence[Pair], annotations: Mapping[str, ImageAnnotations],
                 class_names: Sequence[str], transforms: Optional[Transforms] = None,
                 palette: Palette = VOC_PALETTE) -> None:
        require_pycocotools()
        super().__init__(pairs, class_names, transforms, None, palette)
        self.annotations = {image.name: annotations[image.name] for image, _ in self.pairs}

    def load_mask(self, index: int) -> np.ndarray:
        image, ann_file = self.pairs[index]
        target = coco_target(self.annotations[image.name], f"{ann_file} (image {image.name})")
        return orient_like_photo(target, exif_orientation(image))


def coco_pairs(data_path: PathLike, split: str) -> list[Pair]:
    """(image, annotation file) of every image of `split` (train2017: only those the reference keeps)."""
    ann_file = annotation_file(data_path, split)
    annotations = load_annotations(ann_file)
    names = sorted(name for name, ann in annotations.items()
                   if split != TRAIN_SPLIT or (ann.objects and ann.area > MIN_TRAIN_AREA))
    return [(Path(data_path) / split / name, ann_file) for name in names]


def manifest_path(data_path: PathLike, split: str) -> Path:
    """The list tools/prepare_coco.py writes last, once every mask of `split` is written."""
    return Path(data_path) / PREPARED_DIR / f"{split}.json"


def prepared_pairs(data_path: PathLike, split: str) -> Optional[list[Pair]]:
    """(image, prepared PNG mask) pairs when tools/prepare_coco.py has prepared `split`, else None."""
    manifest = manifest_path(data_path, split)
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        names, made_from = list(data["images"]), int(data["annotation_bytes"])
        digest = data.get("annotation_sha256")
        if not isinstance(digest, str) or not all(isinstance(n, str) and n for n in names):
            raise ValueError("no annotation_sha256 (an older version), or image names that are not names")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError):
        raise ValueError(f"{manifest} is damaged or from an older version; rerun tools/prepare_coco.py or delete "
                         f"{manifest.parent} to decode the masks on the fly") from None
    ann_file = annotation_file(data_path, split)
    # The size first (free), then the content: an edit that keeps the size must not leave stale masks in use.
    if ann_file.is_file() and (ann_file.stat().st_size != made_from or file_sha256(ann_file) != digest):
        raise ValueError(f"the masks in {manifest.parent / split} were made from another version of {ann_file}; "
                         f"rerun tools/prepare_coco.py or delete {manifest} to decode them on the fly")
    root = Path(data_path)
    return [(root / split / name, root / PREPARED_DIR / split / (Path(name).stem + ".png")) for name in names]


def write_manifest(data_path: PathLike, split: str, pairs: Sequence[Pair], write: Any) -> None:
    """Records the prepared split (image names, the annotation file's size and SHA-256) with `write`
    (atomic_write)."""
    ann_file = annotation_file(data_path, split)
    text = json.dumps({"annotations": ann_file.name, "annotation_bytes": ann_file.stat().st_size,
                       "annotation_sha256": file_sha256(ann_file),
                       "images": [image.name for image, _ in pairs]}) + "\n"
    write(manifest_path(data_path, split), lambda f: f.write(text.encode("utf-8")))


def find_coco_pairs(data_path: Path, split: str) -> tuple[list[Pair], list[str]]:
    """The pairs of `split` whose files exist (prepared PNGs if any), and one line per missing file."""
    if not (data_path / split).is_dir():
        raise FileNotFoundError(f"{data_path / split} not found: --data-path must be the COCO root holding "
                                f"train2017/, val2017/ and annotations/ (train2017.zip, val2017.zip and "
                                f"annotations_trainval2017.zip unpacked there)")
    pairs = prepared_pairs(data_path, split)
    if pairs is None:
        pairs = coco_pairs(data_path, split)
    return complete_pairs(pairs), missing_files(pairs)


def coco_dataset(pairs: Sequence[Pair], class_names: Sequence[str], transforms: Optional[Transforms],
                 palette: Palette) -> SegmentationDataset:
    """Prepared PNGs read as any mask file; otherwise masks decoded from the annotation file of the pairs."""
    if pairs and pairs[0][1].suffix.lower() == ".png":
        return SegmentationDataset(pairs, class_names, transforms, None, palette)
    annotations = load_annotations(pairs[0][1]) if pairs else {}
    return COCOSegmentation(pairs, annotations, class_names, transforms, palette)
