"""tools/export.py: TorchScript and ONNX exports match an independently loaded PyTorch model at another size.

The export runs as a user runs it (a subprocess); the references are fresh models loaded from the
checkpoint here, with the aux head kept, so the tool's loading and aux stripping are checked too.
"""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from core.constants import IMAGENET_MEAN, IMAGENET_STD
from core.palette import VOC_PALETTE
from inference.export import native_opset
from src import build_model

from conftest import run

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "export.py"
SIZE = 64  # traced at 64x64; checked below at sizes that differ in both height and width
# TorchScript is deprecated in favour of torch.export, but it is still the format asked for here.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


def load_tool():
    spec = importlib.util.spec_from_file_location("export_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args: str, block_onnx: Path = None) -> subprocess.CompletedProcess:
    """Runs tools/export.py; block_onnx: a folder whose fake `onnx` package fails to import."""
    env = None
    if block_onnx is not None:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(block_onnx), os.environ.get("PYTHONPATH")]))}
    return run(TOOL, *args, check=False, env=env)


def onnx_blocker(folder: Path) -> Path:
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    (folder / "onnx" / "__init__.py").write_text("raise ImportError('onnx hidden by the test')\n")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("fcn_resnet50", num_classes=3, aux=True)
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode (not batch statistics) is checked
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    torch.save({"model": model.state_dict(), "model_name": "fcn_resnet50", "num_classes": 3, "aux": True,
                "class_names": ["background", "cat", "dog"]}, path)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint):
    """A fresh model loaded from the checkpoint with plain load_state_dict, aux head kept, eval mode."""
    model = build_model("fcn_resnet50", num_classes=3, aux=True)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return model.eval()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = run_tool("--weights", str(checkpoint), "--output-dir", str(out), "--size", str(SIZE))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout, result.stderr


def test_torchscript_matches_pytorch_at_another_size(exported, reference):
    out, stdout, _ = exported
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    torch.manual_seed(1)
    for size in ((SIZE + 8, SIZE + 40), (SIZE - 16, SIZE + 24)):
        image = torch.randn(1, 3, *size)
        # Unoptimised execution: the same graph without the JIT's slow first-run profiling.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            expected = reference(image)["out"]
            got = scripted(image)
        assert isinstance(got, torch.Tensor) and got.shape == (1, 3, *size)  # a tensor, not a dict
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "torchscript: max abs diff" in stdout and "ok" in stdout


def test_exported_model_has_no_aux_head(exported):
    scripted = torch.jit.load(str(Path(exported[0]) / "model.torchscript.pt"))
    names = [name for name, _ in scripted.named_parameters()]
    assert names and not any("aux_classifier" in name for name in names)
    assert any("classifier.4.weight" in name for name in names)


def test_onnx_matches_pytorch_at_another_size(exported, reference):
    import onnx  # requirements-test.txt: a broken install must fail here, not skip
    out, stdout, _ = exported
    path = out / "model.onnx"
    onnx.checker.check_model(str(path))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    # batch, height and width are free: folder prediction and sliding windows send batches of any size
    assert dims[1].dim_value == 3 and not any(dims[i].dim_value for i in (0, 2, 3))
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(3, 3, SIZE + 24, SIZE - 8)
    with torch.no_grad():
        expected = reference(image)["out"].numpy()
    got = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    assert got.shape == expected.shape
    # Another runtime's float32 kernels: agreement to 1e-4 of the logit scale, as the tool requires.
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert "onnx: max abs diff" in stdout


