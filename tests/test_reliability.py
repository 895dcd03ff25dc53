"""Faults a long run meets: signals, kill -9, lost workers, NaN, full or unwritable disks; and exact resume."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from my_dataset import make_demo_dataset
from test_cli import ROOT, TINY, metrics_lines, run
from core.cli import UsageError
from train_utils.run_dir import check_free_space, prepare_output_dir

# Fewer iterations per print, so that signals are honoured quickly.
FAST = [*TINY, "--no-aux"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=6, num_val=2, size=64)


@pytest.fixture
def start_training(demo):
    """Starts a training run in its own process group; whatever is left of it is killed after the test."""
    procs = []

    def start(out, *extra, module=("train.py",)):
        cmd = [sys.executable, *module, "--data-path", str(demo), "--output-dir", str(out), *FAST,
               *map(str, extra)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_for(predicate, timeout=240, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def log_has(out: Path, text: str) -> bool:
    log = out / "train.log"
    return log.exists() and text in log.read_text()


def assert_records_parse(out: Path) -> None:
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line)
    if (out / "results.txt").exists():
        text = (out / "results.txt").read_text()
        assert text.count("[epoch:") == text.count("mean IoU:")


@pytest.mark.parametrize("sig,code,group", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, False),
                                            (signal.SIGTERM, 143, True)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-to-group-with-workers"])
def test_signal_saves_a_resumable_checkpoint(demo, tmp_path, start_training, sig, code, group):
    """The signal goes to the main process (torchrun, an orchestrator) or to the whole process group with the
    DataLoader workers (Ctrl-C in a terminal, kill -- -PGID, a scheduler's time limit)."""
    out = tmp_path / "run"
    proc = start_training(out, "--epochs", "3", *(["-j", "2"] if group else []))
    wait_for(lambda: log_has(out, "epoch 1 [1/"))  # mid-way through epoch 1
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "received" in stderr and "continue with --resume auto" in (out / "train.log").read_text()
    ckpt = torch.load(out / "last.pth", weights_only=True)["training"]
    assert (ckpt["next_epoch"], ckpt["next_step"] > 0) in {(1, True), (2, False)}
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "3", "--resume", "auto", *FAST)
    assert [m["epoch"] for m in metrics_lines(out)] == [0, 1, 2]
    assert_records_parse(out)


def test_kill_9_while_writing_a_checkpoint(demo, tmp_path, start_training):
    out = tmp_path / "run"
    proc = start_training(out, "--epochs", "4")
    # Wait until a checkpoint is being written (its temporary file exists) with an older one in place.
    wait_for(lambda: (out / "last.pth").exists() and any(out.glob(".last.pth.*.tmp")), interval=0.001)
    proc.kill()
    proc.communicate(timeout=60)
    torch.load(out / "last.pth", weights_only=True)  # complete, never half-written
    if (out / "best.pth").exists():
        torch.load(out / "best.pth", weights_only=True)
    assert_records_parse(out)
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "4", "--resume", "auto", *FAST)
    assert [m["epoch"] for m in metrics_lines(out)] == [0, 1, 2, 3]


# Every recipe flag away from its default; the backbone unfreezes exactly where the split run resumes.
RECIPE = ["--optimizer", "adamw", "--freeze-backbone", "1", "--early-stop", "5", "--early-stop-min-delta", "0.001",
          "--loss", "ce+dice", "--dice-weight", "0.5", "--color-jitter", "0.4", "0.4", "0.4", "0.1", "--rotate", "15",
          "--vflip", "0.5", "--gaussian-blur", "0.5"]


def test_exact_resume_at_an_epoch_boundary(demo, tmp_path):
    common = ["--data-path", demo, "--epochs", "2", "--deterministic", "--aux", "-j", "2", *RECIPE]
    run("train.py", *common, "--output-dir", tmp_path / "straight", *TINY[:-2], "--device", "cpu")
    run("train.py", *common, "--output-dir", tmp_path / "split", "--stop-after-epochs", "1", *TINY)
    assert [m["epoch"] for m in metrics_lines(tmp_path / "split")] == [0]
    run("train.py", *common, "--output-dir", tmp_path / "split", "--resume", "auto", *TINY)
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    drop = ("epoch_time_s", "images_per_s")
    strip = lambda lines: [{k: v for k, v in m.items() if k not in drop} for m in lines]  # noqa: E731
    assert strip(metrics_lines(tmp_path / "straight")) == strip(metrics_lines(tmp_path / "split"))


def _worker_pids(torchrun_pid: int):
    result = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


def test_elastic_restart_resumes_after_a_worker_dies(demo, tmp_path, start_training):
    out = tmp_path / "elastic"
    proc = start_training(out, "--epochs", "3", module=(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
        "train_multi_GPU.py"))
    wait_for(lambda: (out / "last.pth").exists() and log_has(out, "epoch 1 [1/"))
    victims = _worker_pids(proc.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "resumed from" in log
    assert [m["epoch"] for m in metrics_lines(out)] == [0, 1, 2]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(demo, tmp_path):
    out = tmp_path / "run"
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "1", *FAST)
    good = torch.load(out / "last.pth", weights_only=True)
    result = run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "2", "--overwrite",
                 "--lr", "1e12", "--warmup-epochs", "0", *FAST, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "NaN or inf at epoch 0, iteration" in result.stderr
    kept = torch.load(out / "last.pth", weights_only=True)
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())


def test_full_disk_fails_before_training(tmp_path):
    with pytest.raises(UsageError, match="GiB free"):
        check_free_space(tmp_path, free_bytes=10 << 20, checkpoint_bytes=300 << 20)
    check_free_space(tmp_path, free_bytes=2 << 30, checkpoint_bytes=300 << 20)


def test_unwritable_or_invalid_output_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = argparse.Namespace(output_dir=str(blocker / "run"), resume=None, overwrite=False)
    with pytest.raises(UsageError, match="not writable"):
        prepare_output_dir(args, 1)
    args.output_dir = str(blocker)
    with pytest.raises(UsageError, match="is a file"):
        prepare_output_dir(args, 1)
    monkeypatch.setattr("shutil.disk_usage", lambda path: types.SimpleNamespace(free=1 << 20))
    args.output_dir = str(tmp_path / "ok")
    with pytest.raises(UsageError, match="free some space"):
        prepare_output_dir(args, 300 << 20)
