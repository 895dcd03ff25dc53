"""Tests of my_dataset.py and data_utils/: mask and image I/O (EXIF orientation, label maps), the datasets and
their errors, the dataset registry, collation, demo data, pixel counts, the CLI, and the data layer's imports."""
import json
import re
import shutil
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from conftest import (GENERATED_SIZES, REAL_SIZE, REPO_ROOT, TRAIN_IDS, VAL_IDS, build_voc_tree, run, truncate,
                      write_palette_png)
import my_dataset
from my_dataset import (DEMO_CLASSES, VOC_CLASSES_FILE, VOC_PALETTE, SegmentationFolder, VOCSegmentation,
                        build_dataset, collate_fn, load_class_names, make_demo_dataset, read_image, read_mask,
                        save_mask)
from core.constants import IGNORE_INDEX
from dataset_trees import ade20k_tree, cityscapes_tree, coco_tree
from data_utils import (DATASETS, IMAGE_EXTENSIONS, DatasetSpec, SegmentationDataset, class_pixel_counts,
                        find_voc_pairs, image_size, make_label_map)


def named(path: Path) -> str:
    """A pytest.raises pattern matching the path literally."""
    return re.escape(str(path))


def pil_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run(REPO_ROOT / "my_dataset.py", *args, check=False, timeout=120)


# ------------------------------------------------------------------------------------- palette, class names

def test_palette_is_the_voc_colormap():
    assert len(VOC_PALETTE) == 768
    assert VOC_PALETTE == imgviz.label_colormap().flatten().tolist()
    assert VOC_PALETTE[3:6] == [128, 0, 0]          # aeroplane
    assert VOC_PALETTE[45:48] == [192, 128, 128]    # person
    assert VOC_PALETTE[3 * IGNORE_INDEX:] == [224, 224, 192]


def test_load_class_names_voc():
    names = load_class_names(VOC_CLASSES_FILE)
    assert len(names) == 21
    assert names[0] == "background" and names[15] == "person" and names[20] == "tvmonitor"


def test_load_class_names_orders_by_index(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"cat": 2, "background": 0, "dog": 1}))
    assert load_class_names(path) == ["background", "dog", "cat"]


@pytest.mark.parametrize("content", ['{"a": 0, "b": 2}', '{"a": 1}', '["a", "b"]', '{"a": "0"}', "{oops",
                                     "{}"])
def test_load_class_names_rejects_bad_files(tmp_path, content):
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=named(path)):
        load_class_names(path)


def test_load_class_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_class_names(tmp_path / "nope.json")


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


# ------------------------------------------------------------------------------------------- VOC dataset

def test_voc_items(voc_root, voc2012):
    dataset = VOCSegmentation(voc_root, split="train")
    assert len(dataset) == len(TRAIN_IDS)
    assert dataset.num_classes == 21 and dataset.class_names == load_class_names(VOC_CLASSES_FILE)
    for index, sample_id in enumerate(TRAIN_IDS):
        image, mask = dataset[index]
        assert type(image) is tv_tensors.Image and type(mask) is tv_tensors.Mask
        assert image.dtype == torch.uint8 and mask.dtype == torch.uint8
        assert image.shape == (3, *GENERATED_SIZES[sample_id]) and mask.shape == GENERATED_SIZES[sample_id]
        expected = pil_mask(voc2012 / "SegmentationClass" / f"{sample_id}.png")
        assert np.array_equal(mask.numpy(), expected)
        assert IGNORE_INDEX in expected  # the fixture's boundary band passes the value check


def test_voc_image_sizes_from_headers(voc_root):
    dataset = VOCSegmentation(voc_root, split="val")
    assert dataset.image_sizes() == [GENERATED_SIZES["gen_003"], REAL_SIZE]
    assert dataset.image_sizes() == [tuple(dataset[i][0].shape[1:]) for i in range(len(dataset))]


