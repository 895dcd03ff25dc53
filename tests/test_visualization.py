"""Pictures and their numbers: validation loss, steps.jsonl, curves.png, vis/ grids, TensorBoard events,
validation.py --save-dir / --worst / the confusion matrix in --json, predict.py --alpha. Pictures are
decoded and compared with what the test computes itself (numpy, plain torch), not only found on disk."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import UsageError
from core.palette import VOC_PALETTE
from core.runtime import Runtime
from data_utils import read_image
from recording.recorders import EpochRecord, IntervalLoss, StepRecord
from src import model_from_checkpoint
from train_utils.metrics import ConfusionMatrix
from visualization.pictures import GAP, IGNORED, MIN_PANEL, TEXT_H, WRONG, overlay
from visualization.plots import CURVES_SIZE
from visualization.recorders import CurvesRecorder, TensorBoardRecorder

from conftest import run
from independent import cross_entropy_terms, normalised

PALETTE = np.array(VOC_PALETTE, dtype=np.uint8).reshape(-1, 3)
CPU = Runtime(torch.device("cpu"))


# ------------------------------------------------------------------------------------------- helpers

def scalars(log_dir: Path) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard's own reader returns them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def image_tags(log_dir: Path) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def panel(picture: np.ndarray, index: int, size: tuple, row: int = 0, heading: bool = False) -> np.ndarray:
    """Panel `index` of row `row` at its image's own size: below the heading (vis/ grids) and column title
    strips, each row a caption strip then cells GAP px apart, every pixel a k x k block (k: the whole factor
    that enlarges the cell to MIN_PANEL px)."""
    h, w = size
    k = max(1, -(-MIN_PANEL // max(h, w)))
    top = TEXT_H * (2 if heading else 1) + row * (TEXT_H + k * h + GAP) + TEXT_H
    left = index * (k * w + GAP)
    block = picture[top:top + k * h, left:left + k * w]
    assert np.array_equal(block[::k, ::k], block[k - 1::k, k - 1::k])  # whole blocks of one colour
    return block[::k, ::k]


def demo_val(demo: Path):
    voc = demo / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return voc, ids



# ----------------------------------------------------------------------------------- TensorBoard

def epoch_record(epoch: int, steps: int, miou: float) -> EpochRecord:
    cm = ConfusionMatrix(3, ["a", "b", "c"])
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]))
    metrics = {**cm.metrics(), "mean_iou": miou}
    return EpochRecord(epoch, 1.0, 0.1, 5.0, 1.0, steps, cm, metrics, {"val_loss": 0.5 + epoch})


def test_tensorboard_resume_purges_what_the_interrupted_run_wrote_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")  # requirements-test.txt installs it; the flag's own check is tested below
    steps = 4

    def session(resume_step: int, epochs: range, loss: float) -> None:
        rec = TensorBoardRecorder(tmp_path, ["a", "b", "c"], None, VOC_PALETTE, IntervalLoss(), resume_step)
        rec.start(resume_step // steps)
        for epoch in epochs:
            for step in range(1, steps + 1):
                rec.on_step(StepRecord(epoch, step, steps, loss, 0.01 * step, 2.0))
            rec.on_epoch(epoch_record(epoch, steps, loss / 10))
        rec.close()

    session(0, range(3), loss=1.0)  # epochs 0-2 recorded, but the checkpoint kept is the one after epoch 0
    session(4, range(1, 3), loss=2.0)  # the resumed run redoes epochs 1 and 2
    data = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in data["train/lr"]] == list(range(1, 13))  # no duplicated, no rewound step
    assert [v for _, v in data["train/loss"]] == [1.0] * 4 + [2.0] * 8  # the redone steps are the new run's
    assert [s for s, _ in data["val/mean_iou"]] == [4, 8, 12]
    assert [v for _, v in data["val/mean_iou"]] == pytest.approx([0.1, 0.2, 0.2])
    assert [v for _, v in data["val/loss"]] == [0.5, 1.5, 2.5]
    assert [v for _, v in data["iou/c"]] == pytest.approx([0.5] * 3)  # 1 of the 2 "c" pixels, none extra
    assert "val/confusion" in image_tags(tmp_path / "tensorboard")


# ----------------------------------------------------------------------------------- the run's pictures

def test_curves_without_matplotlib_say_so_once_and_the_run_goes_on(tmp_path, monkeypatch):
    import logging

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0, "lr": 0.1}\n')
    records = []
    log = logging.getLogger("test_curves")
    log.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
    rec = CurvesRecorder(tmp_path, log)
    for epoch in range(3):
        rec.on_epoch(epoch_record(epoch, 4, 0.1))
    assert records == ["curves.png not drawn: drawing curves needs matplotlib, which is not installed: "
                       "pip install matplotlib"]
    assert not (tmp_path / "curves.png").exists()


def test_run_directory_has_curves_vis_grids_val_loss_and_tensorboard(trained, demo):
    pytest.importorskip("matplotlib")
    curves = Image.open(trained / "curves.png")
    curves.load()
    assert curves.size == CURVES_SIZE and curves.format == "PNG"
    assert np.asarray(curves.convert("L")).std() > 10  # not a blank canvas
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert "val_loss: " in (trained / "results.txt").read_text()

    # The last epoch's pictures and validation loss, recomputed here from last.pth (the weights of that epoch).
    model = model_from_checkpoint(trained / "last.pth").model.eval()
    voc, ids = demo_val(demo)
    grid = np.asarray(Image.open(trained / "vis" / "epoch_1.png").convert("RGB"))
    total, pixels = 0.0, 0
    for row, i in enumerate(ids):  # 3 validation images: the fixed set is all of them, in order
        image = read_image(voc / "JPEGImages" / f"{i}.jpg").permute(1, 2, 0).numpy()  # the model's input
        target = np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        with torch.no_grad():
            logits = model(normalised(image))["out"]
        s, n = cross_entropy_terms(logits, target)
        total, pixels = total + s, pixels + n
        pred = logits.argmax(1)[0].numpy()
        assert np.array_equal(panel(grid, 0, image.shape[:2], row, heading=True), image)
        assert np.array_equal(panel(grid, 1, image.shape[:2], row, heading=True), PALETTE[target])
        assert np.array_equal(panel(grid, 2, image.shape[:2], row, heading=True), PALETTE[pred])
    assert metrics[-1]["val_loss"] == pytest.approx(total / pixels, rel=1e-4)
    assert sorted(p.name for p in (trained / "vis").iterdir()) == ["epoch_0.png", "epoch_1.png"]

    steps = [json.loads(line) for line in (trained / "steps.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [steps[2]["loss"], steps[5]["loss"]] == pytest.approx([m["train_loss"] for m in metrics])
    # The interval losses of an epoch average to its train loss (here every interval is one iteration).
    assert np.mean([s["interval_loss"] for s in steps[3:]]) == pytest.approx(metrics[1]["train_loss"], rel=1e-6)

    data = scalars(trained / "tensorboard")
    assert [s for s, _ in data["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in data["train/lr"]] == pytest.approx([s["lr"] for s in steps])
    assert [s for s, _ in data["val/mean_iou"]] == [3, 6]  # at the step that ends each epoch
    assert [v for _, v in data["val/mean_iou"]] == pytest.approx([m["mean_iou"] for m in metrics])
    assert [v for _, v in data["val/loss"]] == pytest.approx([m["val_loss"] for m in metrics])
    assert [v for _, v in data["iou/background"]] == pytest.approx([m["iou"][0] for m in metrics])
    assert {"val/confusion", "val/image_0", "val/image_2"} <= set(image_tags(trained / "tensorboard"))


def assert_resumed_records(out: Path) -> None:
    """After `trained` (2 epochs of 3 steps) was resumed to 3 epochs: one record per step and epoch."""
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == list(range(1, 10))
    data = scalars(out / "tensorboard")
    assert [s for s, _ in data["train/loss"]] == list(range(1, 10))
    assert [s for s, _ in data["val/mean_iou"]] == [3, 6, 9]
    assert Image.open(out / "curves.png").size == CURVES_SIZE
    assert (out / "vis" / "epoch_2.png").is_file()


# ------------------------------------------------------------------------------- validation.py pictures

def test_validation_pictures_masks_confusion_and_worst(trained, demo, tmp_path):
    pytest.importorskip("matplotlib")
    voc, ids = demo_val(demo)
    images = tmp_path / "images"
    images.mkdir()
    for i in ids:
        shutil.copy(voc / "JPEGImages" / f"{i}.jpg", images)
    run("predict.py", "--weights", trained / "best.pth", "--image", images, "--output", tmp_path / "predicted",
        "--device", "cpu")
    save = tmp_path / "pictures"
    result = run("validation.py", "--data-path", demo, "--weights", trained / "best.pth", "--device", "cpu",
                 "-j", "0", "--json", tmp_path / "val.json", "--record", tmp_path / "record.txt",
                 "--save-dir", save, "--worst", "2")
    data = json.loads((tmp_path / "val.json").read_text())
    matrix, scores = np.zeros((5, 5), dtype=np.int64), {}
    for i in ids:
        target = np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        mask = np.asarray(Image.open(save / "masks" / f"{i}.png"))
        assert np.array_equal(mask, np.asarray(Image.open(tmp_path / "predicted" / f"{i}.png")))  # predict.py's
        keep = target != 255
        counts = np.bincount(5 * target[keep].astype(np.int64) + mask[keep], minlength=25).reshape(5, 5)
        matrix += counts
        union = counts.sum(0) + counts.sum(1) - np.diag(counts)
        scores[i] = np.mean(np.diag(counts)[union > 0] / union[union > 0])
        tile = np.asarray(Image.open(save / "tiles" / f"{i}.png").convert("RGB"))
        image = read_image(voc / "JPEGImages" / f"{i}.jpg").permute(1, 2, 0).numpy()
        size = target.shape
        assert np.array_equal(panel(tile, 0, size), image)
        assert np.array_equal(panel(tile, 1, size), PALETTE[target])
        assert np.array_equal(panel(tile, 2, size), PALETTE[mask])
        errors = panel(tile, 3, size)
        wrong = keep & (mask != target)
        assert np.all(errors[wrong] == WRONG) and np.all(errors[~keep] == IGNORED)
        assert not np.any(np.all(errors[keep & ~wrong] == WRONG, axis=-1))
    assert data["single-scale"]["confusion"] == matrix.tolist()
    worst = sorted(scores, key=lambda i: (scores[i], i))[:2]
    assert [w["image"] for w in data["worst"]] == worst
    assert [w["mean_iou"] for w in data["worst"]] == pytest.approx([scores[i] for i in worst])
    assert sorted(p.name for p in (save / "worst").iterdir()) == [f"1_{worst[0]}.png", f"2_{worst[1]}.png"]
    assert "worst 2 images by mean IoU" in result.stdout and worst[0] in result.stdout
    for name in ("confusion.png", "per_class_iou.png"):
        picture = Image.open(save / name)
        picture.load()
        assert picture.format == "PNG" and min(picture.size) >= 300


# ------------------------------------------------------------------------------------------ predict.py

def test_overlay_blends_with_alpha_and_leaves_background(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[:, 10:20], mask[:, 20:] = 1, 15
    for alpha in (0.0, 0.3, 1.0):
        drawn = np.asarray(overlay(photo, mask, ["background", "one"], alpha, contours=False))[::7, ::7]  # enlarged 7x: 30 px < MIN_PANEL
        assert drawn.shape[0] >= 20 and drawn.shape[1] > 30  # the legend is on the right
        body = drawn[:20, :30].astype(np.float64)
        expected = photo * (1 - alpha) + PALETTE[mask] * alpha
        assert np.array_equal(body[:, :10], photo[:, :10])  # class 0 untouched
        assert np.abs(body[:, 10:] - expected[:, 10:]).max() <= 1  # rounding of the blend


def test_overlay_colours_class_0_when_it_is_not_background():
    """Cityscapes' class 0 is road, ADE20K's is wall: only a class named background stays the photo."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[:, 8:] = 1
    body = np.asarray(overlay(photo, mask, ["road", "sidewalk"], 1.0, contours=False))[:144:12, :192:12]  # enlarged 12x
    assert np.array_equal(body, PALETTE[mask])


