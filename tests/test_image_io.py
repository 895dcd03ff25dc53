"""Decoding photos and masks (data_utils.io): the torchvision.io path against PIL read directly and numpy, EXIF
orientations, 16-bit and floating-point photos, and what `check` says about them.

Files are written with PIL (or, for 16-bit colour PNGs, which PIL cannot write, by hand with zlib); expected
pixels come from PIL's own decoder and numpy.
"""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_utils import SegmentationDataset, check_split, image_note, image_size, read_image, read_mask
from my_dataset import VOC_PALETTE, save_mask

from conftest import REAL_SIZE, named, pil_mask, truncate

RNG = np.random.default_rng(0)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A photo-like image: a smooth gradient plus noise, so the JPEG coder has real work."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + RNG.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def pil_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize("kind", ["baseline", "progressive", "gray", "cmyk", "subsampled"])
def test_jpeg_decoders_give_pil_pixels(tmp_path, kind):
    rgb = smooth_rgb(75, 100)
    path = tmp_path / "photo.jpg"
    image = Image.fromarray(rgb)
    options = {"quality": 90}
    if kind == "gray":
        image = image.convert("L")
    elif kind == "cmyk":
        image = image.convert("CMYK")
    elif kind == "progressive":
        options["progressive"] = True
    elif kind == "subsampled":
        options["subsampling"] = 2  # 4:2:0, what cameras write
    image.save(path, **options)
    expected = pil_rgb(path)
    for decoder in ("torchvision", "pil"):
        got = read_image(path, decoder=decoder)
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), expected), decoder


# What a viewer does for each EXIF orientation, in numpy (np.rot90 with k=-1 turns clockwise).
DISPLAY = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, k=-1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, k=1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientations(tmp_path, orientation):
    stored = smooth_rgb(20, 36)
    plain, turned = tmp_path / "plain.jpg", tmp_path / "turned.jpg"
    Image.fromarray(stored).save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(turned, quality=95, exif=exif.tobytes())  # the same coded pixels, turned by EXIF
    expected = DISPLAY[orientation](np.asarray(Image.open(plain).convert("RGB"))).transpose(2, 0, 1)
    for decoder in ("torchvision", "pil"):
        assert np.array_equal(read_image(turned, decoder=decoder).numpy(), expected), decoder


@pytest.mark.parametrize("kind", ["palette", "palette_transparent", "palette_4bit", "gray", "one_bit"])
def test_mask_decoders_give_the_stored_indices(tmp_path, kind):
    values = RNG.integers(0, 2 if kind == "one_bit" else 12, (30, 41)).astype(np.uint8)
    path = tmp_path / "mask.png"
    image = Image.fromarray(values.astype(bool)) if kind == "one_bit" else Image.fromarray(values)
    if kind.startswith("palette"):
        image.putpalette(RNG.integers(0, 256, 48).tolist())
    options = {"transparency": 0} if kind == "palette_transparent" else {"bits": 4} if kind == "palette_4bit" else {}
    image.save(path, **options)
    expected = np.array(Image.open(path), dtype=np.uint8)
    assert np.array_equal(expected, values)  # the fixture itself: PIL stores the indices
    for decoder in ("torchvision", "pil"):
        assert np.array_equal(read_mask(path, decoder=decoder), values), decoder


