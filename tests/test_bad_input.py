"""Every kind of bad input to every CLI ends in one clear line, a non-zero exit and no damage.

One test per row of the README's bad-input table.
"""
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_cli import TINY, run

from my_dataset import make_demo_dataset, save_mask
from recording.run_files import RUN_LOCK
from src import build_model

VOC = Path("VOCdevkit") / "VOC2012"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A clean demo tree, a finished run on it, and a 5-class checkpoint."""
    root = tmp_path_factory.mktemp("bad")
    data = make_demo_dataset(root / "data", num_train=4, num_val=2, size=64)
    run_dir = root / "run"
    run("train.py", "--data-path", data, "--output-dir", run_dir, "--epochs", "1", *TINY, "--no-aux")
    return {"data": data, "run": run_dir, "root": root}


def fingerprint(folder: Path) -> dict:
    """Hash of every file but the run-directory lock, which each run that claims the folder rewrites."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != RUN_LOCK}


def broken_copy(base, tmp_path, breaker) -> Path:
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    breaker(data / VOC)
    return data


def first_id(voc: Path, split: str = "train") -> str:
    return (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]


def bad_label(voc):
    mask = np.array(Image.open(voc / "SegmentationClass" / f"{first_id(voc)}.png"))
    mask[0, 0] = 9
    save_mask(mask, voc / "SegmentationClass" / f"{first_id(voc)}.png")


def missing_mask(voc):
    (voc / "SegmentationClass" / f"{first_id(voc)}.png").unlink()


def size_mismatch(voc):
    save_mask(np.zeros((50, 40), np.uint8), voc / "SegmentationClass" / f"{first_id(voc)}.png")


def truncated_jpeg(voc):
    path = voc / "JPEGImages" / f"{first_id(voc)}.jpg"
    path.write_bytes(path.read_bytes()[:300])


def empty_split(voc):
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in last, last


def train(base, tmp_path, data=None, *extra):
    return run("train.py", "--data-path", data or base["data"], "--output-dir", tmp_path / "out", "--epochs", "1",
               *TINY, "--no-aux", *extra, check=False)


# ------------------------------------------------------------------------------------------ bad datasets

@pytest.mark.parametrize("breaker,needles,workers", [
    (bad_label, ["values [9]", "SegmentationClass"], "0"),
    (missing_mask, ["missing", "SegmentationClass"], "0"),
    (size_mismatch, ["its mask", "64x64", "50x40"], "0"),
    (truncated_jpeg, ["JPEGImages", "truncated"], "2"),  # raised in a loader worker, shown in the main process
    (empty_split, ["train.txt", "empty"], "0"),
], ids=["bad-label", "missing-mask", "size-mismatch", "truncated-jpeg", "empty-split"])
def test_train_on_bad_data(base, tmp_path, breaker, needles, workers):
    data = broken_copy(base, tmp_path, breaker)
    assert_one_line_error(train(base, tmp_path, data, "-j", workers), *needles)


def test_train_missing_data_path(base, tmp_path):
    assert_one_line_error(train(base, tmp_path, tmp_path / "nowhere"), "nowhere", "VOCdevkit")


# --------------------------------------------------------------------------------------------- bad flags

@pytest.mark.parametrize("flags,needles", [
    (["-b", "-2"], ["--batch-size", "positive"]),
    (["--num-classes", "0"], ["--num-classes", "positive"]),
    (["--crop-size", "600", "--base-size", "520"], ["--crop-size 600", "--base-size 520"]),
    (["--num-classes", "21"], ["--num-classes 21", "5 classes"]),
    (["--model", "fcn32s", "--aux"], ["no auxiliary head", "--no-aux"]),
    (["--device", "cuda"], ["CUDA is not available", "--device cpu"]),
    (["--pretrained-backbone", "missing-resnet50.pth"], ["missing-resnet50.pth"]),
], ids=["negative-batch", "zero-classes", "crop-over-base", "classes-mismatch", "vgg-aux", "no-cuda",
        "missing-backbone"])
def test_nonsensical_flags(base, tmp_path, flags, needles):
    assert_one_line_error(train(base, tmp_path, None, *flags), *needles)


@pytest.mark.parametrize("config,needles", [
    ({"epochs": 1, "learning-rate": 0.1}, ["unknown key", "learning-rate"]),
    ({"epochs": "many"}, ["epochs", "'many'", "not a valid value"]),
    ({"aux": "yes"}, ["aux", "true or false"]),
], ids=["unknown-key", "wrong-type", "wrong-bool"])
def test_bad_yaml_config(base, tmp_path, config, needles):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(train(base, tmp_path, None, "--config", path), str(path), *needles)


# ---------------------------------------------------------------------------------------- bad checkpoints

