"""Faults a long run meets: signals, kill -9, lost workers, NaN, full or unwritable disks; and exact resume."""
import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from test_cli import ROOT, TINY, metrics_lines, run

from core.checkpoint import Checkpoint, save_checkpoint
from core.cli import UsageError
from core.platform import FileLock
from recording.run_dir import check_free_space, prepare_output_dir, release_run_dir
from recording.run_files import RUN_LOCK
from train_utils.checkpoint import RunState, repair_best

# Fewer iterations per print, so that signals are honoured quickly.
FAST = [*TINY, "--no-aux"]


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
    for proc in procs:  # the whole group: loader workers outlive a main process that a test killed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def wait_for(predicate, proc=None, timeout=240, interval=0.05):
    """Waits until `predicate()` holds; a run `proc` that ends first fails the test at once with its output,
    rather than after the whole timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the awaited state\n{stdout}\n{stderr}")
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
    wait_for(lambda: log_has(out, "epoch 1 [1/"), proc)  # mid-way through epoch 1
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
    wait_for(lambda: (out / "last.pth").exists() and any(out.glob(".last.pth.*.tmp")), proc, interval=0.001)
    proc.kill()
    proc.communicate(timeout=60)
    assert list(out.glob(".last.pth.*.tmp"))  # the killed write's temporary file, orphaned
    torch.load(out / "last.pth", weights_only=True)  # complete, never half-written
    if (out / "best.pth").exists():
        torch.load(out / "best.pth", weights_only=True)
    assert_records_parse(out)
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "4", "--resume", "auto", *FAST)
    assert [m["epoch"] for m in metrics_lines(out)] == [0, 1, 2, 3]
    assert not list(out.glob(".*.tmp")) and "left by an interrupted write" in (out / "train.log").read_text()


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
    wait_for(lambda: (out / "last.pth").exists() and log_has(out, "epoch 1 [1/"), proc)
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


# ------------------------------------------------------------------------- one owner per run directory

def test_a_run_directory_has_one_owner_and_a_killed_owner_frees_it(demo, tmp_path, start_training):
    out = tmp_path / "run"
    first = start_training(out, "--epochs", "2", "-j", "2")
    wait_for(lambda: log_has(out, "epoch 0 [1/"), first)  # training, its two loader workers forked from it
    second = run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "2", "--overwrite", *FAST,
                 check=False)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert f"--output-dir {out} is in use by another run (pid {first.pid} on" in lines[0]
    assert (out / "train.log").read_text().count("command:") == 1  # the second run wrote nothing
    # Windows' path (msvcrt byte locks, simulated over the real lock) is refused too.
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nsys.path.insert(0, os.getcwd())\nfrom core.platform import FileLock\n"
                     "lock = FileLock(sys.argv[1])\nprint(lock.acquire(blocking=False), lock.owner())\n")
    result = run(ROOT / "tests" / "platform_sim.py", probe, out / RUN_LOCK)
    assert result.stdout.startswith(f"False pid {first.pid} on")
    first.kill()  # kill -9 of the main process; its loader workers live on for a few seconds
    first.wait()
    os.killpg(first.pid, 0)  # raises if the whole group (the workers) were already gone
    lock = FileLock(out / RUN_LOCK)
    assert lock.acquire(blocking=False)  # free at once: the workers do not hold it
    lock.release()


# --------------------------------------------------------------------------- best.pth and temporaries

def test_resume_repairs_best_pth_after_a_kill_between_last_and_best(demo, tmp_path):
    out = tmp_path / "run"
    killed = run(ROOT / "tests" / "fault_sim.py", "kill-before-copy", "best.pth", "train.py", "--data-path", demo,
                 "--output-dir", out, "--epochs", "1", *FAST, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Epoch 0 was the best (the first evaluation always is), but best.pth was never linked.
    assert (out / "last.pth").is_file() and not (out / "best.pth").exists()
    assert torch.load(out / "last.pth", weights_only=True)["training"]["best_epoch"] == 0
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "1", "--resume", "auto", *FAST)
    assert os.path.samefile(out / "best.pth", out / "last.pth")
    assert "best.pth was missing, but the best epoch is 0" in (out / "train.log").read_text()


def _tiny_checkpoint(path: Path, epoch: int, miou: float, state: RunState) -> None:
    training = {"next_epoch": state.next_epoch, "next_step": state.next_step, "best_miou": state.best_miou,
                "best_epoch": state.best_epoch}
    save_checkpoint(Checkpoint({"w": torch.full((2,), float(epoch))}, epoch=epoch, metrics={"mean_iou": miou},
                               training=training), path)


def test_repair_best_brings_a_stale_best_pth_forward_and_leaves_a_good_one(tmp_path, caplog):
    log = logging.getLogger("test.repair")
    # Epoch 1 beat epoch 0 and last.pth holds it, but best.pth still holds epoch 0.
    state = RunState(next_epoch=2, best_miou=0.5, best_epoch=1)
    _tiny_checkpoint(tmp_path / "last.pth", 1, 0.5, state)
    _tiny_checkpoint(tmp_path / "best.pth", 0, 0.25, RunState(1, 0, (0.0, 0), 0.25, 0))
    repair_best(tmp_path, tmp_path / "last.pth", state, log)
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 1
    # A good best.pth (a copy, as on filesystems without hard links) is left alone, and so is a best.pth
    # whose epoch is older than last.pth's.
    later = RunState(next_epoch=3, best_miou=0.5, best_epoch=1)
    _tiny_checkpoint(tmp_path / "last.pth", 2, 0.4, later)
    before = (tmp_path / "best.pth").stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.repair"):
        repair_best(tmp_path, tmp_path / "last.pth", later, log)
    assert (tmp_path / "best.pth").stat().st_ino == before and not caplog.records
    # The best epoch's weights gone (best.pth deleted by hand): said, not invented.
    (tmp_path / "best.pth").unlink()
    with caplog.at_level(logging.WARNING, logger="test.repair"):
        repair_best(tmp_path, tmp_path / "last.pth", later, log)
    assert not (tmp_path / "best.pth").exists() and "weights are gone" in caplog.text


# --------------------------------------------------------------------------------------- full disks

def _run_args(out: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(output_dir=str(out), resume=kw.get("resume"), overwrite=kw.get("overwrite", False))


def test_free_space_counts_the_checkpoints_a_resume_replaces(tmp_path, monkeypatch):
    """The case of the report: stopped with --stop-after-epochs on a nearly full volume, 0.63 GiB free,
    checkpoints of 0.25 GiB. A resume replaces last.pth and best.pth, so it needs room for one more."""
    gib = 2 ** 30
    monkeypatch.setattr("shutil.disk_usage", lambda path: types.SimpleNamespace(free=int(0.63 * gib)))
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(UsageError, match="free some space"):  # a new run needs 3 x 0.25 + 0.06 GiB
        prepare_output_dir(_run_args(out), gib // 4)
    release_run_dir(out)
    for name in ("last.pth", "best.pth"):
        with open(out / name, "wb") as f:  # sparse files of the checkpoint's size
            f.truncate(gib // 4)
    assert prepare_output_dir(_run_args(out, resume="auto"), gib // 4)[0] == out
    release_run_dir(out)
    (out / "best.pth").unlink()
    os.link(out / "last.pth", out / "best.pth")  # one file under two names: its room counts once
    assert prepare_output_dir(_run_args(out, resume="auto"), gib // 4)[0] == out
    release_run_dir(out)
    monkeypatch.setattr("shutil.disk_usage", lambda path: types.SimpleNamespace(free=int(0.4 * gib)))
    with pytest.raises(UsageError, match="0.56 GiB more"):
        prepare_output_dir(_run_args(out, resume="auto"), gib // 4)
    release_run_dir(out)


def link_run(src: Path, dst: Path) -> Path:
    """A copy of the run directory `src` to resume or damage: checkpoints hard-linked (a run replaces them,
    never edits them), the small files copied (train.log is appended to in place)."""
    dst.mkdir()
    for path in src.iterdir():
        if path.suffix == ".pth":
            os.link(path, dst / path.name)
        elif path.is_file():
            shutil.copy2(path, dst / path.name)
    return dst


def test_a_disk_filling_up_during_a_checkpoint_write_is_one_line(demo, trained, tmp_path):
    out = link_run(trained, tmp_path / "run")
    result = run(ROOT / "tests" / "fault_sim.py", "max-file-size", 20 << 20, "train.py", "--data-path", demo,
                 "--output-dir", out, "--epochs", "3", "--resume", "auto", *TINY, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1] == (f"error: could not write {out / 'last.pth'} (File too large); the previous checkpoint is "
                         f"intact: free space and continue with --resume auto")
    assert os.path.samefile(out / "last.pth", trained / "last.pth")  # never replaced
    assert not list(out.glob(".*.tmp"))
