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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import ExifTags, Image

from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike

from .datasets import SegmentationDataset, Transforms
from .io import open_image
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


def _image_annotations(data: dict, path: Path) -> dict[str, ImageAnnotations]:
    voc_class = {cat: index for index, cat in enumerate(COCO_VOC_CATEGORIES) if cat}
    try:
        images = {int(i["id"]): (str(i["file_name"]), int(i["height"]), int(i["width"])) for i in data["images"]}
        kept: dict[int, list] = {image_id: [] for image_id in images}
        for ann in data["annotations"]:
            if ann["category_id"] in voc_class:
                kept[int(ann["image_id"])].append(ann)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a COCO instances file (bad or missing field: {e}); use "
                         f"annotations/instances_*2017.json from annotations_trainval2017.zip") from None
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


def instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/1 mask of one annotation: polygons (merged), uncompressed RLE (crowds) or compressed RLE,
    decoded by pycocotools as its COCO.annToMask does."""
    require_pycocotools()
    if isinstance(segmentation, list):
        if not segmentation:  # an annotation without polygons covers nothing
            return np.zeros((height, width), dtype=np.uint8)
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return coco_mask.decode(rle)


def coco_target(annotations: ImageAnnotations, source: str = "") -> np.ndarray:
    """(H, W) uint8 VOC class mask of one image: max of class x instance mask, 255 where instances overlap."""
    require_pycocotools()
    h, w = annotations.height, annotations.width
    target = np.zeros((h, w), dtype=np.uint8)
    cover = np.zeros((h, w), dtype=np.uint16)  # instances per pixel
    for voc_class, segmentation, ann_id in annotations.objects:
        try:
            mask = instance_mask(segmentation, h, w)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
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
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{manifest} is damaged; rerun tools/prepare_coco.py or delete "
                         f"{manifest.parent} to decode the masks on the fly") from None
    ann_file = annotation_file(data_path, split)
    if ann_file.is_file() and ann_file.stat().st_size != made_from:
        raise ValueError(f"the masks in {manifest.parent / split} were made from another version of {ann_file}; "
                         f"rerun tools/prepare_coco.py or delete {manifest} to decode them on the fly")
    root = Path(data_path)
    return [(root / split / name, root / PREPARED_DIR / split / (Path(name).stem + ".png")) for name in names]


def write_manifest(data_path: PathLike, split: str, pairs: Sequence[Pair], write: Any) -> None:
    """Records the prepared split (image names and the annotation file's size) with `write` (atomic_write)."""
    ann_file = annotation_file(data_path, split)
    text = json.dumps({"annotations": ann_file.name, "annotation_bytes": ann_file.stat().st_size,
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
