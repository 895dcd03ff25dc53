"""Segmentation data: Pascal VOC and folder datasets, mask I/O in the VOC palette, batch collation, a
synthetic demo dataset and a data checker.

    python my_dataset.py check --data-path /data/VOC --dataset voc --split train
    python my_dataset.py demo --out data/demo

Items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)). Nothing is normalised or turned
into floats here: uint8 moves 4x fewer bytes through the loader, and normalisation happens on the device.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from train_utils.cli import USER_ERRORS, ArgumentParser, one_line
from train_utils.constants import IGNORE_INDEX

PathLike = Union[str, os.PathLike]
Pair = tuple[Path, Path]
ClassNames = Union[None, PathLike, Sequence[str]]
Sample = tuple[tv_tensors.Image, tv_tensors.Mask]
Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], Sample]

VOC_CLASSES_FILE = Path(__file__).resolve().with_name("pascal_voc_classes.json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DATASETS = ("voc", "voc-aug", "folder")


def _voc_palette() -> list[int]:
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


# Flat [r0, g0, b0, r1, ...] for the 256 labels; IGNORE_INDEX is drawn as (224, 224, 192), VOC's cream boundary.
VOC_PALETTE: list[int] = _voc_palette()


# ----------------------------------------------------------------------------------------------- class names

def load_class_names(path: PathLike) -> list[str]:
    """Class names ordered by index, from a JSON file like pascal_voc_classes.json.

    Args:
        path: JSON object mapping each name to its index ({"background": 0, ...}); indices must be 0..N-1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} not found; give a JSON file like "
                                f"{VOC_CLASSES_FILE.name} ({{\"background\": 0, ...}})")
    try:
        mapping = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); write it like {VOC_CLASSES_FILE.name}") from e
    if not isinstance(mapping, dict) or not all(type(v) is int for v in mapping.values()):
        raise ValueError(f"{path} must be a JSON object mapping class names to integer indices, "
                         f"like {{\"background\": 0, \"cat\": 1}}")
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: class indices must be exactly 0..{len(mapping) - 1} (each once), got "
                         f"{sorted(mapping.values())}; renumber the classes")
    return _check_class_names(sorted(mapping, key=mapping.__getitem__), str(path))


def _check_class_names(names: Sequence[str], source: str) -> list[str]:
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class names from {source} must be a non-empty list of unique names, got {names}")
    if len(names) > IGNORE_INDEX:
        # Mask value IGNORE_INDEX marks unlabelled pixels, so it cannot also be a class.
        raise ValueError(f"{source} has {len(names)} classes; at most {IGNORE_INDEX} fit in uint8 masks")
    return names


def resolve_class_names(class_names: ClassNames, default_file: PathLike = VOC_CLASSES_FILE) -> list[str]:
    """Class names from a list, a JSON file path, or (None) `default_file`.

    Args:
        class_names: list of names ordered by index, path to a JSON file, or None.
        default_file: JSON file used when class_names is None.
    """
    if class_names is None:
        class_names = default_file
    if isinstance(class_names, (str, os.PathLike)):
        return load_class_names(class_names)
    return _check_class_names(class_names, "the class_names argument")


# ------------------------------------------------------------------------------------------------- file I/O

def _open_image(path: PathLike) -> Image.Image:
    """Opens and fully decodes `path`, so a truncated file fails here, with its name, not inside a batch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    image = None
    try:
        image = Image.open(path)
        image.load()
        return image
    # PIL reports truncated or corrupt data as OSError, broken PNG chunks as SyntaxError.
    except (OSError, SyntaxError, ValueError) as e:
        if image is not None:
            image.close()
        raise ValueError(f"cannot read {path}: {e}; the file is truncated or not an image: "
                         f"replace it or remove it from the dataset") from e


def read_image(path: PathLike) -> torch.Tensor:
    """A photo as a uint8 (3, H, W) tensor; grayscale, CMYK, palette and RGBA files are converted to RGB.

    Args:
        path: image file.
    """
    with _open_image(path) as image:
        try:
            rgb = np.array(image.convert("RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot convert {path} (mode {image.mode}) to RGB: {e}; "
                             f"save it as an 8-bit JPEG or PNG") from e
    # (H, W, 3) -> (3, H, W) as a view: torchvision's uint8 resize is fastest on this layout, and batching
    # (collate_fn) makes the batch contiguous anyway.
    return torch.from_numpy(rgb).permute(2, 0, 1)


def read_mask(path: PathLike) -> np.ndarray:
    """Class indices (H, W) uint8 from a palette ("P"), grayscale ("L") or 1-bit ("1") PNG.

    Args:
        path: mask file.
    """
    with _open_image(path) as image:
        if image.mode == "1":  # 1-bit masks (binary segmentation): 0 and 1
            return np.array(image, dtype=np.uint8)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"mask {path} is a 16/32-bit image: save it as an 8-bit grayscale or palette PNG of "
                             f"class indices (my_dataset.save_mask)")
        if image.mode not in ("P", "L"):
            raise ValueError(f"mask {path} has mode {image.mode}: masks must be palette or grayscale PNGs of "
                             f"class indices, not colour images; map each colour to its class index "
                             f"(e.g. with VOC_PALETTE) and save with my_dataset.save_mask")
        return np.array(image)


def save_mask(mask: Union[np.ndarray, torch.Tensor], path: PathLike) -> None:
    """Writes class indices as a palette PNG with VOC_PALETTE (the colours VOC masks use).

    Args:
        mask: (H, W) uint8 class indices.
        path: PNG file to write.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask for {path} must be an (H, W) uint8 array of class indices, "
                         f"got shape {mask.shape} and dtype {mask.dtype}")
    image = Image.fromarray(mask)
    image.putpalette(VOC_PALETTE)  # turns the "L" image into "P" with the same indices
    image.save(path)


