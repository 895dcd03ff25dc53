"""The ground floor: runtime policy and flags, the checkpoint format and its older versions, the platform layer
(with a simulated platform that lacks fcntl, os.fchmod, os.link and sigtimedwait), and the layering itself."""
import argparse
import ast
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import imgviz
import pytest
import torch
from torch import nn

from core import runtime
from core.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    describe,
    format_version,
    load_checkpoint,
    parse_checkpoint,
    save_checkpoint,
)
from core.cli import ArgumentParser, parse_with_config
from core.constants import IGNORE_INDEX
from core.platform import FileLock, append_jsonl, append_text, atomic_copy, atomic_write, check_writable, nan_to_none
from core.runtime import add_runtime_flags, resolve_device, resolve_runtime
from data_utils import make_demo_dataset
from my_dataset import VOC_CLASSES_FILE, VOC_PALETTE, load_class_names
from src import build_model, model_from_checkpoint

from conftest import REPO_ROOT, named, run

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "format1_checkpoint.pth"


def runtime_args(*argv: str) -> argparse.Namespace:
    parser = ArgumentParser()
    add_runtime_flags(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ runtime

def test_runtime_defaults_are_exact_fp32():
    rt = resolve_runtime(runtime_args("--device", "cpu"))
    assert (rt.device, rt.amp_dtype, rt.channels_last, rt.compile) == (torch.device("cpu"), None, False, False)


def test_runtime_flags_turn_into_one_policy(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(runtime, "cpu_fp16_native", lambda: True)
    assert resolve_runtime(runtime_args("--device", "cpu", "--amp")).amp_dtype == torch.bfloat16
    rt = resolve_runtime(runtime_args("--device", "cpu", "--amp", "--amp-dtype", "fp16", "--channels-last"))
    assert rt.amp_dtype == torch.float16 and rt.channels_last and rt.memory_format == torch.channels_last
    assert capsys.readouterr().err == ""


def test_amp_on_a_cpu_without_bf16_hardware_stays_fp32_and_says_so(monkeypatch, capsys):
    """Without AVX512-BF16/AMX, oneDNN's bf16 convolutions are hundreds of times slower than fp32: --amp (auto)
    keeps fp32 with one line; a dtype asked for by name is run, with a warning."""
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(runtime, "cpu_fp16_native", lambda: False)
    rt = resolve_runtime(runtime_args("--device", "cpu", "--amp"))
    assert rt.amp_dtype is None and rt.precision == "float32"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bf16 arithmetic in hardware" in err and "running in fp32" in err
    assert resolve_runtime(runtime_args("--device", "cpu", "--amp", "--amp-dtype", "bf16")).amp_dtype == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "far slower than fp32" in err
    assert resolve_runtime(runtime_args("--device", "cpu", "--amp"), local_rank=1).amp_dtype is None
    assert capsys.readouterr().err == ""  # one line per machine, from local rank 0


def test_cpu_bf16_probe_matches_the_cpu_flags():
    """The probe agrees with what the kernel reports for this CPU (x86 Linux: /proc/cpuinfo flags)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or "flags" not in cpuinfo.read_text():
        pytest.skip("no x86 /proc/cpuinfo flags on this machine")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    assert runtime.cpu_bf16_native() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


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

# What each room of the project may import (its own package aside): arrows point down only.
LOWER = {
    "core": set(),
    "src": {"core"},
    "data_utils": {"core"},
    "transforms": {"core"},
    "recording": {"core"},
    "my_dataset": {"core", "data_utils"},
    "inference": {"core", "src", "data_utils"},
    "visualization": {"core", "data_utils", "inference", "recording"},
    "train_utils": {"core", "src", "data_utils", "transforms", "inference", "recording", "visualization"},
    "predict": {"core", "src", "data_utils", "inference", "visualization"},
    "validation": {"core", "src", "data_utils", "transforms", "inference", "recording", "visualization",
                   "train_utils"},
    "train": {"core", "train_utils"},
    "train_multi_GPU": {"core", "train_utils"},
}
PROJECT = {*LOWER, "tools"}


def project_imports(path: Path) -> set:
    """The project's top-level modules that `path` imports (absolute imports; relative ones stay inside)."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    return {name.split(".")[0] for name in names} & PROJECT


def test_every_room_imports_only_the_floors_below_it():
    for room, lower in LOWER.items():
        files = sorted((ROOT / room).rglob("*.py")) if (ROOT / room).is_dir() else [ROOT / f"{room}.py"]
        assert files, room
        for path in files:
            assert project_imports(path) <= lower, (path.relative_to(ROOT).as_posix(), project_imports(path) - lower)
    assert "train_utils" not in project_imports(ROOT / "tools" / "export.py")


def test_running_a_model_loads_no_training_engine():
    code = ("import sys, predict, tools.export, inference, visualization.pictures, visualization.plots; "
            "print([m for m in sys.modules if m.split('.')[0] in ('train_utils', 'validation', 'train')])")
    assert run("-c", code).stdout.strip() == "[]"
    code = ("import sys, recording; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'src', 'data_utils', 'inference', 'train_utils'}))")
    assert run("-c", code).stdout.strip() == "[]"


def test_the_engine_stays_small():
    """train_utils/ keeps the training engine only: what runs a model, draws or records lives in its own room."""
    files = sorted((ROOT / "train_utils").glob("*.py"))
    assert len(files) <= 14 and sum(len(p.read_text().splitlines()) for p in files) <= 2000


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


def test_a_lock_is_not_held_by_the_processes_its_holder_forks(tmp_path):
    """DataLoader workers are forked from the run that holds its directory's lock; killed with kill -9, the
    run must leave the lock free even while its workers live on."""
    holder = subprocess.Popen([sys.executable, "-c", "import multiprocessing as mp, sys, time; "
                               "sys.path.insert(0, sys.argv[1]); from core.platform import FileLock; "
                               "lock = FileLock(sys.argv[2]); lock.acquire(owner='the holder'); "
                               "mp.set_start_method('fork'); c = mp.Process(target=time.sleep, args=(60,)); "
                               "c.start(); print(c.pid, flush=True); time.sleep(60)",
                               str(ROOT), str(tmp_path / "x.lock")], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        lock = FileLock(tmp_path / "x.lock")
        assert not lock.acquire(blocking=False) and lock.owner() == "the holder"
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child is still alive (it sleeps for 60 s)...
        # ...and the lock is free. The child drops its copy in its after-fork hook, which it may not have run
        # yet when the holder prints its pid and is killed; a few seconds are allowed for that, far below 60.
        assert lock.acquire(timeout=15)
        os.kill(child, 0)
        lock.release()
    finally:
        holder.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_check_writable_names_the_flag_and_leaves_nothing(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "record.txt", "--record")
    assert [p.name for p in tmp_path.iterdir()] == []  # neither folders nor probe files left
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="--record .*file is a file, not a folder"):
        check_writable(tmp_path / "file" / "record.txt", "--record")
    with pytest.raises(IsADirectoryError, match="--json .* is a folder"):
        check_writable(tmp_path, "--json")


# ------------------------------------------------------------------------------------ YAML config files

def train_parser() -> argparse.ArgumentParser:
    from train_utils.options import get_args_parser

    return get_args_parser("train")


def parse_config(tmp_path: Path, text, *argv: str) -> argparse.Namespace:
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return parse_with_config(train_parser(), ["--config", str(path), *argv])


# 297 bytes whose aliases expand to 9^9 (387 million) numbers: formatting it for the message ran out of memory.
ALIAS_BOMB = ("[&a [1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
              "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], "
              "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]")


@pytest.mark.parametrize("key", ["epochs", "data-path", "scale-range", "class-weights", "aux"])
def test_yaml_alias_bomb_is_one_short_line(tmp_path, key):
    """In a child process with 2 GiB of address space and 60 s, so that a regression fails the test rather
    than the machine."""
    value = f"[{ALIAS_BOMB}, 1.0]" if key == "scale-range" else ALIAS_BOMB  # a list flag: the bomb as an item
    (tmp_path / "bomb.yaml").write_text(f"{key}: {value}\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "sys.path.insert(0, sys.argv[1]); import argparse; "
            "from core.cli import ArgumentParser, parse_with_config, positive_int, positive_float; "
            "p = ArgumentParser(); p.add_argument('--config'); p.add_argument('--epochs', type=positive_int, default=3); "
            "p.add_argument('--data-path', default='x'); "
            "p.add_argument('--scale-range', type=positive_float, nargs=2, default=[0.5, 2.0]); "
            "p.add_argument('--class-weights', default='none', choices=('none', 'median')); "
            "p.add_argument('--aux', action=argparse.BooleanOptionalAction, default=None); "
            "parse_with_config(p, ['--config', sys.argv[2]])")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "bomb.yaml")],
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and len(lines[0]) < 400, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {tmp_path / 'bomb.yaml'}: {key}: ") and "..." in lines[0]


