"""Reading photos and masks, writing masks, and the label maps applied as masks are read.

Photos come back as a viewer shows them: their EXIF orientation is applied. Masks are not rotated: they
are PNGs drawn over the photo as displayed, and a PNG mask's own EXIF data, if any, is ignored.

JPEG photos and 8-bit grayscale or palette PNG masks are decoded by torchvision.io (libjpeg-turbo, libpng),
which gives the same pixels as PIL in less time (tools/benchmark.py --mode data compares them); every other
file, and any file torchvision refuses, goes through PIL, which also words the errors. `decoder="pil"` reads
everything with PIL. 16-bit photos are scaled to 8 bits (v * 255 / 65535, rounded) instead of being clipped,
floating-point photos are read as 0..1 (scaled to 0..255) and refused outside that range.

Every failure to read a file (empty, a link loop, not an image, truncated, larger than the pixel limit), from
torchvision.io or PIL, is a ValueError (FileNotFoundError when the file is missing) naming the file.
"""
import argparse
import io
import os
from pathlib import Path
from typing import IO, Mapping, Optional, Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, PngImagePlugin
from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file

from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike, check_palette

# Files taken for photos (compared lower-case), in folder datasets and by predict.py.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# EXIF orientations with a quarter turn (mirrored or not): the displayed width is the stored height.
_SWAPS_SIDES = {5, 6, 7, 8}

# PIL reports truncated or corrupt data as OSError, broken PNG chunks as SyntaxError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError)

# A decompression bomb is a small file that decodes to gigabytes (a 45-byte PNG header can claim 20000x20000).
# The default limit is the size PIL refuses (twice its MAX_IMAGE_PIXELS, about 179 megapixels); it is checked
# here, from the header, before torchvision or PIL decodes anything, so PIL's own check (which torchvision
# does not make) is turned off.
DEFAULT_MAX_IMAGE_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
Image.MAX_IMAGE_PIXELS = None
# The limit set by --max-image-pixels travels in the environment, so DataLoader workers started by spawn
# (Windows, macOS) apply it too.
MAX_PIXELS_ENV = "FCN_MAX_IMAGE_PIXELS"

DECODERS = ("torchvision", "pil")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PIL's modes of 16-bit grayscale pixels.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def max_image_pixels() -> Optional[int]:
    """The largest image read, in pixels (width x height), or None for no limit (see set_max_image_pixels)."""
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"environment variable {MAX_PIXELS_ENV}={text!r:.40} is not a pixel count; set it to a "
                         f"non-negative integer (0: no limit) or unset it (--max-image-pixels sets it)")
    return value or None


def set_max_image_pixels(limit: Optional[int]) -> None:
    """Sets the pixel limit of every image read from now on, in this process and the loader workers it starts.

    Args:
        limit: pixels (width x height); 0 for no limit; None keeps the current one.
    """
    if limit is not None:
        os.environ[MAX_PIXELS_ENV] = str(int(limit))