def label_counts(mask: np.ndarray) -> np.ndarray:
    """Pixel count of each of the 256 possible mask values."""
    return np.bincount(mask.ravel(), minlength=256)


def check_mask_values(mask: np.ndarray, num_classes: int, path: PathLike) -> None:
    """Raises ValueError naming `path` if the mask holds values outside [0, num_classes) and IGNORE_INDEX.

    Args:
        mask: (H, W) uint8 class indices.
        num_classes: number of classes.
        path: the mask's file, for the message.
    """
    bad = np.flatnonzero(label_counts(mask)[num_classes:]) + num_classes
    bad = bad[bad != IGNORE_INDEX]
    if bad.size:
        raise ValueError(f"mask {path} has values {bad.tolist()} outside the {num_classes} classes "
                         f"0..{num_classes - 1} ({IGNORE_INDEX} = ignore); masks must hold class indices: "
                         f"fix the mask or the class list (classes.json)")


# ------------------------------------------------------------------------------------------------- datasets

class SegmentationDataset(Dataset):
    """(image, mask) file pairs; items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)).

    Args:
        pairs: (image path, mask path) of each sample.
        class_names: name of each class index; mask values must be below their count or be IGNORE_INDEX.
        transforms: joint transform called as transforms(image, mask), e.g. SegmentationPresetTrain.
    """

    def __init__(self, pairs: Sequence[tuple[PathLike, PathLike]], class_names: Sequence[str],
                 transforms: Optional[Transforms] = None) -> None:
        if not pairs:
            raise ValueError("the dataset has no (image, mask) pairs")
        self.pairs: list[Pair] = [(Path(image), Path(mask)) for image, mask in pairs]
        self.class_names = _check_class_names(class_names, "the class_names argument")
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Sample:
        """Sample `index` before transforms, checked: same image and mask size, valid mask values."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if tuple(image.shape[1:]) != mask.shape:
            raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[2]} (HxW) but its mask "
                             f"{mask_path} is {mask.shape[0]}x{mask.shape[1]}; a mask must have its image's size")
        check_mask_values(mask, self.num_classes, mask_path)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int) -> Sample:
        image, mask = self.load(index)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image `index`, from the file header alone (no decoding)."""
        path = self.pairs[index][0]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot read the header of {path}: {e}; replace the file") from e
        return height, width

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, e.g. for batching equal sizes together in evaluation."""
        return [self.image_size(i) for i in range(len(self))]


def missing_files(pairs: Sequence[Pair]) -> list[str]:
    """One line per missing image or mask file, naming its sample id (the image's stem) and the path."""
    return [f"id {image.stem}: missing {path}" for image, mask in pairs
            for path in (image, mask) if not path.is_file()]


def _raise_if_missing(problems: Sequence[str], source: PathLike) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise FileNotFoundError(f"{len(problems)} files listed by {source} are missing: {shown}. Restore them "
                                f"or drop those samples (`python my_dataset.py check` lists them all)")


def voc_dir(voc_root: PathLike, year: str = "2012") -> Path:
    """`voc_root`/VOCdevkit/VOC`year`, checked to exist."""
    path = Path(voc_root) / "VOCdevkit" / f"VOC{year}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: voc_root ({voc_root}) must be the folder that contains "
                                f"VOCdevkit")
    return path