def write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG (colour type 2, bit depth 16), written by hand: PIL cannot write one."""
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def to_8bit(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_16bit_pngs_are_scaled_not_clipped(tmp_path):
    gray = RNG.integers(0, 65536, (9, 13), dtype=np.uint16)
    gray[0, :3] = (0, 65535, 257 * 128)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    for decoder in ("torchvision", "pil"):
        got = read_image(tmp_path / "gray16.png", decoder=decoder).numpy()
        assert got.shape == (3, 9, 13) and all(np.array_equal(c, to_8bit(gray)) for c in got), decoder
    assert got[0, 0, :3].tolist() == [0, 255, 128]
    rgb = RNG.integers(0, 65536, (7, 5, 3), dtype=np.uint16)
    write_png16_rgb(tmp_path / "rgb16.png", rgb)
    assert np.array_equal(read_image(tmp_path / "rgb16.png").numpy(), to_8bit(rgb).transpose(2, 0, 1))


def test_float_tiffs_are_read_as_0_to_1_or_refused(tmp_path):
    values = RNG.random((6, 8)).astype(np.float32)
    values[0, :2] = (0.0, 1.0)
    Image.fromarray(values).save(tmp_path / "unit.tif")
    got = read_image(tmp_path / "unit.tif").numpy()
    assert all(np.array_equal(c, np.round(values * 255).astype(np.uint8)) for c in got)
    for name, bad in (("wide.tif", values * 40), ("nan.tif", np.where(values > 0.5, np.nan, values))):
        Image.fromarray(bad.astype(np.float32)).save(tmp_path / name)
        with pytest.raises(ValueError) as info:
            read_image(tmp_path / name)
        message = str(info.value)
        assert name in message and "0..1" in message and "\n" not in message
    Image.fromarray(RNG.integers(0, 2 ** 31, (4, 4), dtype=np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(ValueError, match="int32.tif is a 32-bit integer image.*8-bit"):
        read_image(tmp_path / "int32.tif")


def test_check_reports_photos_read_converted(tmp_path, capsys):
    images, masks = tmp_path / "train" / "images", tmp_path / "train" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.fromarray(smooth_rgb(10, 12)).save(images / "plain.jpg")
    Image.fromarray(RNG.integers(0, 65536, (10, 12), dtype=np.uint16)).save(images / "deep.png")
    Image.fromarray(RNG.random((10, 12)).astype(np.float32) * 3).save(images / "float.tif")  # refused
    for stem in ("plain", "deep", "float"):
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(masks / f"{stem}.png")
    assert check_split("folder", tmp_path, "train", workers=0, progress=False) == 1  # float.tif is a problem
    out = capsys.readouterr().out
    assert "photos converted to 8 bits as they are read: 1" in out and "deep.png: 16-bit" in out
    assert "problems: 1" in out and "float.tif is a floating-point image" in out
    assert image_note(images / "plain.jpg") == ""


# ------------------------------------------------------------------------------------------------ mask I/O

def test_save_mask_writes_voc_palette_png(tmp_path):
    mask = np.array([[0, 1, 2, 20], [255, 15, 0, 3]], dtype=np.uint8)
    save_mask(mask, tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    assert image.getpalette()[:768] == VOC_PALETTE
    assert np.array_equal(np.array(image), mask)
    save_mask(torch.from_numpy(mask), tmp_path / "t.png")
    assert np.array_equal(pil_mask(tmp_path / "t.png"), mask)


@pytest.mark.parametrize("mask", [np.zeros((4, 4), np.int64), np.zeros((1, 4, 4), np.uint8)])
def test_save_mask_rejects_non_uint8_2d(tmp_path, mask):
    with pytest.raises(ValueError, match="uint8"):
        save_mask(mask, tmp_path / "m.png")


def test_read_mask_palette_and_grayscale(tmp_path, voc2012):
    palette_file = voc2012 / "SegmentationClass" / "voc_sample.png"
    mask = read_mask(palette_file)
    assert mask.dtype == np.uint8 and mask.shape == REAL_SIZE
    assert np.array_equal(mask, pil_mask(palette_file))
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(read_mask(tmp_path / "gray.png"), gray)


def test_read_mask_rejects_rgb(tmp_path):
    path = tmp_path / "colour.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="palette or grayscale") as info:
        read_mask(path)
    assert str(path) in str(info.value)


def test_read_mask_one_bit_and_16_bit(tmp_path):
    binary = np.zeros((3, 5), bool)
    binary[1, 2:4] = True
    Image.fromarray(binary).save(tmp_path / "binary.png")  # mode "1"
    assert np.array_equal(read_mask(tmp_path / "binary.png"), binary.astype(np.uint8))
    Image.fromarray(np.zeros((3, 5), np.uint16)).save(tmp_path / "deep.png")  # mode "I;16"
    with pytest.raises(ValueError, match="deep.png is a 16/32-bit image.*8-bit"):
        read_mask(tmp_path / "deep.png")


def test_read_mask_truncated(tmp_path, voc2012):
    path = voc2012 / "SegmentationClass" / "voc_sample.png"
    truncate(path)
    with pytest.raises(ValueError, match=named(path)):
        read_mask(path)


# ----------------------------------------------------------------------------------------------- image I/O

def test_read_image_rgb_jpeg(voc2012):
    path = voc2012 / "JPEGImages" / "voc_sample.jpg"
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, *REAL_SIZE)
    expected = np.array(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(image.numpy(), expected)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = tmp_path / ("photo.jpg" if mode in ("L", "CMYK") else "photo.png")
    Image.fromarray(rgb).convert(mode).save(path)
    image = read_image(path)
    assert image.shape == (3, 10, 12) and image.dtype == torch.uint8
    if mode == "RGBA":  # lossless: the colour channels come back exactly
        assert np.array_equal(image.numpy(), rgb.transpose(2, 0, 1))
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_read_image_truncated_jpeg(voc2012):
    path = voc2012 / "JPEGImages" / "voc_sample.jpg"
    truncate(path)
    with pytest.raises(ValueError, match=named(path)):
        read_image(path)


def test_read_image_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a jpeg")
    with pytest.raises(ValueError, match=named(path)):
        read_image(path)
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        read_image(tmp_path / "absent.jpg")


# ---------------------------------------------------------------------------------------- EXIF orientation

def save_photo(path: Path, stored: np.ndarray, orientation: int = 1) -> None:
    """Saves `stored` (H, W, 3) with an EXIF Orientation tag, as cameras do instead of turning the pixels."""
    if path.suffix == ".tif":
        Image.fromarray(stored).save(path, tiffinfo={0x0112: orientation})
        return
    if orientation == 1:
        Image.fromarray(stored).save(path)
        return
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes())


# np.rot90 turns counter-clockwise for k > 0: orientation 6 is displayed after a quarter turn clockwise, 8 after
# one counter-clockwise, 3 after a half turn.
@pytest.mark.parametrize("name, orientation, turns", [("photo.jpg", 6, -1), ("photo.jpg", 8, 1), ("photo.png", 8, 1),
                                                      ("photo.webp", 6, -1), ("photo.tif", 6, -1),
                                                      ("photo.tif", 3, 2)])
def test_read_image_applies_exif_orientation(tmp_path, name, orientation, turns):
    stored = np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)  # 36 wide, 20 high
    path, plain = tmp_path / name, tmp_path / f"plain{Path(name).suffix}"
    save_photo(path, stored, orientation)
    save_photo(plain, stored)  # the same pixels without EXIF: the lossy formats decode to the same values
    displayed = np.rot90(np.array(Image.open(plain).convert("RGB")), k=turns)
    image = read_image(path)
    assert image.shape == (3, *displayed.shape[:2]) and np.array_equal(image.numpy(), displayed.transpose(2, 0, 1))
    assert image_size(path) == displayed.shape[:2] == ((36, 20) if turns != 2 else (20, 36))


# A PNG without EXIF is the case where asking PIL for the EXIF data would decode the whole file.
@pytest.mark.parametrize("name, orientation, size", [("photo.jpg", 6, (90, 60)), ("photo.png", 6, (90, 60)),
                                                     ("photo.png", 1, (60, 90))])
def test_image_size_reads_orientation_from_the_header_only(tmp_path, name, orientation, size):
    path = tmp_path / name
    save_photo(path, np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8), orientation)
    truncate(path)  # pixel data cut off: only a header-only read can still size it
    assert image_size(path) == size
    with pytest.raises(ValueError, match=named(path)):
        read_image(path)


def test_masks_are_not_exif_rotated_and_pair_with_the_displayed_photo(tmp_path):
    photo, mask_path = tmp_path / "photo.jpg", tmp_path / "mask.png"
    save_photo(photo, np.zeros((20, 36, 3), np.uint8), orientation=6)
    mask = np.zeros((36, 20), np.uint8)  # drawn over the photo as displayed: 20 wide, 36 high
    mask[:10, :5] = 1
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(mask).save(mask_path, exif=exif.tobytes())  # even a mask carrying EXIF stays as stored
    assert np.array_equal(read_mask(mask_path), mask)
    dataset = SegmentationDataset([(photo, mask_path)], ["background", "thing"])
    image, loaded = dataset[0]
    assert image.shape == (3, 36, 20) and dataset.image_sizes() == [(36, 20)]
    assert np.array_equal(loaded.numpy(), mask)