def pixel_count(text: str) -> int:
    """A --max-image-pixels value: a non-negative integer (0: no limit)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero (no limit) or a positive number of pixels, got {text}")
    return value


def add_max_image_pixels_flag(parser: argparse.ArgumentParser) -> None:
    """Adds --max-image-pixels (apply it with set_max_image_pixels(args.max_image_pixels))."""
    parser.add_argument("--max-image-pixels", type=pixel_count, default=None, metavar="N",
                        help=f"refuse images of more than N pixels (width x height) as possible decompression "
                             f"bombs; 0: no limit (default: {DEFAULT_MAX_IMAGE_PIXELS}, what PIL allows)")


def check_pixels(width: int, height: int, path: object) -> None:
    """Raises ValueError naming `path` when a width x height image is over the pixel limit."""
    limit = max_image_pixels()
    if limit is not None and width * height > limit:
        raise ValueError(f"{path} is {width}x{height} (WxH), {width * height:,} pixels, more than the limit of "
                         f"{limit:,} that guards against decompression bombs (small files that decode to "
                         f"gigabytes); if the image is genuine, allow it with --max-image-pixels "
                         f"{width * height} (0: no limit)")


def _unreadable(path: object, problem: object) -> ValueError:
    """The one error of a file that cannot be decoded, whichever decoder found it."""
    return ValueError(f"cannot read {path}: {problem}; the file is truncated or not an image: "
                      f"replace it or remove it from the dataset")


def check_file(path: PathLike) -> None:
    """FileNotFoundError for a missing file, ValueError for an empty one or a link that leads nowhere."""
    p = Path(path)
    if not p.is_file():
        if p.exists():  # never opened: reading a FIFO or a device would block or never end
            raise ValueError(f"cannot read {path}: it is a {'folder' if p.is_dir() else 'special file'}, not an "
                             f"image file; remove it or rename it")
        if p.is_symlink():
            raise ValueError(f"cannot read {path}: it is a symbolic link to a missing file or a loop of links; "
                             f"fix the link or remove it")
        raise FileNotFoundError(f"{path} not found")
    if p.stat().st_size == 0:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes); replace it or remove it from the "
                         f"dataset")


def open_image(source: Union[PathLike, bytes], name: object = None) -> Image.Image:
    """A file (or its bytes) opened by PIL with its header (and metadata) parsed, the pixels not decoded, and
    its size checked against the pixel limit; ValueError naming `name` (default: the path) otherwise."""
    name = source if name is None else name
    if not isinstance(source, bytes):
        check_file(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except _PIL_ERRORS as e:
        raise _unreadable(name, e) from None
    try:
        check_pixels(*image.size, name)
    except ValueError:
        image.close()
        raise
    return image


def _open(path: PathLike) -> Image.Image:
    """Opens `path` and parses its header (and metadata), without decoding the pixels."""
    return open_image(path)


def _decode(image: Image.Image, path: PathLike) -> None:
    """Decodes the pixels, so a truncated file fails here, with its name, not inside a batch."""
    try:
        image.load()
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from e


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


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")


def _png_header(data: bytes) -> Optional[tuple[int, int]]:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if `data` does not start like a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _check_png_pixels(data: bytes, path: PathLike) -> None:
    """The pixel limit, from the width and height in a PNG's IHDR chunk (before torchvision decodes it)."""
    check_pixels(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), path)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """uint16 values -> uint8, v * 255 / 65535 rounded (0 -> 0, 65535 -> 255), instead of clipping at 255."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _pil_rgb(image: Image.Image, path: PathLike) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded PIL image: 8-bit modes converted by PIL, 16-bit and float ones scaled."""
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format == "PNG"):  # PNG: at most 16 bits
        return _gray_to_rgb(_scale_16bit(np.asarray(image)))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and 0.0 <= low and high <= 1.0):
            raise ValueError(f"{path} is a floating-point image with values in [{low:g}, {high:g}]: only 0..1 "
                             f"floats are read (as 0..255); rescale it to 0..1 or save it as an 8-bit image")
        return _gray_to_rgb(np.round(values * 255).astype(np.uint8))
    if image.mode in ("I", "I;32", "I;32B", "I;32L", "I;32S"):
        raise ValueError(f"{path} is a 32-bit integer image, whose scale is unknown: save it as an 8-bit (or "
                         f"16-bit) image")
    try:
        return np.array(image.convert("RGB"))
    except _PIL_ERRORS as e:
        raise ValueError(f"cannot convert {path} (mode {image.mode}) to RGB: {e}; "
                         f"save it as an 8-bit JPEG or PNG") from e


def _read_image_pil(path: PathLike) -> torch.Tensor:
    image = _open(path)
    with image:
        _decode(image, path)
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except _PIL_ERRORS as e:
            raise ValueError(f"cannot apply the EXIF orientation of {path}: {e}; re-save the photo without EXIF "
                             f"data or replace it") from e
        rgb = _pil_rgb(image, path)
    # (H, W, 3) -> (3, H, W) as a view: torchvision's uint8 resize is fastest on this layout, and batching
    # (collate_fn) makes the batch contiguous anyway.
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _read_bytes(path: PathLike) -> torch.Tensor:
    check_file(path)
    try:
        return read_file(str(path))
    except RuntimeError as e:  # torchvision words every failure so, e.g. a file emptied since check_file
        raise _unreadable(path, str(e).rsplit(", ", 1)[-1]) from None


def _read_image_torchvision(path: PathLike) -> Optional[torch.Tensor]:
    """A JPEG or 16-bit PNG photo decoded by torchvision (EXIF orientation applied), or None for other files
    and for files torchvision refuses (PIL then reads them, or words the problem)."""
    data = _read_bytes(path)
    head = bytes(data[:32].numpy())
    try:
        if head.startswith(_JPEG_MAGIC):
            open_image(bytes(data.numpy()), path).close()  # the pixel limit, from the header PIL parses
            image = decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            if not image.permute(1, 2, 0).is_contiguous():  # turned by EXIF: back to the (H, W, 3) layout
                image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            return image  # a (3, H, W) view of (H, W, 3) pixels, as from PIL (see _read_image_pil)
        png = _png_header(head)
        if png is not None and png[0] == 16:  # PIL would clip (gray) or truncate (colour) these to 8 bits
            _check_png_pixels(head, path)
            values = decode_png(data, apply_exif_orientation=True).numpy()  # (C, H, W) uint16, C = 1..4
            gray = values.shape[0] <= 2  # gray, gray + alpha
            rgb = _gray_to_rgb(_scale_16bit(values[0])) if gray else _scale_16bit(values[:3]).transpose(1, 2, 0)
            return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    except RuntimeError:
        return None
    return None