def test_voc_applies_transforms_after_loading(voc_root):
    calls = []

    def flip(image, mask):
        calls.append((image.shape, mask.shape))
        return image.flip(-1), mask.flip(-1)

    plain, flipped = VOCSegmentation(voc_root), VOCSegmentation(voc_root, transforms=flip)
    assert torch.equal(flipped[1][1], plain[1][1].flip(-1))
    assert calls == [((3, 48, 64), (48, 64))]


def test_voc_classes_json_overrides_default(voc_root):
    names = [f"class_{i}" for i in range(21)]
    (voc_root / "classes.json").write_text(json.dumps({n: i for i, n in enumerate(names)}))
    assert VOCSegmentation(voc_root).class_names == names
    assert VOCSegmentation(voc_root, class_names=names[::-1]).class_names == names[::-1]


def test_voc_missing_vocdevkit(tmp_path):
    with pytest.raises(FileNotFoundError, match="must be the folder that contains VOCdevkit") as info:
        VOCSegmentation(tmp_path)
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in str(info.value)


def test_voc_missing_split_file(voc_root, voc2012):
    with pytest.raises(FileNotFoundError, match=named(voc2012 / "ImageSets" / "Segmentation" / "test.txt")):
        VOCSegmentation(voc_root, split="test")
    with pytest.raises(FileNotFoundError, match="prepare_sbd"):
        VOCSegmentation(voc_root, split="trainaug")


def test_voc_empty_split_file(voc_root, voc2012):
    split_file = voc2012 / "ImageSets" / "Segmentation" / "val.txt"
    split_file.write_text("\n  \n")
    with pytest.raises(ValueError, match=named(split_file)):
        VOCSegmentation(voc_root, split="val")


@pytest.mark.parametrize("missing", ["JPEGImages/gen_001.jpg", "SegmentationClass/gen_001.png"])
def test_voc_missing_image_or_mask(voc_root, voc2012, missing):
    (voc2012 / missing).unlink()
    with pytest.raises(FileNotFoundError, match="gen_001") as info:
        VOCSegmentation(voc_root)
    assert str(voc2012 / missing) in str(info.value)


def test_voc_truncated_image(voc_root, voc2012):
    path = voc2012 / "JPEGImages" / "gen_000.jpg"
    truncate(path)
    dataset = VOCSegmentation(voc_root)
    assert dataset.image_size(0) == GENERATED_SIZES["gen_000"]  # the header survives
    with pytest.raises(ValueError, match=named(path)):
        dataset[0]


def test_voc_size_mismatch(voc_root, voc2012):
    mask_path = voc2012 / "SegmentationClass" / "gen_000.png"
    write_palette_png(mask_path, np.zeros((32, 64), np.uint8))
    with pytest.raises(ValueError, match="64x64") as info:
        VOCSegmentation(voc_root)[0]
    message = str(info.value)
    assert "32x64" in message and str(mask_path) in message
    assert str(voc2012 / "JPEGImages" / "gen_000.jpg") in message


def test_voc_bad_mask_values(voc_root, voc2012):
    mask_path = voc2012 / "SegmentationClass" / "gen_000.png"
    mask = pil_mask(mask_path)
    mask[:2, :2], mask[5, 5] = 30, 254
    write_palette_png(mask_path, mask)
    with pytest.raises(ValueError, match=r"\[30, 254\]") as info:
        VOCSegmentation(voc_root)[0]
    assert str(mask_path) in str(info.value)
    # Fewer declared classes make ordinary VOC labels invalid too.
    with pytest.raises(ValueError, match="outside the 2 classes"):
        VOCSegmentation(voc_root, class_names=["background", "thing"])[1]


def test_voc_rgb_mask(voc_root, voc2012):
    mask_path = voc2012 / "SegmentationClass" / "gen_000.png"
    Image.open(mask_path).convert("RGB").save(mask_path)
    with pytest.raises(ValueError, match="palette or grayscale") as info:
        VOCSegmentation(voc_root)[0]
    assert str(mask_path) in str(info.value)