@pytest.mark.parametrize("text, needles", [
    ("epochs: ~\n", ["epochs: null", "remove the key to keep the default (30)"]),
    ("batch-size: null\n", ["batch-size: null"]),
    ("data-path:\n", ["data-path: null", "'data/VOC'"]),
    ("data-path: 5\n", ["data-path: 5 is not a valid value", "a string"]),
    ("data-path: !!binary aGVsbG8=\n", ["data-path: b'hello'", "a string"]),
    ("output-dir: 2024-01-01\n", ["output-dir: datetime.date(2024, 1, 1)", "quote it"]),
    ("epochs: 5.5\n", ["epochs: 5.5 is not a valid value (expected positive int)"]),
    ("scale-range: [inf, inf]\n", ["scale-range: 'inf'", "finite positive number"]),
    ("scale-range: [.inf, 1.0]\n", ["scale-range: inf", "finite"]),
    ("lr: .nan\n", ["lr: nan", "finite positive number"]),
    ("scale-range: [1.0]\n", ["scale-range: expected 2 values, got 1"]),
    ("epochs: " + "[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
    ("- epochs\n", ["expected a mapping of flag names to values, got list"]),
    ("batch-size: 2\nbatch_size: 4\n", ["'batch_size' sets batch_size a second time"]),
    ("seed: 4294967296\n", ["seed: 4294967296", "0..4294967295"]),
    (b"data-path: caf\xe9\n", ["not UTF-8 text (byte 14)", "save the config file as UTF-8"]),
], ids=["null-int", "null-int-2", "empty-path", "number-path", "binary-path", "date-path", "float-for-int",
        "inf-text", "inf-yaml", "nan", "short-list", "deep", "not-a-mapping", "duplicate", "seed", "latin-1"])
def test_yaml_values_argparse_would_refuse_are_one_line(tmp_path, capsys, text, needles):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(tmp_path, text)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path / 'config.yaml'}: ")
    for needle in needles:
        assert needle in err, err


