"""--backend onnxruntime|openvino (inference/backends.py), the export cache, the parity check and int8.

The masks of each backend are compared with the masks of the torch model (predict.py --backend torch) file by
file; the cache and int8 tests read the files and records the scripts write, as a user would.
"""
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference.export as export_module
import predict
import validation
from core.checkpoint import Checkpoint, save_checkpoint
from data_utils import build_dataset
from inference import ParityChecked, PixelAgreement
from inference.export import cached_export, file_sha256, read_metadata
from src import build_model, model_from_checkpoint
from src.fuse import prepare_for_inference

from conftest import run

AGREEMENT = 0.999  # share of equal mask pixels required of an fp32 backend (random weights: near-tied logits)


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def needs(backend: str):
    module = "openvino" if backend == "openvino" else "onnxruntime"
    return pytest.mark.skipif(not have(module) or not have("onnxscript"),
                              reason=f"--backend {backend} needs {module} (pip install {module} onnx onnxscript)")


def save_net(path: Path, num_classes: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model("fcn_resnet50", num_classes, aux=True, pretrained_backbone=None)
    with torch.no_grad():  # non-trivial BN statistics, so that folding them is tested
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    save_checkpoint(Checkpoint(model.state_dict(), model_name="fcn_resnet50", num_classes=num_classes,
                               class_names=[f"c{i}" for i in range(num_classes)], aux=True), path)
    return path


@pytest.fixture(scope="module")
def classes(demo) -> int:
    return build_dataset("voc", demo, "val").num_classes


@pytest.fixture(scope="module")
def weights(tmp_path_factory, classes) -> Path:
    """A random fcn_resnet50 checkpoint with as many classes as the demo data; its export is cached beside it."""
    return save_net(tmp_path_factory.mktemp("weights") / "net.pth", classes, seed=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (64, 80), "b.png": (72, 64), "c.png": (64, 80)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def predict_masks(weights: Path, photos: Path, out: Path, *flags: str) -> dict:
    args = predict.parse_args(["--weights", str(weights), "--image", str(photos), "--output", str(out),
                               "--device", "cpu", "-j", "0", "-b", "2", *flags])
    assert predict.main(args) == 0
    return {p.name: np.array(Image.open(p)) for p in sorted(out.iterdir())}


SLIDE_MS_FLIP = ["--mode", "slide", "--window", "48", "--stride", "32", "--scales", "0.75", "1.0", "--flip"]


@pytest.mark.parametrize("backend, mode", [
    pytest.param("onnxruntime", [], marks=needs("onnxruntime")),
    pytest.param("openvino", [], marks=needs("openvino")),
    # windows in batches of up to --chunk and scaled images: a dynamic batch, height and width
    pytest.param("onnxruntime", SLIDE_MS_FLIP, marks=needs("onnxruntime")),
], ids=["onnxruntime-whole", "openvino-whole", "onnxruntime-slide-ms-flip"])
def test_backend_masks_equal_torch(backend, mode, weights, photos, tmp_path):
    expected = predict_masks(weights, photos, tmp_path / "torch", *mode)
    got = predict_masks(weights, photos, tmp_path / backend, "--backend", backend, *mode)
    assert list(got) == list(expected) == ["a.png", "b.png", "c.png"]  # the same files, the same names
    same = sum(int((got[k] == expected[k]).sum()) for k in got)
    assert same / sum(m.size for m in expected.values()) >= AGREEMENT


@needs("onnxruntime")
def test_cache_is_reused_and_invalidated_when_the_checkpoint_changes(weights, tmp_path, classes):
    ckpt = tmp_path / weights.name  # a copy, with the export the other tests cached next to it (if any)
    for path in (weights, *weights.parent.glob(f"{weights.stem}.*.onnx")):
        shutil.copy(path, tmp_path / path.name)

    def export():
        loaded = model_from_checkpoint(ckpt)
        return cached_export(prepare_for_inference(loaded.model, torch.device("cpu"), False, False), ckpt, loaded)

    first, _ = export()
    assert first.parent == tmp_path and first.name.startswith(f"{weights.stem}.")
    stamp = first.stat().st_mtime_ns
    again, reused = export()
    assert reused and again == first and first.stat().st_mtime_ns == stamp
    save_net(ckpt, classes, seed=2)  # retrained: same file name, other weights
    new, reused = export()
    assert not reused and new != first and not first.exists()
    assert read_metadata(new)["checkpoint_sha256"] == file_sha256(ckpt)


@needs("onnxruntime")
def test_a_backend_beyond_the_tolerance_is_stopped_before_writing(weights, photos, tmp_path):
    # A tolerance no float32 runtime meets stands in for a wrong export (see the fake backend below).
    argv = ["--weights", str(weights), "--image", str(photos), "--output", str(tmp_path / "out"), "--device", "cpu",
            "-j", "0", "--backend", "onnxruntime", "--parity-tolerance", "1e-12"]
    with pytest.raises(ValueError, match=r"differ from torch's by .* of their scale on the first batch "
                                         r"\(tolerance 1e-12\)"):
        predict.main(predict.parse_args(argv))
    assert not (tmp_path / "out").exists()
    assert predict.main(predict.parse_args(argv + ["--no-parity-check"])) == 0
    assert len(list((tmp_path / "out").iterdir())) == 3


class ConvBN(torch.nn.Module):
    """conv + BN returning {"out"}, as the segmentation models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        with torch.no_grad():
            self.body[1].running_mean.uniform_(-1, 1)
            self.body[1].running_var.uniform_(0.5, 2)

    def forward(self, x):
        return {"out": self.body(x)}


def test_batchnorm_folding_before_export_is_checked(monkeypatch):
    torch.manual_seed(0)
    model, x = ConvBN().eval(), torch.randn(2, 3, 8, 8)
    folded = export_module.folded_copy(model, x)
    assert isinstance(folded.body[1], torch.nn.Identity)  # folded, and the original left as it was
    assert isinstance(model.body[1], torch.nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["out"], model(x)["out"], rtol=1e-5, atol=1e-5)

    def wrong_fold(m):  # a fold that forgets the BN's shift
        m.body[1] = torch.nn.Identity()
        return m

    monkeypatch.setattr(export_module, "fold_batchnorm", wrong_fold)
    with pytest.raises(ValueError, match="BatchNorm folding moved the logits by"):
        export_module.folded_copy(model, x)


class Offset(torch.nn.Module):
    """A fake backend: the reference's logits (10 x) plus `offset`."""

    name, path = "fake", Path("fake.onnx")

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return {"out": x * 10 + self.offset}


def test_parity_check_runs_once_and_measures_relative_error():
    calls = []

    def reference(x):
        calls.append(1)
        return {"out": x * 10}

    x = torch.ones(1, 3, 4, 4)
    checked = ParityChecked(Offset(1e-4), reference, 1e-4)  # 1e-5 of a logit scale of 10
    checked(x)
    checked(x)
    assert calls == [1] and checked.error == pytest.approx(1e-5, rel=1e-2)
    with pytest.raises(ValueError, match=r"--backend fake \(fake.onnx\): .* by 0.0002 of their scale"):
        ParityChecked(Offset(2e-3), reference, 1e-4)(x)


def test_pixel_agreement_counts_equal_labels_across_two_runs():
    agreement = PixelAgreement()
    first, second = agreement.hook(0), agreement.hook(1)
    a = [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 1, 1]])]
    b = [torch.tensor([[0, 1], [3, 3]]), torch.tensor([[0, 0, 1]])]
    for preds in a:
        first(None, None, preds)
    for preds in b:
        second(None, None, preds)
    assert agreement.total(lambda x: [x]) == (4, 7)  # 3 of 4, then 1 of 3