def test_truncated_image_in_worker_raises_in_main_process(voc_root, voc2012):
    path = voc2012 / "JPEGImages" / "gen_002.jpg"
    truncate(path)
    loader = DataLoader(VOCSegmentation(voc_root), batch_size=1, num_workers=2, collate_fn=collate_fn,
                        timeout=60)  # a hang would fail the test instead of stalling it
    batches = iter(loader)
    with pytest.raises(ValueError, match=named(path)) as info:
        list(batches)
    # Free the loader's iterator now, by reference count: the traceback's frames hold it, and if the cycle
    # collector frees it later, its queues may be closed first and torch's shutdown waits 5 s per worker.
    traceback.clear_frames(info.tb)
    del batches


def test_voc_trainaug_reads_segmentation_class_aug(voc_root, voc2012):
    aug = voc2012 / "SegmentationClassAug"
    aug.mkdir()
    for sample_id in ["gen_000", "gen_002"]:
        write_palette_png(aug / f"{sample_id}.png", np.full(GENERATED_SIZES[sample_id], 7, np.uint8))
    (voc2012 / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("gen_000\ngen_002\n")
    dataset = VOCSegmentation(voc_root, split="trainaug")
    assert len(dataset) == 2
    assert all(bool((dataset[i][1] == 7).all()) for i in range(2))


# ------------------------------------------------------------------------------------------ folder dataset

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


def test_folder_pairs_by_stem(tmp_path):
    images, masks = make_folder_split(tmp_path)
    dataset = SegmentationFolder(images, masks, class_names=["bg", "x", "y"])
    assert [image.name for image, _ in dataset.pairs] == ["a.jpg", "b.png", "c.jpeg"]
    assert [mask.name for _, mask in dataset.pairs] == ["a.png", "b.png", "c.png"]
    image, mask = dataset[1]
    assert image.shape == (3, 20, 30) and np.array_equal(mask.numpy(), pil_mask(masks / "b.png"))
    assert SegmentationFolder(images, masks).num_classes == 21


def test_folder_class_names_from_json(tmp_path):
    images, masks = make_folder_split(tmp_path)
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"bg": 0, "x": 1, "y": 2}))
    assert SegmentationFolder(images, masks, class_names=path).class_names == ["bg", "x", "y"]


def test_folder_image_without_mask(tmp_path):
    images, masks = make_folder_split(tmp_path)
    (masks / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=named(images / "b.png")):
        SegmentationFolder(images, masks)


def test_folder_mask_without_image(tmp_path):
    images, masks = make_folder_split(tmp_path)
    (images / "c.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=named(masks / "c.png")):
        SegmentationFolder(images, masks)


def test_folder_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")


# ----------------------------------------------------------------------------------------- build_dataset

def test_build_dataset_voc_and_voc_aug(voc_root, voc2012):
    assert isinstance(build_dataset("voc", voc_root, "train"), VOCSegmentation)
    assert len(build_dataset("voc", voc_root, "val")) == len(VAL_IDS)
    aug = voc2012 / "SegmentationClassAug"
    aug.mkdir()
    write_palette_png(aug / "gen_003.png", np.zeros(GENERATED_SIZES["gen_003"], np.uint8))
    (voc2012 / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("gen_003\n")
    train = build_dataset("voc-aug", voc_root, "train")
    assert train.pairs == [(voc2012 / "JPEGImages" / "gen_003.jpg", aug / "gen_003.png")]
    assert build_dataset("voc-aug", voc_root, "val").pairs[0][1].parent.name == "SegmentationClass"


def test_build_dataset_folder(tmp_path):
    make_folder_split(tmp_path / "train")
    assert build_dataset("folder", tmp_path, "train").num_classes == 21
    (tmp_path / "classes.json").write_text(json.dumps({"bg": 0, "x": 1, "y": 2}))
    dataset = build_dataset("folder", tmp_path, "train", transforms=None)
    assert isinstance(dataset, SegmentationFolder) and dataset.class_names == ["bg", "x", "y"]


def test_build_dataset_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="voc-aug.*coco.*cityscapes.*ade20k"):
        build_dataset("kitti", tmp_path, "train")


def test_folder_reads_ppm_images(tmp_path):
    images, masks = make_folder_split(tmp_path)
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "d.ppm")
    write_palette_png(masks / "d.png", np.zeros((20, 30), np.uint8))
    dataset = SegmentationFolder(images, masks, class_names=["bg", "x", "y"])
    assert ".ppm" in IMAGE_EXTENSIONS and dataset.pairs[3][0].name == "d.ppm"
    assert np.array_equal(dataset[3][0].numpy(), rgb.transpose(2, 0, 1))