def test_alpha_outside_0_1_is_a_one_line_usage_error(capsys):
    import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args(["--weights", "w.pth", "--image", "x.jpg", "--alpha", "1.5"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "--alpha" in lines[0] and "0 to 1" in lines[0]


# ----------------------------------------------------------------------------------- missing extras

@pytest.mark.parametrize("script, argv, missing", [
    ("train", ["--data-path", "nowhere", "--tensorboard", "--device", "cpu"], "tensorboard"),
    ("tools.plot_curves", ["nowhere"], "matplotlib"),
    ("validation", ["--weights", "nowhere.pth", "--save-dir", "pics", "--device", "cpu"], "matplotlib"),
])
def test_a_missing_extra_stops_first_with_one_line_saying_what_to_install(monkeypatch, script, argv, missing):
    """In-process (the scripts' run_main prints a UsageError as `error: <line>`, see test_bad_input): the
    message comes before any data, weights or run directory is looked at ("nowhere" would fail later)."""
    import importlib

    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")] + \
            [missing, "matplotlib.figure", "torch.utils.tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    module = importlib.import_module(script)
    with pytest.raises(UsageError) as error:
        module.main(module.parse_args(argv))
    message = str(error.value)
    assert "\n" not in message and message.endswith(f"pip install {missing}")
