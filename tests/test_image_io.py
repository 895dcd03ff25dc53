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

from data_utils import check_split, image_note, read_image, read_mask

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