# ------------------------------------------------------------------------------------ registry, label maps

# Raw VOC ids -> train ids of a three-class subset; every other id becomes IGNORE_INDEX.
SUBSET = {0: 0, 15: 1, 9: 2}  # background, person, chair


def subset_spec(label_map: np.ndarray) -> DatasetSpec:
    return DatasetSpec("voc-subset", "VOC's background, people and chairs", ("train", "val"), find_voc_pairs,
                       class_names=lambda _: ["background", "person", "chair"], label_map=label_map)


def subset_mask(raw: np.ndarray) -> np.ndarray:
    """SUBSET applied with comparisons, independently of the lookup table the code uses."""
    expected = np.full_like(raw, IGNORE_INDEX)
    for raw_id, train_id in SUBSET.items():
        expected[raw == raw_id] = train_id
    return expected


def test_make_label_map():
    table = make_label_map(SUBSET)
    assert table.shape == (256,) and table.dtype == np.uint8
    assert [int(table[i]) for i in range(256)] == [SUBSET.get(i, IGNORE_INDEX) for i in range(256)]
    with pytest.raises(ValueError, match="outside 0..255"):
        make_label_map({300: 1})


def test_label_map_applied_when_masks_are_read(voc_root, voc2012, monkeypatch, tmp_path):
    table = np.full(256, IGNORE_INDEX, np.uint8)
    table[list(SUBSET)] = list(SUBSET.values())
    monkeypatch.setitem(DATASETS, "voc-subset", subset_spec(table))
    dataset = build_dataset("voc-subset", voc_root, "val")
    assert type(dataset) is SegmentationDataset and dataset.num_classes == 3 and dataset.palette == VOC_PALETTE
    expected_counts = np.zeros(256, np.int64)
    for index, sample_id in enumerate(VAL_IDS):
        raw = pil_mask(voc2012 / "SegmentationClass" / f"{sample_id}.png")
        expected = subset_mask(raw)
        # The raw masks hold VOC ids up to 20: they pass the 3-class check only because the map comes first.
        assert np.array_equal(dataset[index][1].numpy(), expected)
        assert np.array_equal(read_mask(voc2012 / "SegmentationClass" / f"{sample_id}.png", table), expected)
        expected_counts += np.bincount(expected.ravel(), minlength=256)
    raw = pil_mask(voc2012 / "SegmentationClass" / "voc_sample.png")
    assert (raw == 5).any() and (dataset[1][1].numpy()[(raw == 5) | (raw == 11)] == IGNORE_INDEX).all()

    # Two ranks' shares of the masks, one counted in a worker process, add up to the whole split.
    shards = [class_pixel_counts(dataset, range(rank, len(dataset), 2), workers=rank, progress=False)
              for rank in range(2)]
    assert all(shard.shape == (256,) and shard.dtype == np.int64 for shard in shards)
    assert np.array_equal(shards[0] + shards[1], expected_counts)

    counts_file = tmp_path / "counts.json"
    args = my_dataset.parse_args(["check", "--data-path", str(voc_root), "--dataset", "voc-subset", "--split", "val",
                                  "--workers", "0", "--save-counts", str(counts_file)])
    assert my_dataset.main(args) == 0
    report = json.loads(counts_file.read_text())
    assert report["counts"] == expected_counts[:3].tolist() and report["ignored"] == expected_counts[IGNORE_INDEX]