def read_image(path: PathLike, decoder: str = "torchvision") -> torch.Tensor:
    """A photo as a uint8 (3, H, W) tensor, turned as a viewer shows it (EXIF orientation applied);
    grayscale, CMYK, palette and RGBA files are converted to RGB, 16-bit files scaled to 8 bits, float files
    read as 0..1.

    Args:
        path: image file.
        decoder: "torchvision" (JPEG and 16-bit PNG by torchvision.io, the rest by PIL) or "pil" (all by PIL).
    """
    _check_decoder(decoder)
    if decoder == "torchvision":
        image = _read_image_torchvision(path)
        if image is not None:
            return image
    return _read_image_pil(path)


def image_note(path: PathLike) -> str:
    """What read_image does to the file beyond decoding it, from its header alone: "" for an ordinary 8-bit
    photo, else one line for `my_dataset.py check` (16-bit values scaled to 8 bits, floats read as 0..1)."""
    image = _open(path)
    with image:
        mode, fmt = image.mode, image.format
    if fmt == "PNG":
        with open(path, "rb") as f:
            png = _png_header(f.read(26))
        if png is not None and png[0] == 16:
            return f"{path}: 16-bit PNG, read scaled to 8 bits (v * 255 / 65535)"
    if mode in _SIXTEEN_BIT:
        return f"{path}: 16-bit image, read scaled to 8 bits (v * 255 / 65535)"
    if mode == "F":
        return f"{path}: floating-point image, read as 0..1 scaled to 0..255 (refused outside 0..1)"
    return ""


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


def _read_mask_torchvision(path: PathLike) -> Optional[np.ndarray]:
    """An 8-bit grayscale or palette PNG's values decoded by torchvision (no EXIF orientation), or None for
    every other file (PIL reads those, and words the problems)."""
    data = _read_bytes(path)
    png = _png_header(bytes(data[:26].numpy()))
    if png is None or png[0] != 8 or png[1] not in (0, 3):  # 8-bit gray (0) or palette (3) only
        return None
    _check_png_pixels(bytes(data[:26].numpy()), path)
    try:
        return decode_png(data, mode=ImageReadMode.UNCHANGED)[0].numpy()  # palette indices, not colours
    except RuntimeError:
        return None


def _read_mask_pil(path: PathLike) -> np.ndarray:
    image = _open(path)
    with image:
        _decode(image, path)
        if image.mode == "1":  # 1-bit masks (binary segmentation): 0 and 1
            return np.array(image, dtype=np.uint8)
        if image.mode in ("I", *_SIXTEEN_BIT):
            raise ValueError(f"mask {path} is a 16/32-bit image: save it as an 8-bit grayscale or palette PNG of "
                             f"class indices (my_dataset.save_mask)")
        if image.mode not in ("P", "L"):
            raise ValueError(f"mask {path} has mode {image.mode}: masks must be palette or grayscale PNGs of "
                             f"class indices, not colour images; map each colour to its class index "
                             f"(e.g. with VOC_PALETTE) and save with my_dataset.save_mask")
        return np.array(image)


def read_mask(path: PathLike, label_map: Optional[np.ndarray] = None, decoder: str = "torchvision") -> np.ndarray:
    """Class indices (H, W) uint8 from a palette ("P"), grayscale ("L") or 1-bit ("1") PNG, as stored: masks
    are drawn in the photo's displayed orientation, so no EXIF orientation is applied.

    Args:
        path: mask file.
        label_map: optional (256,) uint8 table, raw value -> train id, applied to every pixel.
        decoder: "torchvision" (8-bit PNGs by torchvision.io, the rest by PIL) or "pil" (all by PIL).
    """
    _check_decoder(decoder)
    mask = _read_mask_torchvision(path) if decoder == "torchvision" else None
    if mask is None:
        mask = _read_mask_pil(path)
    if label_map is None:
        return mask
    return check_label_map(label_map, f"label map for {path}")[mask]


def save_mask(mask: Union[np.ndarray, torch.Tensor], path: Union[PathLike, IO[bytes]],
              palette: Palette = VOC_PALETTE) -> None:
    """Writes class indices as a palette PNG, by default with VOC_PALETTE (the colours VOC masks use).

    Args:
        mask: (H, W) uint8 class indices.
        path: PNG file to write, or a binary file object (e.g. from core.platform.atomic_write).
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
    image.save(path, format="PNG")


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