def read_split_ids(split_file: Path) -> list[str]:
    """Sample ids, one per line, from a VOC ImageSets file (blank lines skipped)."""
    if not split_file.is_file():
        available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
        hint = ("create it with tools/prepare_sbd.py" if split_file.stem == "trainaug"
                else f"splits found there: {available or 'none'}")
        raise FileNotFoundError(f"split file {split_file} not found; {hint}")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {split_file} is empty; it must list one image id per line")
    return ids


def voc_pairs(voc_root: PathLike, year: str, split: str) -> tuple[list[Pair], Path]:
    """(image, mask) paths of a VOC split (not checked to exist) and the split file that lists them.

    Args:
        voc_root: folder that contains VOCdevkit.
        year: "2012", "2007", ...
        split: name of a file in ImageSets/Segmentation; "trainaug" takes masks from SegmentationClassAug.
    """
    root = voc_dir(voc_root, year)
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    mask_dir = root / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
    pairs = [(root / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in read_split_ids(split_file)]
    return pairs, split_file


def _class_file(data_path: PathLike) -> Path:
    """The dataset's own classes.json (next to VOCdevkit, or next to a folder dataset's splits: the demo data
    and custom data declare their classes there), else the 21 VOC classes."""
    own = Path(data_path) / "classes.json"
    return own if own.is_file() else VOC_CLASSES_FILE


class VOCSegmentation(SegmentationDataset):
    """A Pascal VOC segmentation split: VOCdevkit/VOC`year`/{JPEGImages, SegmentationClass, ImageSets}.

    Args:
        voc_root: folder that contains VOCdevkit.
        year: VOC release, e.g. "2012".
        split: "train", "val", "trainval", or "trainaug" (SBD-augmented, made by tools/prepare_sbd.py).
        transforms: joint transform called as transforms(image, mask).
        class_names: list or JSON file; default `voc_root`/classes.json if it exists, else the 21 VOC classes.
    """

    def __init__(self, voc_root: PathLike, year: str = "2012", split: str = "train",
                 transforms: Optional[Transforms] = None, class_names: ClassNames = None) -> None:
        pairs, split_file = voc_pairs(voc_root, year, split)
        _raise_if_missing(missing_files(pairs), split_file)
        names = resolve_class_names(class_names, _class_file(voc_root))
        super().__init__(pairs, names, transforms)
        self.split = split


def _files_by_stem(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions:
            continue
        if path.stem in files:
            raise ValueError(f"{files[path.stem]} and {path} have the same name stem, so neither can be paired "
                             f"with its mask; rename or remove one")
        files[path.stem] = path
    return files


def folder_pairs(images_dir: PathLike, masks_dir: PathLike) -> tuple[list[Pair], list[str]]:
    """Image and mask files paired by stem, and one line per image without mask or mask without image.

    Args:
        images_dir: photos (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp).
        masks_dir: .png masks named like their images (cat.jpg -> cat.png).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    images = _files_by_stem(images_dir, IMAGE_EXTENSIONS)
    masks = _files_by_stem(masks_dir, (".png",))
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    pairs = [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    problems = [f"image {images[s]} has no mask {masks_dir / (s + '.png')}"
                for s in sorted(images.keys() - masks.keys())]
    problems += [f"mask {masks[s]} has no image {s}.* in {images_dir}"
                 for s in sorted(masks.keys() - images.keys())]
    return pairs, problems


class SegmentationFolder(SegmentationDataset):
    """Images and masks in two folders, paired by file stem (images/cat.jpg <-> masks/cat.png).

    Args:
        images_dir: photos (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp).
        masks_dir: palette or grayscale .png masks of class indices.
        transforms: joint transform called as transforms(image, mask).
        class_names: list, or JSON file like pascal_voc_classes.json (the default).
    """

    def __init__(self, images_dir: PathLike, masks_dir: PathLike, transforms: Optional[Transforms] = None,
                 class_names: ClassNames = None) -> None:
        pairs, problems = folder_pairs(images_dir, masks_dir)
        if problems:
            raise FileNotFoundError(f"{len(problems)} unpaired files: {'; '.join(problems[:5])}"
                                    f"{'; ...' if len(problems) > 5 else ''}. Add the missing files or remove "
                                    f"the unpaired ones")
        super().__init__(pairs, resolve_class_names(class_names), transforms)


def _voc_split(name: str, split: str) -> str:
    # "voc-aug" trains on the SBD-augmented list and validates on VOC val as usual.
    return "trainaug" if name == "voc-aug" and split == "train" else split


def build_dataset(name: str, data_path: PathLike, split: str,
                  transforms: Optional[Transforms] = None) -> SegmentationDataset:
    """The dataset `name` ("voc", "voc-aug" or "folder") for `split`.

    "voc": `data_path` contains VOCdevkit/VOC2012; `split` is a file in ImageSets/Segmentation.
    "voc-aug": as "voc", but split "train" reads trainaug.txt and SegmentationClassAug (tools/prepare_sbd.py).
    "folder": one folder per split, masks named like their images, optional classes.json
    (default: the 21 VOC classes)::

        data_path/
            classes.json            {"background": 0, "cat": 1, ...}
            train/images/a.jpg      any of .jpg .jpeg .png .bmp .tif .tiff .webp
            train/masks/a.png       palette or grayscale PNG of class indices, 255 = ignore
            val/images/...
            val/masks/...

    Args:
        name: "voc", "voc-aug" or "folder".
        data_path: dataset root, as above.
        split: "train", "val", ...
        transforms: joint transform called as transforms(image, mask).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    if name == "folder":
        root = Path(data_path) / split
        return SegmentationFolder(root / "images", root / "masks", transforms, _class_file(data_path))
    return VOCSegmentation(data_path, split=_voc_split(name, split), transforms=transforms)


def _pad_stack(tensors: Sequence[torch.Tensor], fill: int) -> torch.Tensor:
    """Stacks (..., H, W) tensors, padding each at the bottom and right to the largest H and W."""
    tensors = [t.as_subclass(torch.Tensor) for t in tensors]
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    if all(t.shape[-2:] == (height, width) for t in tensors):
        return torch.stack(tensors)
    out = torch.full((len(tensors), *tensors[0].shape[:-2], height, width), fill, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, ..., :t.shape[-2], :t.shape[-1]] = t
    return out


def collate_fn(batch: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches samples of different sizes: images padded with 0, masks with IGNORE_INDEX (padding has no
    label, so the loss and metrics skip it). Returns images uint8 (N, 3, H, W) and masks uint8 (N, H, W)."""
    images, masks = zip(*batch)
    return _pad_stack(images, 0), _pad_stack(masks, IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------- demo data

# Each class has its own colour, texture and shape, so a small CNN separates them by appearance quickly.
DEMO_CLASSES = ("background", "red_striped_disc", "blue_checkered_square", "green_speckled_triangle",
                "yellow_hatched_diamond")
_DEMO_COLOURS = np.array([[0, 0, 0], [205, 40, 40], [40, 70, 215], [35, 165, 55], [235, 205, 35]], np.float32)


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


def make_demo_dataset(root: PathLike, num_train: int = 80, num_val: int = 20, size: int = 96,
                      seed: int = 0) -> Path:
    """Writes a small synthetic VOC-layout dataset (same seed -> byte-identical files) and returns `root`.

    Layout: root/classes.json and root/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
    ImageSets/Segmentation/{train,val}.txt}; read it with VOCSegmentation(root, split=...).

    Args:
        root: output folder.
        num_train, num_val: images per split.
        size: image side in pixels.
        seed: random seed.
    """
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(f"demo needs --num-train >= 1, --num-val >= 1 and --size >= 32, got "
                         f"{num_train}, {num_val}, {size}")
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = [f"{split}_{i:04d}" for i in range(count)]
        for i, sample_id in enumerate(ids):
            # One generator per image: each file depends only on (seed, split, index).
            rgb, label = make_demo_sample(size, np.random.default_rng([seed, split_index, i]))
            Image.fromarray(rgb).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=90)
            save_mask(label, voc / "SegmentationClass" / f"{sample_id}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    classes = {name: index for index, name in enumerate(DEMO_CLASSES)}
    (root / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------- check

class _ScanItems(Dataset):
    """Yields (mask value counts, problem) per sample instead of raising, so one bad file does not end a scan.
    With `masks_only`, only the masks are read (pixel counts, no check of the images)."""

    def __init__(self, dataset: SegmentationDataset, masks_only: bool = False) -> None:
        self.dataset, self.masks_only = dataset, masks_only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        try:
            if self.masks_only:
                return label_counts(read_mask(self.dataset.pairs[index][1])), ""
            _, mask = self.dataset.load(index)
        except (FileNotFoundError, ValueError) as e:
            return np.zeros(256, dtype=np.int64), str(e)
        return label_counts(mask.numpy()), ""


def _unbatched(item: tuple[np.ndarray, str]) -> tuple[np.ndarray, str]:
    return item


def _split_pairs(name: str, data_path: PathLike, split: str) -> tuple[list[Pair], list[str], list[str]]:
    """Complete pairs, problems (missing or unpaired files) and class names of a split, without raising for
    missing files, so the checker can list all of them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    if name == "folder":
        root = Path(data_path) / split
        pairs, problems = folder_pairs(root / "images", root / "masks")
        return pairs, problems, load_class_names(_class_file(data_path))
    pairs, _ = voc_pairs(data_path, "2012", _voc_split(name, split))
    problems = missing_files(pairs)
    complete = [(image, mask) for image, mask in pairs if image.is_file() and mask.is_file()]
    return complete, problems, load_class_names(_class_file(data_path))


def scan_split(pairs: list[Pair], class_names: list[str], workers: int, masks_only: bool = False,
               progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Counts of each mask value over all pairs and one problem line per unreadable or invalid pair (with
    `masks_only`, the images are not read)."""
    counts, problems = np.zeros(256, dtype=np.int64), []
    if not pairs:
        return counts, problems
    items = _ScanItems(SegmentationDataset(pairs, class_names), masks_only)
    loader = DataLoader(items, batch_size=None, num_workers=workers, collate_fn=_unbatched)
    for item_counts, problem in tqdm(loader, desc="scanning", unit="img", disable=not progress):
        counts += item_counts
        if problem:
            problems.append(problem)
    return counts, problems


def _print_report(num_images: int, counts: np.ndarray, class_names: list[str], problems: list[str]) -> None:
    total = max(int(counts.sum()), 1)
    print(f"images scanned: {num_images} (samples with missing files are listed under problems)")
    print("pixels per class:")
    for index, name in enumerate(class_names):
        print(f"  {index:3d} {name:<24} {int(counts[index]):>14,d} {100 * counts[index] / total:6.2f}%")
    print(f"  {IGNORE_INDEX:3d} {'(ignored)':<24} {int(counts[IGNORE_INDEX]):>14,d} "
          f"{100 * counts[IGNORE_INDEX] / total:6.2f}%")
    absent = [name for index, name in enumerate(class_names) if counts[index] == 0]
    print(f"classes that never occur: {', '.join(absent) if absent else 'none'}")
    print(f"problems: {len(problems)}")
    for problem in problems:
        print(f"  {problem}")


def run_check(args: argparse.Namespace) -> int:
    """The `check` command: 0 if the split is clean, 1 if any file has a problem."""
    pairs, problems, class_names = _split_pairs(args.dataset, args.data_path, args.split)
    counts, bad = scan_split(pairs, class_names, args.workers)
    problems += bad
    _print_report(len(pairs), counts, class_names, problems)
    if args.save_counts:
        report = {"class_names": class_names, "counts": counts[:len(class_names)].tolist(),
                  "ignored": int(counts[IGNORE_INDEX])}
        Path(args.save_counts).write_text(json.dumps(report, indent=2) + "\n")
        print(f"pixel counts written to {args.save_counts}")
    return 1 if problems else 0


def run_demo(args: argparse.Namespace) -> int:
    """The `demo` command: writes the synthetic dataset."""
    root = make_demo_dataset(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"demo dataset ({args.num_train} train, {args.num_val} val, {args.size}x{args.size}, classes: "
          f"{', '.join(DEMO_CLASSES)}) written to {root}; use --dataset voc --data-path {root}")
    return 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Check a segmentation dataset or write the demo dataset.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="scan a split: pixel counts per class and every bad file")
    check.add_argument("--data-path", required=True, help="dataset root (for voc: the folder containing VOCdevkit)")
    check.add_argument("--dataset", default="voc", choices=DATASETS, help="dataset layout (default: voc)")
    check.add_argument("--split", default="train", help="split to scan (default: train)")
    check.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="loader processes decoding files (default: min(4, CPU count))")
    check.add_argument("--save-counts", default=None,
                       help="also write the per-class pixel counts to this JSON file (for class-weighted losses)")
    demo = commands.add_parser("demo", help="write the synthetic demo dataset (VOC layout, 5 classes)")
    demo.add_argument("--out", required=True, help="output folder (becomes the --data-path of a voc dataset)")
    demo.add_argument("--num-train", type=int, default=80, help="training images (default: 80)")
    demo.add_argument("--num-val", type=int, default=20, help="validation images (default: 20)")
    demo.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    command = run_check if args.command == "check" else run_demo
    try:
        return command(args)
    except (*USER_ERRORS, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(parse_args()))