def test_registry_entry_checks_its_fields_and_files(voc_root, voc2012, monkeypatch):
    with pytest.raises(ValueError, match="voc-subset.*256"):
        subset_spec(np.zeros(256, np.int64))
    monkeypatch.setitem(DATASETS, "voc-subset", subset_spec(make_label_map(SUBSET)))
    missing = voc2012 / "SegmentationClass" / "gen_003.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=named(missing)) as info:
        build_dataset("voc-subset", voc_root, "val")
    assert "--dataset voc-subset" in str(info.value)


def voc_aug_tree(root: Path) -> Path:
    """The VOC tree plus trainaug.txt and SegmentationClassAug (copies of the train masks)."""
    voc = build_voc_tree(root) / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug").mkdir()
    for sample_id in TRAIN_IDS:
        shutil.copyfile(voc / "SegmentationClass" / f"{sample_id}.png",
                        voc / "SegmentationClassAug" / f"{sample_id}.png")
    (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(TRAIN_IDS) + "\n")
    return root


def folder_tree(root: Path) -> Path:
    for split in ("train", "val"):
        make_folder_split(root / split)
    return root


# A data tree for each DATASETS entry: an entry added without one fails the test below.
LAYOUTS = {"voc": build_voc_tree, "voc-aug": voc_aug_tree, "folder": folder_tree, "coco": coco_tree,
           "cityscapes": cityscapes_tree, "ade20k": ade20k_tree}


def test_registry_is_the_single_source_of_datasets(tmp_path, capsys):
    assert set(LAYOUTS) == set(DATASETS)
    for name, spec in DATASETS.items():
        root = LAYOUTS[name](tmp_path / name)
        assert {"train", "val"} <= set(spec.splits) and spec.description and "\n" not in spec.description
        for split in ("train", "val"):
            dataset = build_dataset(name, root, split)
            image, mask = dataset[len(dataset) - 1]
            assert tuple(image.shape[1:]) == tuple(mask.shape)
            assert dataset.class_names == spec.class_names(root) and dataset.palette == spec.palette
        # In process (the script's own path is run by test_cli_demo_then_check_passes): argparse's choices and
        # the scan both come from the registry.
        args = my_dataset.parse_args(["check", "--data-path", str(root), "--dataset", name, "--workers", "0"])
        assert my_dataset.main(args) == 0
        assert f"images scanned: {len(build_dataset(name, root, 'train'))} " in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- collate

def test_collate_pads_images_with_zero_and_masks_with_ignore():
    small = (tv_tensors.Image(torch.full((3, 4, 5), 9, dtype=torch.uint8)),
             tv_tensors.Mask(torch.full((4, 5), 3, dtype=torch.uint8)))
    tall = (tv_tensors.Image(torch.full((3, 6, 2), 7, dtype=torch.uint8)),
            tv_tensors.Mask(torch.full((6, 2), 1, dtype=torch.uint8)))
    images, masks = collate_fn([small, tall])
    assert type(images) is torch.Tensor and type(masks) is torch.Tensor
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert images.dtype == masks.dtype == torch.uint8
    assert (images[0, :, :4, :5] == 9).all() and (images[0, :, 4:] == 0).all()
    assert (images[1, :, :, :2] == 7).all() and (images[1, :, :, 2:] == 0).all()
    assert (masks[0, :4] == 3).all() and (masks[0, 4:] == IGNORE_INDEX).all()
    assert (masks[1, :, :2] == 1).all() and (masks[1, :, 2:] == IGNORE_INDEX).all()


def test_collate_equal_sizes_stacks(voc_root):
    dataset = VOCSegmentation(voc_root)
    batch = [dataset[0], dataset[0]]
    images, masks = collate_fn(batch)
    assert torch.equal(images, torch.stack([batch[0][0], batch[1][0]]).as_subclass(torch.Tensor))
    assert torch.equal(masks[1], batch[1][1].as_subclass(torch.Tensor))


