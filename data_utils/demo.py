"""The synthetic demo dataset: five classes told apart by colour, texture and shape, in the VOC layout.

The same seed writes byte-identical files, so demo runs and tests are reproducible.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.constants import IGNORE_INDEX
from core.palette import Palette, PathLike, palette_from_colors

from .io import save_mask

# Each class has its own colour, texture and shape, so a small CNN separates them by appearance quickly.
DEMO_CLASSES = ("background", "red_striped_disc", "blue_checkered_square", "green_speckled_triangle",
                "yellow_hatched_diamond")
_DEMO_COLOURS = np.array([[0, 0, 0], [205, 40, 40], [40, 70, 215], [35, 165, 55], [235, 205, 35]], np.float32)
# Masks and predictions are drawn in the colours the class names say (VOC's would paint the blue square green).
DEMO_PALETTE: Palette = palette_from_colors(_DEMO_COLOURS.astype(int).tolist())
# The dataset `make demo` trains on; `python my_dataset.py demo` writes the same one by default.
DEMO_NUM_TRAIN, DEMO_NUM_VAL, DEMO_SIZE = 120, 30, 64


def _demo_texture(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) brightness factor giving each class its own texture."""
    y, x = np.mgrid[:size, :size]
    if label == 1:
        return np.where((y // 3) % 2 == 0, 1.0, 0.55)           # horizontal stripes
    if label == 2:
        return np.where((y // 4 + x // 4) % 2 == 0, 1.0, 0.6)   # checkerboard
    if label == 3:
        return np.where(rng.random((size, size)) < 0.25, 1.5, 1.0)  # bright speckles
    return np.where(((x + y) // 3) % 2 == 0, 1.0, 0.7)           # diagonal hatching


def _demo_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) region of one object of class `label` at a random place and scale."""
    r = rng.uniform(0.12, 0.25) * size
    cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, 2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if label == 1:
        ry = r * rng.uniform(0.8, 1.2)
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=1)
    elif label == 2:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif label == 3:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=1)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=1)
    return np.array(canvas, dtype=bool)


def _demo_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Muted colour gradient with noise, (size, size, 3) float: texture the objects must be told apart from."""
    grey = rng.uniform(70, 190, (2, 1, 1, 1)) + rng.uniform(-25, 25, (2, 1, 1, 3))  # two tinted greys
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    ramp = t if rng.random() < 0.5 else t.transpose(1, 0, 2)
    return grey[0] * (1 - ramp) + grey[1] * ramp + rng.normal(0, 12, (size, size, 3))


def boundary_band(label: np.ndarray) -> np.ndarray:
    """Pixels with a differently labelled 8-neighbour: a 2 px band along every boundary, like VOC's."""
    height, width = label.shape
    padded = np.pad(label, 1, mode="edge")
    band = np.zeros(label.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            band |= padded[dy:dy + height, dx:dx + width] != label
    return band


def make_demo_sample(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One demo photo (size, size, 3) uint8 and its mask (size, size) uint8 with 1-3 objects of distinct classes."""
    rgb = _demo_background(size, rng)
    label = np.zeros((size, size), dtype=np.uint8)
    num_objects = int(rng.integers(1, 4))
    for cls in rng.choice(np.arange(1, len(DEMO_CLASSES)), num_objects, replace=False):
        region = _demo_shape(int(cls), size, rng)
        colour = _DEMO_COLOURS[cls] * rng.uniform(0.85, 1.1)
        texture = _demo_texture(int(cls), size, rng)[..., None] * colour + rng.normal(0, 8, (size, size, 3))
        rgb[region] = texture[region]
        label[region] = cls
    label[boundary_band(label)] = IGNORE_INDEX
    return np.clip(rgb, 0, 255).astype(np.uint8), label


def make_demo_dataset(root: PathLike, num_train: int = DEMO_NUM_TRAIN, num_val: int = DEMO_NUM_VAL,
                      size: int = DEMO_SIZE, seed: int = 0, overwrite: bool = False) -> Path:
    """Writes a small synthetic VOC-layout dataset (same seed -> byte-identical files) and returns `root`.

    Layout (--dataset demo, or voc with VOC's colours): root/classes.json and root/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
    ImageSets/Segmentation/{train,val}.txt}; read it with VOCSegmentation(root, split=...).

    Args:
        root: output folder.
        num_train, num_val: images per split.
        size: image side in pixels.
        seed: random seed.
        overwrite: write into a folder that already holds something (its classes.json, split files and
            same-named photos and masks are replaced); without it such a folder is refused.
    """
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(f"demo needs --num-train >= 1, --num-val >= 1 and --size >= 32, got "
                         f"{num_train}, {num_val}, {size}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root} is a file; give a new folder")
    if not overwrite and root.is_dir() and any(root.iterdir()):  # an existing dataset would lose its files
        raise ValueError(f"--out {root} already holds files, which the demo data would replace (classes.json, "
                         f"split files, same-named photos and masks); give a new or empty folder, or pass "
                         f"--overwrite")
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = [f"{split}_{i:04d}" for i in range(count)]
        for i, sample_id in enumerate(ids):
            # One generator per image: each file depends only on (seed, split, index).
            rgb, label = make_demo_sample(size, np.random.default_rng([seed, split_index, i]))
            Image.fromarray(rgb).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=90)
            save_mask(label, voc / "SegmentationClass" / f"{sample_id}.png", DEMO_PALETTE)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    classes = {name: index for index, name in enumerate(DEMO_CLASSES)}
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    return root
