"""docs/extending.md, checked: a toy dataset, loss, recorder and picture, each added by one table entry (or
passed to run_training), train together in one tiny run."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train
from data_utils.pairs import folder_pairs
from data_utils.registry import DATASETS, DatasetSpec
from recording import EpochRecord, Recorder
from train_utils.loss import LOSSES
from train_utils.trainer import run_training
from visualization.pictures import palette_array, write_png

from conftest import TINY

SHAPES = ["background", "disc", "square", "triangle", "diamond"]  # the demo data's classes, another name
PALETTE = [0, 0, 0, 255, 0, 0, 0, 0, 255, 0, 200, 0, 255, 255, 0] + [0] * (768 - 15)


def find_shapes_pairs(data_path: Path, split: str):
    return folder_pairs(data_path / split / "images", data_path / split / "masks")


def smooth_ce(logits, target, weight, config, ignore_index, calls=[]):
    calls.append(logits.shape)
    return F.cross_entropy(logits, target, weight, ignore_index=ignore_index, label_smoothing=0.1)


def iou_bars(iou, palette, width: int = 200, height: int = 12) -> np.ndarray:
    colours, picture = palette_array(palette), np.full((len(iou) * height, width, 3), 255, np.uint8)
    for c, value in enumerate(iou):
        if value is not None and value == value:
            picture[c * height:(c + 1) * height - 2, :round(value * width)] = colours[c]
    return picture


class IouBars(Recorder):
    def __init__(self, out_dir: Path, palette):
        self.out_dir, self.palette, self.epochs = out_dir, palette, []

    def on_epoch(self, record: EpochRecord) -> None:
        if record.metrics is not None:
            self.epochs.append((record.epoch, record.metrics["iou"]))
            write_png(iou_bars(record.metrics["iou"], self.palette), self.out_dir / f"iou_{record.epoch}.png")


@pytest.fixture
def extensions(monkeypatch):
    monkeypatch.setitem(DATASETS, "shapes", DatasetSpec(
        "shapes", "the demo shapes under another name", ("train", "val"), find_shapes_pairs,
        class_names=lambda _: list(SHAPES), palette=list(PALETTE)))
    monkeypatch.setitem(LOSSES, "smooth-ce", smooth_ce)


def shapes_folders(demo: Path, root: Path) -> Path:
    """The demo's VOC tree as SPLIT/images and SPLIT/masks folders."""
    voc = demo / "VOCdevkit" / "VOC2012"
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
        for stem in (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split():
            shutil.copy(voc / "JPEGImages" / f"{stem}.jpg", root / split / "images")
            shutil.copy(voc / "SegmentationClass" / f"{stem}.png", root / split / "masks")
    return root


def test_a_toy_dataset_loss_recorder_and_picture_train_together(extensions, demo, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny in-process run: more threads only spin on a shared 2-core machine
    try:
        check_toy_run(demo, tmp_path)
    finally:
        torch.set_num_threads(threads)


def check_toy_run(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = train.parse_args(["--dataset", "shapes", "--data-path", str(shapes_folders(demo, tmp_path / "shapes")), "--output-dir", str(out),
                             "--loss", "smooth-ce", "--epochs", "1", *TINY, "--crop-size", "32", "--base-size", "32"])
    bars = IouBars(out, PALETTE)
    calls = smooth_ce.__defaults__[0]
    calls.clear()
    assert run_training(args, extra_recorders=[bars]) == 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["dataset"] == "shapes" and ckpt["class_names"] == SHAPES and ckpt["palette"] == PALETTE
    assert calls and all(shape[1] == len(SHAPES) for shape in calls)  # the toy loss trained the 5-class head
    assert [epoch for epoch, _ in bars.epochs] == [0]
    picture = np.array(Image.open(out / "iou_0.png").convert("RGB"))
    iou = bars.epochs[0][1]
    assert picture.shape == (len(SHAPES) * 12, 200, 3)
    for c, value in enumerate(iou):  # each bar is as long as its class's IoU, in the class's colour
        painted = (picture[c * 12] == palette_array(PALETTE)[c]).all(-1).sum()
        assert painted == (0 if value is None or value != value else round(value * 200)), (c, value)