def test_loader_batches_mixed_sizes(voc_root):
    loader = DataLoader(VOCSegmentation(voc_root, split="val"), batch_size=2, collate_fn=collate_fn)
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, *REAL_SIZE) and masks.shape == (2, *REAL_SIZE)
    height, width = GENERATED_SIZES["gen_003"]
    assert (masks[0, height:] == IGNORE_INDEX).all() and (masks[0, :, width:] == IGNORE_INDEX).all()


# --------------------------------------------------------------------------------------------- demo data

def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(tmp_path):
    first = tree_bytes(make_demo_dataset(tmp_path / "a", num_train=6, num_val=3, size=64, seed=0))
    second = tree_bytes(make_demo_dataset(tmp_path / "b", num_train=6, num_val=3, size=64, seed=0))
    other = tree_bytes(make_demo_dataset(tmp_path / "c", num_train=6, num_val=3, size=64, seed=1))
    assert first == second
    assert first.keys() == other.keys() and first != other
    assert len([k for k in first if k.endswith(".jpg")]) == 9


def test_demo_layout_and_classes(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=5, num_val=2, size=64)
    assert json.loads((root / "classes.json").read_text()) == {n: i for i, n in enumerate(DEMO_CLASSES)}
    assert len(DEMO_CLASSES) == 5 and DEMO_CLASSES[0] == "background"
    train, val = VOCSegmentation(root, split="train"), VOCSegmentation(root, split="val")
    assert (len(train), len(val)) == (5, 2)
    assert train.class_names == list(DEMO_CLASSES)
    image, mask = val[1]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)


def test_demo_masks_have_ignore_bands_and_every_class(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=20, num_val=1, size=64)
    seen = set()
    for path in sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("train_*.png")):
        mask = pil_mask(path)
        assert Image.open(path).mode == "P" and (mask == IGNORE_INDEX).any()
        # The band separates regions: no two labelled 4-neighbours carry different classes.
        for a, b in [(mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])]:
            labelled = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not (labelled & (a != b)).any(), path
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4, IGNORE_INDEX}


def test_demo_classes_have_distinct_colours(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=20, num_val=1, size=64)
    dataset = VOCSegmentation(root)
    pixels = {c: [] for c in range(5)}
    for image, mask in (dataset[i] for i in range(len(dataset))):
        for c in pixels:
            pixels[c].append(image[:, mask == c].float())
    r, g, b = zip(*(torch.cat(pixels[c], dim=1).mean(dim=1).tolist() for c in range(1, 5)))
    assert r[0] > 1.8 * g[0] and r[0] > 1.8 * b[0]        # red disc
    assert b[1] > 1.8 * r[1] and b[1] > 1.4 * g[1]        # blue square
    assert g[2] > 1.8 * r[2] and g[2] > 1.8 * b[2]        # green triangle
    assert min(r[3], g[3]) > 2 * b[3]                     # yellow diamond
    background = torch.cat(pixels[0], dim=1).mean(dim=1)
    assert float(background.max() - background.min()) < 40  # muted, not one of the object colours


def test_demo_is_fast(tmp_path):
    import time
    start = time.perf_counter()
    make_demo_dataset(tmp_path, num_train=80, num_val=20, size=96)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------------------------------- CLI