class _Exploit:
    """Unpickling it would create `marker`: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_checkpoint(kind: str, path: Path) -> Path:
    if kind == "truncated":
        torch.save({"model": build_model("fcn32s", num_classes=5).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "random":
        path.write_bytes(os.urandom(2000))
    elif kind == "exploit":
        with open(path, "wb") as f:
            torch.save({"model": {"w": torch.zeros(1)}, "x": _Exploit(path.with_name("PWNED"))}, f,
                       pickle_module=pickle)
    elif kind == "other-model":
        torch.save({"model": build_model("fcn32s", num_classes=5).state_dict(), "model_name": "fcn32s",
                    "num_classes": 5}, path)
    elif kind == "other-classes":
        torch.save({"model": build_model("fcn_resnet50", num_classes=3, aux=False).state_dict(),
                    "model_name": "fcn_resnet50", "num_classes": 3}, path)
    elif kind == "wrong-type":  # metadata edited by hand, or written by another program
        torch.save({"format_version": 2, "model": {"w": torch.zeros(1)}, "model_name": "fcn_resnet50",
                    "num_classes": "5", "class_names": [0, 1, 2, 3, 4]}, path)
    return path


CHECKPOINT_CASES = [
    ("truncated", ["bad.pth", "truncated or corrupt"]),
    ("random", ["bad.pth", "not a readable PyTorch checkpoint"]),
    ("exploit", ["bad.pth", "refused by weights_only=True"]),
    ("other-model", ["bad.pth", "fcn32s"]),
    ("other-classes", ["bad.pth", "3 classes"]),
    ("wrong-type", ["bad.pth", "'num_classes' is str '5', expected int"]),
]


@pytest.mark.parametrize("kind,needles", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_resume_from_bad_checkpoint_damages_nothing(base, tmp_path, kind, needles):
    before = fingerprint(base["run"])
    bad = write_checkpoint(kind, tmp_path / "bad.pth")
    result = run("train.py", "--data-path", base["data"], "--output-dir", base["run"], "--epochs", "2",
                 "--resume", bad, *TINY, "--no-aux", check=False)
    assert_one_line_error(result, *needles)
    assert fingerprint(base["run"]) == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind,needles", [c for c in CHECKPOINT_CASES if c[0] != "other-model"],
                         ids=[c[0] for c in CHECKPOINT_CASES if c[0] != "other-model"])
def test_validate_bad_checkpoint(base, tmp_path, kind, needles):
    bad = write_checkpoint(kind, tmp_path / "bad.pth")
    result = run("validation.py", "--data-path", base["data"], "--weights", bad, "--device", "cpu", "-j", "0",
                 check=False)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "record_mAP.txt").exists() and not (tmp_path / "PWNED").exists()


def test_weights_that_are_not_a_checkpoint(base, tmp_path):
    bad = write_checkpoint("random", tmp_path / "bad.pth")
    assert_one_line_error(train(base, tmp_path, None, "--weights", bad), "bad.pth", "not a readable")


# -------------------------------------------------------------------------------- validation and predict

def test_validation_missing_weights_and_wrong_model(base, tmp_path):
    common = ["--data-path", base["data"], "--device", "cpu", "-j", "0"]
    assert_one_line_error(run("validation.py", *common, "--weights", tmp_path / "nope.pth", check=False),
                          "nope.pth", "no such checkpoint")
    assert_one_line_error(run("validation.py", *common, "--weights", base["run"] / "last.pth", "--model",
                              "fcn8s", check=False), "fcn_resnet50", "--model fcn8s")


def test_validation_on_data_with_other_classes(base, tmp_path):
    data = tmp_path / "voc21"
    shutil.copytree(base["data"], data)
    (data / "classes.json").unlink()  # now the 21 VOC classes
    assert_one_line_error(run("validation.py", "--data-path", data, "--weights", base["run"] / "last.pth",
                              "--device", "cpu", "-j", "0", check=False), "5 classes", "21")


def test_predict_bad_inputs(base, tmp_path):
    weights = ["--weights", base["run"] / "last.pth", "--device", "cpu", "--output", tmp_path / "out"]
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    assert_one_line_error(run("predict.py", *weights, "--image", text, check=False), "notes.jpg")
    assert_one_line_error(run("predict.py", *weights, "--image", tmp_path / "missing.jpg", check=False),
                          "missing.jpg", "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("predict.py", *weights, "--image", empty, check=False), "no images")
    assert not (tmp_path / "out").exists()


def test_dataset_check_missing_path(tmp_path):
    assert_one_line_error(run("my_dataset.py", "check", "--data-path", tmp_path / "nowhere", check=False),
                          "nowhere", "VOCdevkit")


# ----------------------------------------------------------------------------- records are never lost

def test_resume_auto_without_last_pth_keeps_the_run(base, tmp_path):
    """A run directory with best.pth and records but no last.pth (deleted, or lost with a disk): starting
    afresh would wipe the records and replace best.pth with an epoch-0 model."""
    out = tmp_path / "run"
    out.mkdir()
    for path in base["run"].iterdir():
        if path.name != "last.pth" and path.is_file():
            (os.link if path.suffix == ".pth" else shutil.copy2)(path, out / path.name)
    before = fingerprint(out)
    result = run("train.py", "--data-path", base["data"], "--output-dir", out, "--epochs", "2", "--resume", "auto",
                 *TINY, "--no-aux", check=False)
    assert_one_line_error(result, "--resume auto", "no last.pth", f"--resume {out / 'best.pth'}", "--overwrite")
    assert fingerprint(out) == before


def test_validation_checks_its_record_before_evaluating(base, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("validation.py", "--data-path", base["data"], "--weights", base["run"] / "last.pth", "--device",
                 "cpu", "-j", "0", "--record", blocker / "record_mAP.txt", check=False)
    assert_one_line_error(result, "--record", "is a file, not a folder")
    assert "global correct" not in result.stdout  # refused before evaluating, not after
