"""tools/benchmark.py as a user runs it: one tiny CPU run per mode, so the tool cannot rot; that it times the
library's own code (a change to the training step shows up in its numbers); and bad input.

No assertion is made on speed: these runs are far too small, and CI machines too noisy, for that. One mode runs
as a subprocess (the script as CI starts it); the others call main() in this process, which saves the
interpreter and torch start-up.
"""
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import my_dataset
import train_multi_GPU
import train_utils.train_eval as train_eval
from core.runtime import resolve_runtime
from tools.benchlib.flops import datasheet_peak
from tools.benchlib.summary import summary

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "benchmark.py"
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
# torchvision's published cost of fcn_resnet50 (aux head included) at 520x520, in multiply-adds.
TV_GMACS_520 = 152.717


@pytest.fixture(scope="module")
def tool():
    """The tool imported in this process."""
    spec = importlib.util.spec_from_file_location("benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(tool, tmp_path, *args):
    """main() in this process, as `python tools/benchmark.py --device cpu --json FILE ARGS` runs it."""
    out = tmp_path / "bench.json"
    assert tool.main(tool.parse_args(["--device", "cpu", "--json", str(out), *map(str, args)])) == 0
    return json.loads(out.read_text())


def check_pair(data):
    """Keys and sane values common to train, eval and infer on the CPU."""
    assert set(data) >= {"mode", "model", "command", "environment", "protocol", "variants", "ratio"}
    assert data["environment"]["torch"] == torch.__version__
    assert {"timed", "warmup", "inputs", "baseline", "ours", "memory", "flops", "mfu"} <= set(data["protocol"])
    base, ours = data["variants"]["baseline"], data["variants"]["ours"]
    for v in (base, ours):
        assert v["images_per_s"] > 0
        assert v["images_per_s"] == pytest.approx(v["timed_images"] / v["timed_s"])
        assert all(r > 0 for r in v["round_images_per_s"])
        assert v["peak_memory_mib"] is None and v["mfu"] is None and v["peak_tflops"] is None  # CPU: n/a
        assert v["gflops_per_image"] > 0
    ratio = data["ratio"]
    assert ratio["images_per_s"] == pytest.approx(ours["images_per_s"] / base["images_per_s"])
    per_round = [o / b for o, b in zip(ours["round_images_per_s"], base["round_images_per_s"])]
    assert ratio["round_images_per_s"] == pytest.approx(per_round)
    assert min(per_round) <= ratio["median_round_images_per_s"] <= max(per_round)
    assert base["settings"] == {**base["settings"], "dtype": "float32", "memory_format": "contiguous",
                                "compile": False}
    return base, ours


def test_train(tool, tmp_path, capsys):
    data = bench(tool, tmp_path, "--mode", "train", "--size", "64", "--batch-size", "2", "--warmup", "1",
                 "--iters", "2", "--rounds", "2")
    base, ours = check_pair(data)
    assert base["timed_images"] == ours["timed_images"] == 4
    assert len(base["round_images_per_s"]) == 2
    # 3 x forward; 520 and 64 are both multiples of 8, so every feature map scales exactly by (64/520)^2.
    expected = 3 * 2 * TV_GMACS_520 * (64 / 520) ** 2
    assert base["gflops_per_image"] == pytest.approx(expected, rel=1e-3)
    assert base["final_loss"] > 0 and ours["final_loss"] > 0
    assert "n/a (CPU)" in capsys.readouterr().out


def test_train_times_the_library_training_step(tool, monkeypatch):
    """Ours is train_eval.train_batch, not a copy of it: slowing train_eval.train_step slows what is timed."""
    calls, real, delay = [], train_eval.train_step, 0.25

    def slow_step(*args, **kwargs):
        calls.append(args[2].shape)  # the images of the step
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_eval, "train_step", slow_step)
    args = tool.resolve_args(tool.parse_args(["--mode", "train", "--device", "cpu", "--size", "32", "-b", "1",
                                              "--warmup", "1", "--iters", "2", "--rounds", "1"]))
    result = tool.MODES["train"](args, resolve_runtime(args))
    assert calls == [(1, 3, 32, 32)] * 3  # 1 warm-up and 2 timed steps of ours; the baseline has its own step
    assert result["variants"]["ours"]["timed_s"] >= 2 * delay


def test_eval(tool, tmp_path, capsys):
    sizes = [(48, 64), (64, 48)]
    data = bench(tool, tmp_path, "--mode", "eval", "--image-sizes", *(f"{h}x{w}" for h, w in sizes),
                 "--num-images", "4", "--batch-size", "2", "--warmup", "0", "--iters", "1")
    base, ours = check_pair(data)
    assert base["timed_images"] == 4 and base["settings"]["batch_size"] == 1 and ours["settings"]["batch_size"] == 2
    check = data["check"]
    assert check["fp32_equal"] and check["fp32_moved_pixels"] == 0
    assert check["baseline_matrix"] == check["ours_fp32_matrix"]
    total = sum(h * w for h, w in sizes) * 2
    # The generated masks mark about 5% of the pixels 255, which neither matrix counts.
    assert 0.8 * total < check["pixels_counted"] < total
    assert sum(map(sum, check["baseline_matrix"])) == check["pixels_counted"]
    assert len(check["baseline_matrix"]) == 21
    assert "EQUAL" in capsys.readouterr().out