def test_cli_demo_then_check_passes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = my_dataset.parse_args(["demo", "--out", str(out), "--num-train", "4", "--num-val", "3", "--size", "64"])
    assert my_dataset.main(args) == 0
    assert str(out) in capsys.readouterr().out
    result = run_cli("check", "--data-path", str(out), "--split", "val", "--workers", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "images scanned: 3" in result.stdout and "problems: 0" in result.stdout
    assert "red_striped_disc" in result.stdout


def test_cli_check_lists_bad_files(voc_root, voc2012):
    truncated = voc2012 / "JPEGImages" / "gen_000.jpg"
    truncate(truncated)
    missing = voc2012 / "SegmentationClass" / "gen_001.png"
    missing.unlink()
    bad_values = voc2012 / "SegmentationClass" / "gen_002.png"
    write_palette_png(bad_values, np.full(GENERATED_SIZES["gen_002"], 40, np.uint8))
    result = run_cli("check", "--data-path", str(voc_root), "--workers", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    for path in (truncated, missing, bad_values):
        assert str(path) in result.stdout
    assert "problems: 3" in result.stdout


def test_check_counts_pixels_per_class(voc_root, voc2012, tmp_path, capsys):
    counts_file = tmp_path / "counts.json"
    args = my_dataset.parse_args(["check", "--data-path", str(voc_root), "--split", "val", "--workers", "0",
                                  "--save-counts", str(counts_file)])
    assert my_dataset.main(args) == 0
    expected = sum(np.bincount(pil_mask(voc2012 / "SegmentationClass" / f"{i}.png").ravel(), minlength=256)
                   for i in VAL_IDS)
    report = json.loads(counts_file.read_text())
    assert report["counts"] == expected[:21].tolist() and report["ignored"] == expected[IGNORE_INDEX]
    out = capsys.readouterr().out
    absent = [name for i, name in enumerate(report["class_names"]) if expected[i] == 0]
    assert f"classes that never occur: {', '.join(absent)}" in out
    assert f"{expected[15]:,d}" in out  # the real photo's person pixels


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert my_dataset.main(my_dataset.parse_args(["check", "--data-path", str(tmp_path)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "VOCdevkit" in err
    assert my_dataset.main(my_dataset.parse_args(["demo", "--out", str(tmp_path), "--size", "8"])) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_check_folder_dataset_reports_unpaired(tmp_path, capsys):
    images, masks = make_folder_split(tmp_path / "train")
    (masks / "a.png").unlink()
    args = my_dataset.parse_args(["check", "--data-path", str(tmp_path), "--dataset", "folder", "--workers", "0"])
    assert my_dataset.main(args) == 1
    out = capsys.readouterr().out
    assert "images scanned: 2" in out and str(images / "a.jpg") in out


def test_build_voc_tree_fixture_is_readable(tmp_path):
    # The fixture itself must hold what the other tests assume: the real photo's classes and a band.
    root = build_voc_tree(tmp_path)
    mask = pil_mask(root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "voc_sample.png")
    assert set(np.unique(mask).tolist()) == {0, 5, 9, 11, 15, IGNORE_INDEX}


# ------------------------------------------------------------------------------------------------ layers

def test_data_layer_imports_only_core():
    # In a fresh interpreter: which of the project's own top-level modules each import pulls in.
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        root, env = Path.cwd().resolve(), Path(sys.prefix).resolve()

        def project_modules():
            # Absolute paths only: torch's built-in namespaces carry bare file names like "_ops.py".
            files = [Path(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)]
            files = [f.resolve() for f in files if f.is_absolute()]
            return sorted({f.relative_to(root).parts[0].removesuffix(".py") for f in files
                           if f.is_relative_to(root) and not f.is_relative_to(env)})

        import data_utils
        print(project_modules())
        import my_dataset, transforms
        print(project_modules())
        print([m for m in sys.modules if m.startswith(("train_utils", "src"))])
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['core', 'data_utils']",
                                          "['core', 'data_utils', 'my_dataset', 'transforms']", "[]"]


def test_check_refuses_an_unwritable_counts_file_before_scanning(voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(my_dataset, "check_split", lambda *a: pytest.fail("scanned before checking"))
    args = my_dataset.parse_args(["check", "--data-path", str(voc_root), "--workers", "0", "--save-counts",
                                  str(tmp_path)])
    assert my_dataset.main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: --save-counts {tmp_path} is a folder; give a file name"


def test_split_file_that_is_not_text_is_named(voc_root, voc2012):
    (voc2012 / "ImageSets" / "Segmentation" / "train.txt").write_bytes(b"gen_000\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"split file .*train.txt is not UTF-8 text \(byte 8\)"):
        VOCSegmentation(voc_root, split="train")
