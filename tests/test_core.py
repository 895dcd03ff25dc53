"""The ground floor: runtime policy and flags, the checkpoint format and its older versions, the platform layer
(with a simulated platform that lacks fcntl, os.fchmod, os.link and sigtimedwait), and the layering itself."""
import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.checkpoint import (FORMAT_VERSION, Checkpoint, describe, format_version, load_checkpoint,
                             parse_checkpoint, save_checkpoint)
from core.cli import ArgumentParser
from core.platform import FileLock
from core.runtime import add_runtime_flags, resolve_device, resolve_runtime
from data_utils import make_demo_dataset
from src import build_model, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "format1_checkpoint.pth"


def run(*args, check=True, timeout=300):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def runtime_args(*argv: str) -> argparse.Namespace:
    parser = ArgumentParser()
    add_runtime_flags(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ runtime

def test_runtime_defaults_are_exact_fp32():
    rt = resolve_runtime(runtime_args("--device", "cpu"))
    assert (rt.device, rt.amp_dtype, rt.channels_last, rt.compile) == (torch.device("cpu"), None, False, False)


def test_runtime_flags_turn_into_one_policy():
    assert resolve_runtime(runtime_args("--device", "cpu", "--amp")).amp_dtype == torch.bfloat16
    rt = resolve_runtime(runtime_args("--device", "cpu", "--amp", "--amp-dtype", "fp16", "--channels-last"))
    assert rt.amp_dtype == torch.float16 and rt.channels_last and rt.memory_format == torch.channels_last


@pytest.mark.parametrize("device, message", [
    ("mps", "no Apple GPU \\(MPS\\) is available"),
    ("tpu", "not a device|unsupported device"),
    ("cuda:3", "CUDA is not available|has 1 CUDA device"),
])
def test_missing_devices_are_one_clear_line(device, message):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    if device.startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has that GPU")
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


def test_script_with_device_mps_fails_in_one_line(tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    result = run("validation.py", "--weights", FIXTURE, "--device", "mps", "--data-path", tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "MPS" in lines[0] and "--device cpu" in lines[0]


def test_runtime_and_model_flags_are_declared_once():
    sources = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    for flag in ("--amp", "--device", "--channels-last", "--compile", "--num-classes", "--weights", "--model"):
        pattern = re.compile(rf"add_argument\(\s*\"{re.escape(flag)}\"")
        owners = [p.relative_to(ROOT).as_posix() for p in sources if pattern.search(p.read_text())]
        assert len(owners) == 1, (flag, owners)


# ------------------------------------------------------------------------------------------------- layers

def test_data_layer_and_models_import_nothing_above_them():
    code = ("import sys, my_dataset, transforms, src, data_utils; "
            "print([m for m in sys.modules if m.split('.')[0] in ('train_utils', 'validation', 'predict')])")
    assert run("-c", code).stdout.strip() == "[]"
    code = "import sys, core.checkpoint, core.runtime, core.platform, core.cli, core.palette; " \
           "print([m for m in sys.modules if m.split('.')[0] in ('train_utils', 'src', 'data_utils', 'my_dataset')])"
    assert run("-c", code).stdout.strip() == "[]"


def test_no_function_local_imports_of_project_modules():
    project = ("core", "src", "train_utils", "data_utils", "my_dataset", "transforms")
    local = re.compile(rf"^[ \t]+(from|import) \.?({'|'.join(project)})\b|^[ \t]+from \.\S* import", re.M)
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        assert not local.search(path.read_text()), path


# ------------------------------------------------------------------------------------ checkpoint format

class TinyNet(nn.Sequential):
    """The module the format-1 fixture was saved from (conv, BN, ReLU, conv)."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))


def test_format1_checkpoint_of_the_previous_code_still_reads():
    """tests/fixtures/format1_checkpoint.pth was written by the code before format_version existed (commit
    0962b48): trainer.Training.checkpoint() of a 3-class run of TinyNet, after 3 SGD steps, saved at epoch 1
    iteration 3."""
    ckpt = load_checkpoint(FIXTURE)
    assert ckpt.format_version == 1 and ckpt.model_name == "tiny_fixture_net" and ckpt.num_classes == 3
    assert ckpt.class_names == ["background", "cat", "dog"] and ckpt.aux is False
    assert ckpt.training["next_epoch"] == 1 and ckpt.training["next_step"] == 3 and len(ckpt.training["rng"]) == 1
    TinyNet().load_state_dict(ckpt.state_dict)  # strict: every tensor is there
    assert "format 1" in describe(ckpt) and "next epoch 1" in describe(ckpt)


def test_format1_training_state_resumes(tmp_path):
    import logging

    from train_utils.checkpoint import Training, load_resume
    from train_utils.distributed import DistInfo
    from train_utils.lr import create_lr_scheduler

    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = create_lr_scheduler(opt, 5, 3)
    args = argparse.Namespace(model="tiny_fixture_net", num_classes=3, dataset="folder")
    training = Training(args, DistInfo(), model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), [])
    load_resume(training, FIXTURE, logging.getLogger("test"))
    raw = torch.load(FIXTURE, weights_only=True)
    assert all(torch.equal(v, raw["model"][k]) for k, v in model.state_dict().items())
    assert sched.last_epoch == 3 and opt.state_dict()["state"][0]["momentum_buffer"].shape == (4, 3, 3, 3)
    assert (training.state.next_epoch, training.state.next_step, training.state.best_miou) == (1, 3, 0.25)
    assert torch.equal(torch.get_rng_state(), raw["rng"][0]["torch"])


def test_current_format_round_trip_and_model_loading(tmp_path):
    model = build_model("fcn32s", 3)
    path = tmp_path / "model.pth"
    save_checkpoint(Checkpoint(model.state_dict(), model_name="fcn32s", num_classes=3, class_names=["a", "b", "c"],
                               aux=False, dataset="folder", palette=[7] * 768), path)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    loaded = model_from_checkpoint(path)
    assert (loaded.name, loaded.num_classes, loaded.class_names, loaded.palette[:3]) == ("fcn32s", 3, ["a", "b", "c"],
                                                                                         [7, 7, 7])


def test_format1_and_raw_state_dicts_of_real_models_load(tmp_path):
    from torchvision.models.segmentation import fcn_resnet50

    tv = fcn_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    raw_path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), raw_path)
    assert format_version(torch.load(raw_path, weights_only=True)) == 0
    loaded = model_from_checkpoint(raw_path)
    assert (loaded.name, loaded.num_classes, loaded.class_names) == ("fcn_resnet50", 4, None)
    old = torch.load(FIXTURE, weights_only=True)  # the fixture's layout, with a real model's weights
    old.update(model=tv.state_dict(), model_name="fcn_resnet50", num_classes=4, aux=True,
               class_names=["bg", "a", "b", "c"])
    torch.save(old, tmp_path / "old.pth")
    loaded = model_from_checkpoint(tmp_path / "old.pth")
    assert loaded.class_names == ["bg", "a", "b", "c"] and loaded.model.aux_classifier is not None


def test_newer_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "future.pth"
    torch.save({"format_version": FORMAT_VERSION + 1, "model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="format 3 is newer than this code reads .*update this project"):
        load_checkpoint(path)


@pytest.mark.parametrize("field, value", [("num_classes", "5"), ("num_classes", True), ("class_names", [1, 2]),
                                          ("class_names", "abc"), ("model_name", 3), ("palette", [1, 2])])
def test_metadata_of_the_wrong_type_is_a_clear_error(field, value):
    obj = {"format_version": 2, "model": {"w": torch.zeros(1)}, "model_name": "fcn32s", "num_classes": 2,
           "class_names": ["a", "b"], field: value}
    with pytest.raises(ValueError, match=field.split("_")[0]):
        parse_checkpoint(obj, "ckpt.pth")


def test_save_refuses_hand_built_dicts(tmp_path):
    with pytest.raises(ValueError, match="current format"):
        save_checkpoint({"model": {}}, tmp_path / "x.pth")


# ------------------------------------------------------------------------------- platform and simulation

def test_file_lock_is_exclusive_and_released_by_a_dying_process(tmp_path):
    lock_path = tmp_path / "run.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from core.platform import FileLock; l = FileLock(sys.argv[2]); l.acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(ROOT), str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FileLock(lock_path).acquire(blocking=False)
    finally:
        holder.kill()  # as kill -9: the OS drops the lock with the process
        holder.wait()
    lock = FileLock(lock_path)
    assert lock.acquire(blocking=False)
    lock.release()


def sim(*args, check=True):
    return run(ROOT / "tests" / "platform_sim.py", *args, check=check)


def test_platform_without_posix_extras_trains_resumes_and_predicts(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os, signal, sys\n"
                      "try:\n    import fcntl\n    print('fcntl')\nexcept ImportError:\n    print('no fcntl')\n"
                      "print(hasattr(os, 'fchmod'), hasattr(os, 'link'), hasattr(signal, 'sigtimedwait'))\n")
    assert sim(script).stdout.split("\n")[:2] == ["no fcntl", "False False False"]
    data = make_demo_dataset(tmp_path / "demo", num_train=4, num_val=2, size=64)
    out = tmp_path / "run"
    tiny = ["--data-path", data, "--output-dir", out, "--epochs", "2", "--pretrained-backbone", "none",
            "--base-size", "64", "--crop-size", "64", "-b", "2", "-j", "1", "--device", "cpu"]
    sim("train.py", *tiny, "--stop-after-epochs", "1")
    sim("train.py", *tiny, "--resume", "auto")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1] and all(math.isfinite(m["train_loss"]) for m in lines)
    assert (out / "best.pth").stat().st_nlink == 1  # copied: no hard links on this platform
    assert torch.load(out / "last.pth", weights_only=True)["training"]["next_epoch"] == 2
    image = sorted((data / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("val_*.jpg"))[0]
    sim("predict.py", "--weights", out / "last.pth", "--image", image, "--output", tmp_path / "mask.png",
        "--device", "cpu")
    assert (tmp_path / "mask.png").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