def test_infer_as_a_subprocess(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(TOOL), "--device", "cpu", "--json", str(out), "--mode", "infer",
                             "--size", "64", "--warmup", "1", "--iters", "3"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    base, ours = check_pair(data)
    assert ours["settings"]["memory_format"] == "contiguous" and ours["settings"]["dtype"] == "float32"  # CPU defaults
    ratio = data["ratio"]
    assert ratio["latency_mean"] == pytest.approx(ours["latency_ms_mean"] / base["latency_ms_mean"])
    assert ratio["latency_median"] == pytest.approx(ours["latency_ms_median"] / base["latency_ms_median"])
    assert base["images_per_s"] == pytest.approx(1000 / base["latency_ms_mean"])
    check = data["check"]
    assert 0 <= check["argmax_agreement"] <= 1
    # In fp32 the same function, aux head dropped: rounding at most.
    assert check["argmax_agreement_fp32"] >= 0.99
    assert "argmax agreement" in result.stdout


def test_data_times_three_pipelines_and_checks_the_decoders(tool, tmp_path):
    data = bench(tool, tmp_path, "--mode", "data", "--workers", "0", "1", "--num-images", "4", "--image-sizes",
                 "48x64", "--size", "32", "--base-size", "40", "--batch-size", "2", "--warmup", "1", "--iters", "2",
                 "--rounds", "1", "--gpu-step-rate", "10")
    assert data["variants"] is None and "torchvision's reference" in data["protocol"]["baseline"]
    rows = data["loader"]
    assert [r["workers"] for r in rows] == [0, 1]
    for r in rows:
        assert r["timed_batches"] == 2 and set(r["variants"]) == {"baseline", "pil", "ours"}
        for v in r["variants"].values():
            assert v["images_per_s"] > 0
            assert v["images_per_s_per_worker"] == pytest.approx(v["images_per_s"] / max(r["workers"], 1))
        ours = r["variants"]["ours"]["images_per_s"]
        assert r["ratio"]["ours_vs_baseline"] == pytest.approx(ours / r["variants"]["baseline"]["images_per_s"])
        rounds = [o / b for o, b in zip(r["variants"]["ours"]["round_images_per_s"],
                                        r["variants"]["baseline"]["round_images_per_s"])]
        assert r["ratio"]["round_ours_vs_baseline"] == pytest.approx(rounds)
        assert r["gpu_ratio"] == pytest.approx(ours / 10) and r["enough_for_gpu"] == (r["gpu_ratio"] >= 1.5)
    check = data["check"]
    assert check["files"] == 8 and check["masks_equal"] and check["batch_masks_equal"]
    assert check["images_within_rounding"] and check["images_max_abs_diff"] <= 2


def test_predict_folder_against_one_at_a_time(tool, tmp_path):
    data = bench(tool, tmp_path, "--mode", "predict", "--num-images", "5", "--image-sizes", "40x48", "48x40",
                 "--batch-size", "2", "--workers", "1", "--warmup", "1", "--num-classes", "3",
                 *(["--backends", "onnxruntime", "--int8"] if HAS_ORT else []))
    base, ours = data["variants"]["baseline"], data["variants"]["ours"]
    for v in (base, ours):
        assert v["timed_images"] == 5 and v["images_per_s"] == pytest.approx(5 / v["timed_s"])
    assert data["ratio"]["images_per_s"] == pytest.approx(ours["images_per_s"] / base["images_per_s"])
    assert ours["settings"]["batch_size"] == 2 and ours["settings"]["workers"] == 1
    check = data["check"]
    assert check["masks_equal"] and check["differing_pixels"] == 0 and check["files"] == 5
    assert check["pixels"] == 3 * 40 * 48 + 2 * 48 * 40
    # the variants (test extras): calibrated at the first --image-sizes, as --mode predict has no --size
    assert not HAS_ORT or list(data["backends"]) == ["onnxruntime", "onnxruntime int8"]
    assert not HAS_ORT or data["backends"]["onnxruntime"]["agreement_with_fp32_torch"] >= 0.999


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("openvino") is None,
                    reason="the backend variants need onnxruntime and openvino (pip install onnxruntime openvino)")
