"""Reading photos and masks, writing masks, and the label maps applied as masks are read.

Photos come back as a viewer shows them: their EXIF orientation is applied. Masks are not rotated: they
are PNGs drawn over the photo as displayed, and a PNG mask's own EXIF data, if any, is ignored.
"""
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, PngImagePlugin

from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike, check_palette

# Files taken for photos (compared lower-case), in folder datasets and by predict.py.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# EXIF orientations with a quarter turn (mirrored or not): the displayed width is the stored height.
_SWAPS_SIDES = {5, 6, 7, 8}

# PIL reports truncated or corrupt data as OSError, broken PNG chunks as SyntaxError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError)


def _open(path: PathLike) -> Image.Image:
    """Opens `path` and parses its header (and metadata), without decoding the pixels."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return Image.open(path)
    except _PIL_ERRORS as e:
        raise ValueError(f"cannot read {path}: {e}; the file is truncated or not an image: "
                         f"replace it or remove it from the dataset") from e


def _decode(image: Image.Image, path: PathLike) -> None:
    """Decodes the pixels, so a truncated file fails here, with its name, not inside a batch."""
    try:
        image.load()
    except _PIL_ERRORS as e:
        raise ValueError(f"cannot read {path}: {e}; the file is truncated or not an image: "
                         f"replace it or remove it from the dataset") from e


def _orientation(image: Image.Image, path: PathLike) -> int:
    """The EXIF (or XMP) orientation 1..8 of an opened, not yet decoded, image; 1 when it has none."""
    try:
        if isinstance(image, PngImagePlugin.PngImageFile):
            # PngImageFile.getexif decodes the pixels to look for an eXIf chunk after them; PNG 3 puts eXIf
            # before the pixel data, where Image.open has already read it.
            exif = Image.Image.getexif(image)
        else:
            exif = image.getexif()
        return int(exif.get(ExifTags.Base.Orientation, 1))
    except (*_PIL_ERRORS, TypeError) as e:
        raise ValueError(f"cannot read the EXIF data of {path}: {e}; re-save the photo without EXIF data or "
                         f"replace it") from e


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the pixels as stored. Newer Pillows report a TIFF's size already oriented (and
    orient its pixels as they load); its ImageWidth and ImageLength tags keep the stored size."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None and 256 in tags and 257 in tags:
        return int(tags[256]), int(tags[257])
    return image.size


def read_image(path: PathLike) -> torch.Tensor:
    """A photo as a uint8 (3, H, W) tensor, turned as a viewer shows it (EXIF orientation applied);
    grayscale, CMYK, palette and RGBA files are converted to RGB.

    Args:
        path: image file.
    """
    image = _open(path)
    with image:
        _decode(image, path)
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except _PIL_ERRORS as e:
            raise ValueError(f"cannot apply the EXIF orientation of {path}: {e}; re-save the photo without EXIF "
                             f"data or replace it") from e
        try:
            rgb = np.array(image.convert("RGB"))
        except _PIL_ERRORS as e:
            raise ValueError(f"cannot convert {path} (mode {image.mode}) to RGB: {e}; "
                             f"save it as an 8-bit JPEG or PNG") from e
    # (H, W, 3) -> (3, H, W) as a view: torchvision's uint8 resize is fastest on this layout, and batching
    # (collate_fn) makes the batch contiguous anyway.
    return torch.from_numpy(rgb).permute(2, 0, 1)


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of a photo as read_image returns it (EXIF orientation applied), from its header and
    metadata alone: the pixels are not decoded. A PNG's orientation counts when its eXIf chunk comes before
    the pixel data, as PNG 3 requires."""
    image = _open(path)
    with image:
        width, height = _stored_size(image)
        orientation = _orientation(image, path)
    return (width, height) if orientation in _SWAPS_SIDES else (height, width)


def check_label_map(label_map: object, source: str) -> np.ndarray:
    """`label_map` as a (256,) uint8 lookup table, or a ValueError naming `source`."""
    if not isinstance(label_map, np.ndarray) or label_map.shape != (256,) or label_map.dtype != np.uint8:
        shown = (f"shape {label_map.shape} and dtype {label_map.dtype}" if isinstance(label_map, np.ndarray)
                 else type(label_map).__name__)
        raise ValueError(f"{source}: a label map must be a (256,) uint8 array (raw mask value -> train id, "
                         f"{IGNORE_INDEX} = ignore), got {shown}; build it with make_label_map")
    return label_map


def make_label_map(train_ids: Mapping[int, int]) -> np.ndarray:
    """A (256,) uint8 lookup table sending each raw mask value in `train_ids` to its train id and every
    other value to IGNORE_INDEX, for datasets whose masks hold more ids than they train on (Cityscapes).

    Args:
        train_ids: raw mask value -> train id, both in 0..255.
    """
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, train in train_ids.items():
        if not (0 <= int(raw) <= 255 and 0 <= int(train) <= 255):
            raise ValueError(f"label map entry {raw} -> {train} is outside 0..255; mask values are uint8")
        table[int(raw)] = int(train)
    return table


def read_mask(path: PathLike, label_map: Optional[np.ndarray] = None) -> np.ndarray:
    """Class indices (H, W) uint8 from a palette ("P"), grayscale ("L") or 1-bit ("1") PNG, as stored: masks
    are drawn in the photo's displayed orientation, so no EXIF orientation is applied.

    Args:
        path: mask file.
        label_map: optional (256,) uint8 table, raw value -> train id, applied to every pixel.
    """
    image = _open(path)
    with image:
        _decode(image, path)
        if image.mode == "1":  # 1-bit masks (binary segmentation): 0 and 1
            mask = np.array(image, dtype=np.uint8)
        elif image.mode in ("I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"mask {path} is a 16/32-bit image: save it as an 8-bit grayscale or palette PNG of "
                             f"class indices (my_dataset.save_mask)")
        elif image.mode not in ("P", "L"):
            raise ValueError(f"mask {path} has mode {image.mode}: masks must be palette or grayscale PNGs of "
                             f"class indices, not colour images; map each colour to its class index "
                             f"(e.g. with VOC_PALETTE) and save with my_dataset.save_mask")
        else:
            mask = np.array(image)
    if label_map is None:
        return mask
    return check_label_map(label_map, f"label map for {path}")[mask]


def save_mask(mask: Union[np.ndarray, torch.Tensor], path: PathLike, palette: Palette = VOC_PALETTE) -> None:
    """Writes class indices as a palette PNG, by default with VOC_PALETTE (the colours VOC masks use).

    Args:
        mask: (H, W) uint8 class indices.
        path: PNG file to write.
        palette: flat list of 768 ints, the colour of each of the 256 values.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask for {path} must be an (H, W) uint8 array of class indices, "
                         f"got shape {mask.shape} and dtype {mask.dtype}")
    image = Image.fromarray(mask)
    image.putpalette(check_palette(palette, f"palette for {path}"))  # turns "L" into "P" with the same indices
    image.save(path)


def label_counts(mask: np.ndarray) -> np.ndarray:
    """Pixel count of each of the 256 possible mask values, (256,) int64."""
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
