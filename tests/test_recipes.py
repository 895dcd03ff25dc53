"""Training recipes end to end, in process: frozen backbone, early stopping, batches without labels."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import my_dataset
import train
from core.checkpoint import Checkpoint, save_checkpoint
from core.cli import UsageError
from my_dataset import make_demo_dataset
from src import build_model
from train_utils import ConfusionMatrix, TrainSampler, trainer
from train_utils.freeze import BackboneFreeze
from train_utils.options import check_args
from train_utils.train_eval import EpochResult, Evaluation

from conftest import write_palette_png

# Crops of 32 px from images of 64: a quarter of the pixels of test_cli's runs, each epoch two batches of two.
TINY = ["--pretrained-backbone", "none", "--base-size", "32", "--crop-size", "32", "-b", "2", "-j", "0",
        "--print-freq", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2, size=64)


def train_here(demo: Path, out: Path, *flags) -> int:
    """train.py's main in this process (no interpreter start-up, no second import of torch)."""
    return train.main(train.parse_args(["--data-path", str(demo), "--output-dir", str(out), *TINY,
                                        *map(str, flags)]))


def metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path):
    return torch.load(path, weights_only=True)["model"]


# ------------------------------------------------------------------------------------------ frozen backbone

def test_frozen_backbone_is_bit_identical_until_epoch_n_also_across_a_resume(demo, tmp_path):
    torch.manual_seed(0)
    init = build_model("fcn_resnet50", 5, aux=True).state_dict()
    save_checkpoint(Checkpoint(init, model_name="fcn_resnet50", num_classes=5), tmp_path / "init.pth")
    out, common = tmp_path / "run", ["--epochs", "3", "--freeze-backbone", "2", "--eval-every", "0"]
    backbone = [k for k in init if k.startswith("backbone.")]
    heads = [k for k in init if not k.startswith("backbone.") and init[k].is_floating_point()]

    assert train_here(demo, out, *common, "--weights", tmp_path / "init.pth", "--stop-after-epochs", "1") == 0
    epoch0 = weights(out / "last.pth")
    assert all(torch.equal(epoch0[k], init[k]) for k in backbone)  # weights, BN statistics, batch counters
    assert all(not torch.equal(epoch0[k], init[k]) for k in heads if k.endswith("weight"))

    assert train_here(demo, out, *common, "--resume", "auto", "--stop-after-epochs", "1") == 0  # epoch 1
    epoch1 = weights(out / "last.pth")
    assert all(torch.equal(epoch1[k], init[k]) for k in backbone)
    assert all(not torch.equal(epoch1[k], epoch0[k]) for k in heads if k.endswith("weight"))

    assert train_here(demo, out, *common, "--resume", "auto") == 0  # epoch 2: the backbone trains
    epoch2 = weights(out / "last.pth")
    changed = [k for k in backbone if not torch.equal(epoch2[k], init[k])]
    assert all(k in changed for k in backbone if k.endswith(("conv1.weight", "running_mean", "batches_tracked")))
    log = (out / "train.log").read_text()
    assert "backbone frozen from epoch 0 to the end of epoch 1" in log and "backbone trains from epoch 2" in log


# ------------------------------------------------------------------------------------------- early stopping

# The mIoU of each epoch's evaluation. With --early-stop 2 --early-stop-min-delta 0.01: epoch 2 (+0.005) and
# epoch 3 do not improve by more than 0.01, so the run stops after epoch 3; epoch 4 would have improved.
SCRIPT = [0.50, 0.60, 0.605, 0.59, 0.70, 0.71, 0.72, 0.73]


class ScriptedMatrix(ConfusionMatrix):
    def __init__(self, num_classes: int, miou: float) -> None:
        super().__init__(num_classes)
        self.miou = miou

    def metrics(self):
        return {**super().metrics(), "mean_iou": self.miou}


@pytest.fixture
def scripted(monkeypatch):
    """The trainer's loop with training skipped and each evaluation returning the SCRIPT value of its epoch."""
    def no_training(model, optimizer, loader, device, epoch, *args, **kwargs):
        return EpochResult(1.0, 0.01, len(loader), 1.0, total_steps=len(loader))

    def run_evaluation(model, loader, device, num_classes, *args, desc="", **kwargs):
        return Evaluation(ScriptedMatrix(num_classes, SCRIPT[int(desc.split()[-1])]), 1.0)

    monkeypatch.setattr(trainer, "train_one_epoch", no_training)
    monkeypatch.setattr(trainer, "run_evaluation", run_evaluation)


def test_early_stop_stops_at_the_right_epoch_and_keeps_best(demo, tmp_path, scripted):
    out = tmp_path / "run"
    assert train_here(demo, out, "--epochs", "8", "--early-stop", "2", "--early-stop-min-delta", "0.01") == 0
    lines = metrics(out)
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
    assert [m["evals_without_improvement"] for m in lines] == [0, 0, 1, 2]
    assert "stopped" in lines[-1] and "for 2 evaluations" in lines[-1]["stopped"]
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 2  # 0.605 is still the best mIoU
    assert "early stop after epoch 3" in (out / "train.log").read_text()