def test_infer_backends_and_int8_side_by_side(tool, tmp_path, capsys):
    data = bench(tool, tmp_path, "--mode", "infer", "--size", "64", "--warmup", "1", "--iters", "2", "--rounds", "2",
                 "--num-classes", "3", "--backends", "onnxruntime", "openvino", "--int8", "--pt2e-int8")
    names = ["onnxruntime", "openvino", "onnxruntime int8", "openvino int8", "torch pt2e int8"]
    assert list(data["backends"]) == names
    base = data["variants"]["baseline"]
    for name in names:
        v, b = data["variants"][name], data["backends"][name]
        assert len(v["round_images_per_s"]) == 2 and v["peak_rss_mib"] is not None
        assert b["ratio"]["latency_median"] == pytest.approx(v["latency_ms_median"] / base["latency_ms_median"])
        assert 0 <= b["agreement_with_fp32_torch"] <= 1
    assert min(data["backends"][n]["agreement_with_fp32_torch"] for n in names[:2]) >= 0.999  # fp32 runtimes
    out = capsys.readouterr().out
    assert "variants side by side" in out and "onnxruntime int8" in out and "torch pt2e int8" in out
    assert "X86InductorQuantizer" in data["protocol"]["pt2e_int8"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "foo"], "invalid choice"),
    (["--iters", "0"], "must be a positive integer"),
    (["--mode", "eval", "--image-sizes", "375by500"], "HEIGHTxWIDTH"),
])
def test_bad_flags(tool, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--mode", "train", "--device", "cpu", "--gpu-step-rate", "100"], "--gpu-step-rate does not apply"),
    (["--mode", "eval", "--size", "64"], "--size does not apply"),
    (["--mode", "predict", "--workers", "1", "2"], "one --workers count"),
    (["--mode", "train", "--model", "fcn8s"], "--model fcn8s"),
    (["--mode", "train", "--backends", "onnxruntime"], "--backends does not apply to --mode train"),
    (["--mode", "infer", "--int8-model", "x.onnx"], "pass that checkpoint as --weights"),
    (["--mode", "predict", "--pt2e-int8"], "--pt2e-int8 does not apply to --mode predict"),
    (["--mode", "data", "--device", "cpu", "--num-images", "2"], "raise --num-images"),
    pytest.param(["--mode", "infer", "--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_user_errors_are_one_line(tool, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        tool.run_main(tool.main, tool.parse_args(args))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("name, kind, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16/fp16", 989.4),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
    ("NVIDIA H100 PCIe", "bf16/fp16", 756.0),
    ("NVIDIA H200", "bf16/fp16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bf16/fp16", 312.0),
    ("NVIDIA L4", "tf32", 60.0),
    ("NVIDIA L40S", "bf16/fp16", 362.1),
    ("NVIDIA A10G", "bf16/fp16", None),  # not the A10: its peak gets measured
    ("NVIDIA H100 NVL", "bf16/fp16", None),
    ("NVIDIA A100-SXM4-80GB", "fp32", None),
])
def test_datasheet_peaks(name, kind, peak):
    assert datasheet_peak(name, kind) == peak


def test_gpu_check_script_runs_valid_commands(tool, tmp_path):
    """tools/gpu_check.sh cannot run here (no GPU): its dry run's commands must parse, and cover every mode."""
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path)], cwd=ROOT, text=True,
                            capture_output=True, timeout=120, env={**os.environ, "DRY_RUN": "1",
                                                                   "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[4:]) for line in result.stdout.splitlines() if line.startswith("RUN ")]
    modes = []
    for argv in commands:
        if argv[1] == "tools/benchmark.py":
            modes.append(tool.resolve_args(tool.parse_args(argv[2:])).mode)
        elif argv[1] == "my_dataset.py":
            assert my_dataset.parse_args(argv[2:]).command == "demo"
        else:
            assert argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in argv
            script = argv.index("train_multi_GPU.py")
            assert train_multi_GPU.parse_args(argv[script + 1:]).epochs == 1
    assert sorted(modes) == ["data", "eval", "infer", "predict", "train", "train"]


def test_gpu_summary_judges_the_goals(tmp_path):
    """The verdicts of tools.benchlib.summary on hand-made results: met and missed goals, a failed check."""
    files = {"train": {"ratio": {"images_per_s": 2.4, "peak_memory": 0.7}},
             "eval": {"ratio": {"images_per_s": 3.5}, "check": {"fp32_equal": True}},
             "predict": {"ratio": {"images_per_s": 2.9}, "check": {"masks_equal": False}},
             "data": {"loader": [{"workers": 1, "gpu_ratio": 0.1, "ratio": {"ours_vs_baseline": 1.6}},
                                 {"workers": 16, "gpu_ratio": 1.7, "ratio": {"ours_vs_baseline": 1.4}}],
                      "check": {"masks_equal": True, "images_within_rounding": True}}}
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    text, ok = summary(tmp_path)
    assert not ok and "| masks identical to one at a time | NO |" in text
    assert "| train images/s, ours / baseline | 2.4 | >= 2 | met |" in text
    assert "| train peak memory, ours / baseline | 0.7 | <= 0.6 | missed |" in text
    assert "| folder prediction images/s, ours / one at a time | 2.9 | >= 3 | missed |" in text
    assert "| loader images/s with 16 workers / GPU step rate | 1.7 | >= 1.5 | met |" in text
    assert "| loader images/s per worker, ours / torchvision's pipeline | 1.6 | >= 1.5 | met |" in text
    assert "| infer latency, ours / baseline | missing |" in text