def test_onnx_is_written_natively_with_its_metadata(exported):
    """At the opset torch writes natively there is no conversion warning or fallback line; the file says what
    its input is and what its classes are called, for users of the bare ONNX model."""

    import onnx

    out, stdout, stderr = exported
    assert "operator set version" not in stderr and "version conversion" not in stderr.lower(), stderr
    assert "fallback" not in (stdout + stderr).lower()
    model = onnx.load(str(out / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == native_opset()
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == ["background", "cat", "dog"]
    assert json.loads(meta["palette"]) == [VOC_PALETTE[3 * i:3 * i + 3] for i in range(3)]
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    assert meta["num_classes"] == "3" and meta["batchnorm_folded"] == "true" and "NCHW" in meta["input"]


def test_without_onnx_torchscript_is_still_exported(checkpoint, tmp_path):
    # onnx is hidden from the tool whether or not it is installed here.
    out = tmp_path / "export"
    result = run_tool("--weights", str(checkpoint), "--output-dir", str(out), "--size", "32",
                      block_onnx=onnx_blocker(tmp_path / "block"))
    assert result.returncode == 0, result.stderr
    assert "pip install onnx onnxruntime" in result.stdout
    assert (out / "model.torchscript.pt").is_file() and not (out / "model.onnx").exists()


def test_explicit_onnx_without_onnx_is_an_error(checkpoint, tmp_path):
    result = run_tool("--weights", str(checkpoint), "--output-dir", str(tmp_path / "x"), "--format", "onnx",
                      block_onnx=onnx_blocker(tmp_path / "block"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --format onnx") and "pip install onnx" in lines[0]


def test_missing_weights_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.pth"
    result = run_tool("--weights", str(missing), "--output-dir", str(tmp_path / "x"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]
    assert not (tmp_path / "x").exists()


def test_architecture_comes_from_the_checkpoint_or_the_flags(tmp_path):
    tool = load_tool()
    ours = tmp_path / "best.pth"
    torch.save({"model": build_model("fcn32s", 3).state_dict(), "model_name": "fcn32s", "num_classes": 3}, ours)
    assert tool.load_for_export(str(ours), None, None)[1] == "fcn32s, 3 classes"
    with pytest.raises(ValueError, match="best.pth: has 3 classes, not --num-classes 21"):
        tool.load_for_export(str(ours), None, 21)
    with pytest.raises(ValueError, match="best.pth: holds fcn32s weights, not --model fcn_resnet50"):
        tool.load_for_export(str(ours), "fcn_resnet50", None)
    unknown = tmp_path / "raw.pth"
    torch.save({"conv.weight": torch.zeros(1)}, unknown)
    with pytest.raises(ValueError, match="raw.pth: cannot tell which model"):
        tool.load_for_export(str(unknown), None, None)


def test_raw_state_dict_loads_and_drops_aux(tmp_path):
    torch.manual_seed(2)
    model = build_model("fcn_resnet50", num_classes=2, aux=True).eval()
    path = tmp_path / "raw.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # as saved from DDP
    loaded, description = load_tool().load_for_export(str(path), None, None)  # read off the tensors
    assert loaded.aux_classifier is None and not loaded.training and "aux head dropped" in description
    image = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(loaded(image)["out"], model(image)["out"])


def test_mismatch_is_reported_and_fails():
    check = load_tool().check_export
    image = torch.zeros(1, 3, 8, 8)
    truth = np.linspace(-20, 20, 2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8)  # logits up to 20
    assert check("fake", lambda x: truth + 1e-5, image, truth)  # 5e-7 of the logit scale
    assert not check("fake", lambda x: truth + 0.01, image, truth)  # 5e-4 of the logit scale
    assert not check("fake", lambda x: truth[..., :4], image, truth)  # a width frozen at trace time

    def refuses(x):
        raise RuntimeError("Got invalid dimensions for input: image\nindex: 2 Got: 8 Expected: 64")

    assert not check("fake", refuses, image, truth)  # what onnxruntime does with a static graph
    small = truth / 100  # logits below 1: the tolerance is absolute, 1e-4
    assert check("fake", lambda x: small + 5e-5, image, small)
    assert not check("fake", lambda x: small + 2e-4, image, small)


def test_main_exits_nonzero_when_an_export_differs(checkpoint, tmp_path, monkeypatch, capsys):
    tool = load_tool()
    real = tool.export_torchscript

    def off_by_a_bit(module, example, path):
        run = real(module, example, path)
        return lambda x: run(x) * 1.01  # a 1% error, as a wrong op or a wrong interpolation would give

    monkeypatch.setattr(tool, "export_torchscript", off_by_a_bit)
    args = tool.parse_args(["--weights", str(checkpoint), "--output-dir", str(tmp_path), "--size", "32",
                            "--format", "torchscript"])
    assert tool.main(args) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "does not match PyTorch" in captured.err


@pytest.mark.parametrize("flags, needle", [
    (["--format", "onnx", "--opset", "1000"], "--opset 1000: this torch exports ONNX opsets"),
    (["--output-dir", "FILE"], "is a file, not a folder"),
], ids=["opset", "output-is-a-file"])
def test_outputs_that_cannot_be_written_are_refused_before_exporting(checkpoint, tmp_path, monkeypatch, flags,
                                                                      needle):
    """An opset torch cannot write used to print a converter traceback and write another opset, exit 0."""
    (tmp_path / "FILE").write_text("x")
    tool = load_tool()
    monkeypatch.setattr(tool, "load_for_export", lambda *a: pytest.fail("loaded the model before checking"))
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    argv = ["--weights", str(checkpoint), "--output-dir", str(tmp_path / "out"), *flags]
    with pytest.raises(ValueError, match=needle):
        tool.main(tool.parse_args(argv))