def test_resume_keeps_the_patience_counter(demo, tmp_path, scripted):
    out, flags = tmp_path / "run", ["--epochs", "8", "--early-stop", "2", "--early-stop-min-delta", "0.01"]
    assert train_here(demo, out, *flags, "--stop-after-epochs", "3") == 0  # epochs 0-2: one evaluation counted
    assert train_here(demo, out, *flags, "--resume", "auto") == 0
    assert [m["epoch"] for m in metrics(out)] == [0, 1, 2, 3]  # a reset counter would have gone on to epoch 7
    assert train_here(demo, out, *flags, "--resume", "auto") == 0  # stopped runs stay stopped
    assert len(metrics(out)) == 4 and "nothing to do" in (out / "train.log").read_text()
    assert train_here(demo, out, "--epochs", "8", "--early-stop", "3", "--resume", "auto") == 0  # more patience
    assert [m["epoch"] for m in metrics(out)] == list(range(8))


def test_a_stop_on_the_last_epoch_is_a_finished_run_that_more_epochs_continue(demo, tmp_path, scripted):
    out, flags = tmp_path / "run", ["--early-stop", "2", "--early-stop-min-delta", "0.01"]
    assert train_here(demo, out, "--epochs", "4", *flags) == 0  # the patience runs out at epoch 3, the last
    assert "stopped" not in metrics(out)[-1] and "early stop after" not in (out / "train.log").read_text()
    assert train_here(demo, out, "--epochs", "6", *flags, "--resume", "auto") == 0
    assert [m["epoch"] for m in metrics(out)] == list(range(6))  # epoch 4 improved, 5 ran too
    assert "nothing to do" not in (out / "train.log").read_text()


# ------------------------------------------------------------------------------------ batches without labels

def test_unlabelled_images_are_reported_by_check_and_add_zero_loss_in_training(demo, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    voc = data / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    blank = {0, 1, 2}  # the masks of these train images become all 255
    for i in blank:
        write_palette_png(voc / "SegmentationClass" / f"{ids[i]}.png", np.full((64, 64), 255, np.uint8))
    assert my_dataset.main(my_dataset.parse_args(["check", "--data-path", str(data), "--workers", "0"])) == 0
    report = capsys.readouterr().out
    assert "images without labelled pixels (every pixel 255): 3" in report
    assert all(f"{ids[i]}.png" in report for i in blank)

    assert train_here(data, tmp_path / "run", "--epochs", "1", "--no-aux") == 0
    # The other demo masks are background (class 0) nearly everywhere, so every crop of them holds labels: a
    # batch has no labelled pixel exactly when both of its images are blank (the sampler's order, seed 0).
    order = [i for i, _ in TrainSampler(len(ids), 2, seed=0)]
    expected = sum(1 for k in range(0, len(order), 2) if set(order[k:k + 2]) <= blank)
    (line,) = metrics(tmp_path / "run")
    assert expected == 1 and line["empty_batches"] == expected and np.isfinite(line["train_loss"])
    assert "1 of 2 batches had no labelled pixel" in (tmp_path / "run" / "train.log").read_text()


def test_one_image_batches_of_tiny_crops_are_refused_with_the_reason(demo):
    args = train.parse_args(["--data-path", str(demo), *TINY, "--crop-size", "1", "-b", "1"])
    with pytest.raises(UsageError, match="BatchNorm sees one value per channel"):
        check_args(args)
    check_args(train.parse_args(["--data-path", str(demo), *TINY, "--crop-size", "1", "-b", "2"]))


@pytest.mark.parametrize("flags, message", [
    (["--dice-weight", "2"], "--dice-weight weights the Dice term of --loss ce\\+dice, but --loss is ce"),
    (["--loss", "dice", "--focal-gamma", "1"], "--focal-gamma is the exponent of --loss focal"),
    (["--early-stop-min-delta", "0.01"], "--early-stop-min-delta needs --early-stop"),
    (["--color-jitter", "0.4", "0.4", "0.4", "0.6"], "--color-jitter takes 4 values"),
    (["--rotate", "270"], "--rotate must be in \\[0, 180\\]"),
    (["--vflip", "2"], "--vflip is a probability"),
])
def test_recipe_flags_that_would_do_nothing_or_cannot_work_are_refused(demo, flags, message):
    with pytest.raises(UsageError, match=message):
        check_args(train.parse_args(["--data-path", str(demo), *TINY, *flags]))


def test_resume_with_another_optimizer_is_refused(demo, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, model_name="fcn_resnet50", num_classes=5,
                               training={"args": {"optimizer": "sgd"}, "next_epoch": 1}), out / "last.pth")
    with pytest.raises(UsageError, match="trained with --optimizer sgd, but this run has --optimizer adamw"):
        train_here(demo, out, "--optimizer", "adamw", "--resume", "auto")


def test_freeze_backbone_holds_the_pretrained_layers_only():
    with torch.device("meta"):  # the layout is all that matters here
        resnet, vgg = build_model("fcn_resnet50", 3), build_model("fcn8s", 3)
    trains = lambda model: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    freeze = BackboneFreeze(resnet, 2)
    assert freeze.set_epoch(0) and not freeze.set_epoch(1)
    assert trains(resnet) == {n for n, _ in resnet.named_parameters() if not n.startswith("backbone.")}
    assert freeze.eval_modules == (resnet.backbone,)
    assert freeze.set_epoch(2) and trains(resnet) == {n for n, _ in resnet.named_parameters()}
    assert freeze.eval_modules == ()
    freeze = BackboneFreeze(vgg, 1)
    freeze.set_epoch(0)
    assert trains(vgg) == {f"{layer}.{kind}" for layer in ("score_fr", "score_pool4", "score_pool3")
                           for kind in ("weight", "bias")}
    freeze.set_epoch(1)  # the fixed bilinear upsampling layers stay fixed
    assert trains(vgg) == {n for n, _ in vgg.named_parameters() if not n.startswith("upscore")}
