"""Outputs that would replace inputs, damaged weights, huge photos and half-started process groups: each ends
in one line naming the problem and its fix, before any work, and nothing is damaged.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run
from PIL import Image

from core.checkpoint import load_checkpoint, read_checkpoint
from src import build_model
from src.weights import load_model_weights


def error_line(result) -> str:
    """The one `error:` line of a failed run (and proof that there is no traceback)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def nan_weights(trained, tmp_path_factory) -> Path:
    """The session run's best.pth with one BatchNorm running variance set to NaN."""
    ckpt = read_checkpoint(trained / "best.pth")
    name = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][name][0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pth"
    torch.save(ckpt, path)
    return path


# ------------------------------------------------------------------------------------- non-finite weights

def test_checkpoint_with_nan_is_refused_by_validation_and_predict(nan_weights, demo, tmp_path):
    name = next(k for k in torch.load(nan_weights, weights_only=True)["model"] if k.endswith("running_var"))
    line = error_line(run("validation.py", "--data-path", demo, "--weights", nan_weights, "--device", "cpu",
                          "--record", tmp_path / "record.txt", check=False))
    assert name in line and "NaN" in line and str(nan_weights) in line
    assert not (tmp_path / "record.txt").exists()
    photo = next((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())
    line = error_line(run("predict.py", "--weights", nan_weights, "--image", photo, "--output",
                          tmp_path / "mask.png", "--device", "cpu", check=False))
    assert name in line and not (tmp_path / "mask.png").exists()


def test_checkpoint_with_inf_is_refused_for_resume_weights_and_inspect(trained, tmp_path):
    ckpt = read_checkpoint(trained / "last.pth")
    first_float = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first_float].view(-1)[-1] = float("-inf")
    path = tmp_path / "inf.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"tensor '{first_float}' holds non-finite values \\(0 NaN, 1 inf"):
        load_checkpoint(path)  # train --resume, tools/inspect_checkpoint.py, validation, predict, export
    model = build_model("fcn_resnet50", 5, aux=True)
    with pytest.raises(ValueError, match=first_float):
        load_model_weights(model, path)  # train --weights
    line = error_line(run("tools/inspect_checkpoint.py", path, check=False))
    assert first_float in line