@needs("onnxruntime")
def test_int8_end_to_end(demo, weights, photos, tmp_path):
    out = tmp_path / "net.int8.onnx"
    result = run("tools/quantize.py", "--weights", weights, "--dataset", "voc", "--data-path", demo,
                 "--num-images", "4", "--output", out)
    assert out.is_file() and "wrote" in result.stdout
    info = read_metadata(out)
    assert info["quantization"].startswith("int8 static QDQ") and "4 images of voc train" in info["quantization"]
    assert info["checkpoint_sha256"] == file_sha256(weights)
    record = tmp_path / "record.txt"
    args = validation.parse_args(["--weights", str(weights), "--dataset", "voc", "--data-path", str(demo),
                                  "--device", "cpu", "-j", "0", "--record", str(record), "--backend",
                                  "onnxruntime", "--onnx-model", str(out), "--no-parity-check"])
    assert validation.main(args) == 0
    text = record.read_text()
    assert "fp32 torch" in text and "int8 onnxruntime" in text  # the two columns of the comparison
    line = re.search(r"int8 accuracy: mean IoU ([\d.]+) \(fp32 torch\) -> ([\d.]+) \(int8 onnxruntime\), "
                     r"([+-][\d.]+) points; pixel agreement with fp32 ([\d.]+)% of (\d+) pixels", text)
    assert line, text
    fp32, int8, lost = (float(line.group(i)) for i in (1, 2, 3))
    assert lost == pytest.approx(int8 - fp32, abs=0.11) and int(line.group(5)) == 3 * 64 * 64
    masks = predict_masks(weights, photos, tmp_path / "masks", "--backend", "onnxruntime", "--onnx-model", str(out),
                          "--no-parity-check")
    assert list(masks) == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("flags, needle", [
    (["--backend", "onnxruntime", "--amp"], "--amp is torch's"),
    (["--backend", "onnxruntime", "--compile"], "--compile is torch's"),
    (["--onnx-model", "x.onnx"], "--onnx-model needs --backend onnxruntime"),
    (["--backend", "openvino", "--onnx-model", "missing.onnx"], "--onnx-model missing.onnx: no such file"),
], ids=["amp", "compile", "onnx-model-without-backend", "missing-onnx-model"])
def test_what_a_backend_cannot_do_is_one_line(weights, photos, tmp_path, flags, needle):
    result = run("predict.py", "--weights", weights, "--image", photos, "--output", tmp_path / "o", "--device",
                 "cpu", *flags, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_extra_says_what_to_install(weights, photos, tmp_path):
    (tmp_path / "block" / "openvino").mkdir(parents=True)
    (tmp_path / "block" / "openvino" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "block"), os.environ.get("PYTHONPATH")]))}
    result = run("predict.py", "--weights", weights, "--image", photos, "--output", tmp_path / "o", "--device",
                 "cpu", "--backend", "openvino", check=False, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "pip install openvino" in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


SIGNAL_STACK = """
import ctypes, sys
from core.platform import _StackT
from inference.backends import open_backend
import torch

def signal_stack():
    stack = _StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return [stack.ss_sp, stack.ss_flags, stack.ss_size]

before = signal_stack()
for backend in ("onnxruntime", "openvino"):  # the order the benchmark runs them in, where the crash was seen
    model = open_backend(backend, sys.argv[1])
    model(torch.rand(1, 3, 64, 64))
print(before == signal_stack(), before, signal_stack())
"""


@needs("openvino")
def test_openvino_leaves_the_signal_stack_as_it_was(weights, tmp_path):
    """OpenVINO's CPU plugin installs a small alternate signal stack when it compiles a model; once AMX state
    had grown the signal frame, the next SIGCHLD of a DataLoader worker killed the process with SIGSEGV.
    Checked in a plain interpreter: pytest's faulthandler has a signal stack of its own."""
    import subprocess
    import sys

    loaded = model_from_checkpoint(weights)
    path, _ = cached_export(prepare_for_inference(loaded.model, torch.device("cpu"), False, False),
                            weights, loaded)  # the export the other tests cached beside the weights
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", SIGNAL_STACK, str(path)], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("True"), result.stdout + result.stderr
