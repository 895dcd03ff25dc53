"""Tiny trees of the published dataset layouts (COCO, Cityscapes, ADE20K), a folder split and a labelme folder.

Written with PIL, numpy and pycocotools directly, never with the project's own writers, so the tests read
data the code under test did not produce.
"""
import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from conftest import write_palette_png

# ------------------------------------------------------------------------------------------------- COCO

# file name -> (split folder, stored height, stored width, EXIF orientation).
COCO_IMAGES = {
    "000000000001.jpg": ("train2017", 64, 64, 1),
    "000000000002.jpg": ("train2017", 48, 64, 1),  # one kept annotation of area <= 1000: not a training image
    "000000000003.jpg": ("train2017", 64, 48, 1),  # only a non-VOC annotation: not a training image
    "000000000004.jpg": ("val2017", 64, 64, 1),
    "000000000005.jpg": ("val2017", 48, 64, 6),    # stored 48x64, shown turned a quarter clockwise (64x48)
    "000000000006.jpg": ("val2017", 40, 56, 1),    # no annotation: all background, still a validation image
}
# The categories the issue lists for VOC classes 0..20, typed out again here.
COCO_TO_VOC = {5: 1, 2: 2, 16: 3, 9: 4, 44: 5, 6: 6, 3: 7, 17: 8, 62: 9, 21: 10, 67: 11, 18: 12, 19: 13, 4: 14,
               1: 15, 64: 16, 20: 17, 63: 18, 7: 19, 72: 20}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a 0/1 mask: run lengths in column-major order, starting with a run of 0s."""
    counts, current, run = [], 0, 0
    for value in mask.ravel(order="F"):
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def coco_annotations(split: str) -> list[tuple[str, int, object, int]]:
    """(image file, COCO category, segmentation, iscrowd) of the split."""
    if split == "train2017":
        return [
            ("000000000001.jpg", 17, [[8, 8, 40, 8, 40, 40, 8, 40]], 0),          # cat
            ("000000000001.jpg", 1, [[30, 30, 60, 30, 60, 60, 30, 60]], 0),       # person, overlaps the cat
            ("000000000001.jpg", 3, uncompressed_rle(_box(64, 64, 50, 64, 0, 20)), 1),  # crowd of cars
            ("000000000001.jpg", 10, [[4, 4, 20, 4, 20, 20, 4, 20]], 0),          # traffic light: dropped
            ("000000000001.jpg", 18, [[44, 2, 62, 2, 62, 20], [44, 22, 54, 22, 44, 30]], 0),  # dog, two parts
            ("000000000002.jpg", 16, [[10, 10, 30, 10, 30, 30, 10, 30]], 0),      # bird, 20x20 = 400 px
            ("000000000003.jpg", 10, [[2, 2, 46, 2, 46, 60, 2, 60]], 0),          # traffic light only
        ]
    bus = coco_mask.encode(np.asfortranarray(_box(64, 64, 5, 40, 5, 50)))
    bus["counts"] = bus["counts"].decode()  # as a JSON file stores compressed RLE
    return [
        ("000000000004.jpg", 6, bus, 0),                                           # compressed RLE
        ("000000000004.jpg", 20, [[30, 30, 63, 30, 63, 63, 30, 63]], 0),           # sheep, overlaps the bus
        ("000000000005.jpg", 19, [[4, 4, 40, 4, 40, 20, 4, 20]], 0),               # horse, in stored pixels
    ]


def coco_tree(root: Path) -> Path:
    """root/{train2017,val2017}/*.jpg and root/annotations/instances_*.json (areas from pycocotools)."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    ids = {name: i + 1 for i, name in enumerate(COCO_IMAGES)}
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        images, annotations = [], []
        for name, (image_split, h, w, orientation) in COCO_IMAGES.items():
            if image_split != split:
                continue
            exif = Image.Exif()
            exif[0x0112] = orientation
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / name,
                                                                                  exif=exif.tobytes())
            images.append({"id": ids[name], "file_name": name, "height": h, "width": w})
        for n, (name, category, segmentation, crowd) in enumerate(coco_annotations(split)):
            _, h, w, _ = COCO_IMAGES[name]
            if isinstance(segmentation, list):
                rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, h, w))
            elif isinstance(segmentation["counts"], list):
                rle = coco_mask.frPyObjects(segmentation, h, w)
            else:
                rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
            annotations.append({"id": 100 + n, "image_id": ids[name], "category_id": category,
                                "segmentation": segmentation, "iscrowd": crowd,
                                "area": float(coco_mask.area(rle))})
        categories = [{"id": c, "name": str(c)} for c in sorted(set(COCO_TO_VOC) | {10})]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


# ------------------------------------------------------------------------------------------- Cityscapes

# cityscapesScripts' labels.py: (name, id, trainId) of every label; 255 = not evaluated.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]
# labels.py's colours of train ids 0..18.
CITYSCAPES_COLORS = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                     (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                     (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                     (0, 80, 100), (0, 0, 230), (119, 11, 32)]
CITYSCAPES_FILES = {"train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
                    "val": [("frankfurt", "frankfurt_000000_000294")]}


def cityscapes_tree(root: Path) -> Path:
    """leftImg8bit/ and gtFine/ with 32x64 photos and raw labelId masks using every id (plus decoy files)."""
    rng = np.random.default_rng(1)
    for split, files in CITYSCAPES_FILES.items():
        for city, stem in files:
            images, labels = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(images / f"{stem}_leftImg8bit.png")
            ids = rng.integers(0, 34, (32, 64), dtype=np.uint8)
            ids[0, :34] = np.arange(34)  # every label id occurs
            Image.fromarray(ids).save(labels / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(ids * 7).save(labels / f"{stem}_gtFine_instanceIds.png")  # not a label map
            Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(labels / f"{stem}_gtFine_color.png")
    return root


# ----------------------------------------------------------------------------------------------- ADE20K

ADE20K_FILES = {"training": ["ADE_train_00000001", "ADE_train_00000002"], "validation": ["ADE_val_00000001"]}


def ade20k_tree(root: Path) -> Path:
    """root/ADEChallengeData2016/{images,annotations}/{training,validation} with values 0..150."""
    rng = np.random.default_rng(2)
    base = root / "ADEChallengeData2016"
    for split, stems in ADE20K_FILES.items():
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(base / "images" / split / f"{stem}.jpg")
            raw = rng.integers(0, 151, (48, 40), dtype=np.uint8)
            raw[0, :3] = [0, 1, 150]
            Image.fromarray(raw).save(base / "annotations" / split / f"{stem}.png")
    return root


# ---------------------------------------------------------------------------------------------- labelme

LABELME_CLASSES = ["background", "cat", "dog", "car", "tree"]


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def labelme_shapes() -> dict[str, list[dict]]:
    """The shapes of each file, every shape type labelme draws."""
    def shape(label, kind, points):
        return {"label": label, "points": points, "shape_type": kind, "group_id": None, "flags": {}}
    return {
        "embedded": [shape("cat", "polygon", [[2, 2], [30, 2], [2, 30]]),
                     shape("dog", "rectangle", [[40, 20], [20, 4]]),        # corners in reverse order, over the cat
                     shape("car", "circle", [[46, 46], [46, 56]]),
                     shape("tree", "line", [[2, 50], [26, 50]])],
        "referenced": [shape("dog", "linestrip", [[5, 10], [30, 10], [30, 40]]),
                       shape("car", "point", [[50, 50]]),
                       shape("__ignore__", "rectangle", [[45, 5], [60, 20]])],
        "old_format": [{"label": "tree", "points": [[10, 10], [50, 10], [50, 50], [10, 50]]}],  # no shape_type
    }


def labelme_folder(root: Path) -> Path:
    """Three labelme files: one embedding its PNG, one referencing a JPEG, one (old format) referencing a PNG
    in a subfolder with a Windows path."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    (root / "photos").mkdir()
    shapes = labelme_shapes()
    photos = {name: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for name in shapes}
    Image.fromarray(photos["referenced"]).save(root / "referenced.jpg", quality=95)
    Image.fromarray(photos["old_format"]).save(root / "photos" / "old.png")
    docs = {
        "embedded": {"imagePath": "embedded.png", "imageData": base64.b64encode(_png_bytes(photos["embedded"])).decode()},
        "referenced": {"imagePath": "referenced.jpg", "imageData": None},
        "old_format": {"imagePath": "photos\\old.png", "imageData": None},
    }
    for name, doc in docs.items():
        doc.update(version="5.4.1", flags={}, shapes=shapes[name], imageHeight=64, imageWidth=64)
        (root / f"{name}.json").write_text(json.dumps(doc))
    (root / "classes.json").write_text(json.dumps({n: i for i, n in enumerate(LABELME_CLASSES)}))
    return root


def make_folder_split(root: Path) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem, suffix in [("a", ".jpg"), ("b", ".png"), ("c", ".jpeg")]:
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(images / f"{stem}{suffix}")
        write_palette_png(masks / f"{stem}.png", rng.integers(0, 3, (20, 30)).astype(np.uint8))
    (images / "notes.txt").write_text("not an image, ignored")
    return images, masks