def test_yaml_paths_expand_home_and_null_keeps_an_unset_default(tmp_path):
    args = parse_config(tmp_path, "data-path: ~/data/VOC\noutput-dir: ~\nlr: ~\nepochs: 7\n")
    assert args.data_path == str(Path.home() / "data" / "VOC") and args.epochs == 7
    assert args.output_dir is None and args.lr is None  # flags whose default is "not given"


@pytest.mark.parametrize("flags", [["--scale-range", "inf", "inf"], ["--lr", "inf"], ["--aux-weight", "nan"]])
def test_non_finite_numbers_on_the_command_line_are_refused(capsys, flags):
    with pytest.raises(SystemExit):
        parse_with_config(train_parser(), flags)
    assert "finite" in capsys.readouterr().err


def test_out_of_memory_from_a_chosen_size_is_one_line(capsys):
    """The CPU allocator's failure for --eval-size 200000 (a typo for 2000), as torch raises it."""
    from core.cli import run_main

    def main(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 120000000000 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argparse.Namespace())
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: out of memory (tried to allocate 111.8 GiB); lower -b")

    def bug(args):
        raise RuntimeError("shape mismatch in a layer")  # not a user error: the traceback stays

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_main(bug, argparse.Namespace())


# ------------------------------------------------------------------------------- atomic files and records

def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_write(path, lambda f: torch.save({"w": torch.ones(3)}, f))

    def crash(f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind


def test_append_text_and_jsonl(tmp_path):
    record = tmp_path / "sub" / "record.txt"
    append_text(record, "first\n")
    append_text(record, "second\n")
    assert record.read_text() == "first\nsecond\n"
    metrics = tmp_path / "metrics.jsonl"
    append_jsonl(metrics, {"epoch": 0, "iou": [0.5, math.nan]})
    append_jsonl(metrics, {"epoch": 1})
    import json

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert lines == [{"epoch": 0, "iou": [0.5, None]}, {"epoch": 1}]
    assert nan_to_none({"a": (math.nan, 1.0)}) == {"a": [None, 1.0]}


def test_atomic_copy_survives_replacing_the_source(tmp_path):
    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, epoch=1), last)
    atomic_copy(last, best)
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, epoch=2), last)  # replaced, not modified: best keeps epoch 1
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


def test_nan_to_none_maps_infinities_too():
    data = {"loss": math.inf, "low": -math.inf, "ok": [1.5, math.nan]}
    assert nan_to_none(data) == {"loss": None, "low": None, "ok": [1.5, None]}


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
