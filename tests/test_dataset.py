"""The dataset classes and the dataset registry (data_utils.datasets, pairs, registry, collate): the VOC and
folder layouts and their errors, label maps, collation."""
import json
import shutil
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

import my_dataset
from core.constants import IGNORE_INDEX
from data_utils import (
    DATASETS,
    IMAGE_EXTENSIONS,
    DatasetSpec,
    SegmentationDataset,
    class_pixel_counts,
    find_voc_pairs,
    make_demo_dataset,
    make_label_map,
)
from my_dataset import (
    VOC_CLASSES_FILE,
    VOC_PALETTE,
    SegmentationFolder,
    VOCSegmentation,
    build_dataset,
    collate_fn,
    load_class_names,
    read_mask,
)

from conftest import (
    GENERATED_SIZES,
    REAL_SIZE,
    TRAIN_IDS,
    VAL_IDS,
    build_voc_tree,
    named,
    pil_mask,
    truncate,
    write_palette_png,
)
from dataset_trees import ade20k_tree, cityscapes_tree, coco_tree, make_folder_split

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
           "cityscapes": cityscapes_tree, "ade20k": ade20k_tree,
           "demo": lambda root: make_demo_dataset(root, num_train=2, num_val=2, size=64)}


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


def test_build_voc_tree_fixture_is_readable(tmp_path):
    # The fixture itself must hold what the other tests assume: the real photo's classes and a band.
    root = build_voc_tree(tmp_path)
    mask = pil_mask(root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "voc_sample.png")
    assert set(np.unique(mask).tolist()) == {0, 5, 9, 11, 15, IGNORE_INDEX}


def test_split_file_that_is_not_text_is_named(voc_root, voc2012):
    (voc2012 / "ImageSets" / "Segmentation" / "train.txt").write_bytes(b"gen_000\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"split file .*train.txt is not UTF-8 text \(byte 8\)"):
        VOCSegmentation(voc_root, split="train")
