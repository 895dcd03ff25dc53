"""Inference modes: sliding-window geometry and averaging, bounded memory, TTA, the inferer factory and flags.

Expected values come from hand-listed window offsets, numpy, and models whose outputs are known in closed
form, not from the code under test.
"""
import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import predict
import train
import validation
from core.runtime import Runtime
from inference.modes import (
    add_inference_flags,
    inferer_from_args,
    make_inferer,
    slide_inference,
    tta_inference,
    window_starts,
)
from src import build_model, model_from_checkpoint
from train_utils.builders import build_datasets, build_loaders
from train_utils.distributed import DistInfo
from train_utils.train_eval import evaluate, run_evaluation

REPO_ROOT = Path(__file__).resolve().parents[1]


class OffsetModel(nn.Module):
    """Fed an image whose channels 0/1 hold each pixel's row/column, outputs everywhere the window's
    top-left (row, column): so each pixel of the average is the mean offset of the windows covering it."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes, self.shapes, self.channels_last = [], [], []

    def forward(self, x: torch.Tensor) -> dict:
        self.batch_sizes.append(x.shape[0])
        self.shapes.append(tuple(x.shape[-2:]))
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return {"out": x[:, :2, :1, :1].expand(-1, -1, *x.shape[-2:]).clone()}


class Pointwise(nn.Module):
    """A 1x1 convolution: each output pixel depends only on the same input pixel."""

    def __init__(self, classes: int = 4, kernel: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.conv(x)}


def coordinate_image(height: int, width: int, shift: float = 0.0) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).float()[None] + shift  # (1, 3, H, W)


def expected_offsets(height: int, width: int, rows: list, cols: list, wh: int, ww: int) -> np.ndarray:
    """Mean (row, col) offset of the windows covering each pixel, from an explicit list of windows."""
    total, count = np.zeros((2, height, width)), np.zeros((height, width))
    for y in rows:
        for x in cols:
            total[0, y:y + wh, x:x + ww] += y
            total[1, y:y + wh, x:x + ww] += x
            count[y:y + wh, x:x + ww] += 1
    assert count.min() >= 1, "the hand-listed windows must cover the image"
    return total / count


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("fcn_resnet50", num_classes=3).eval()


# (H, W, window, stride, row starts, column starts, window height, window width), offsets listed by hand:
# the last window is moved back to end at the border (11 - 4 = 7), a short axis gets one clipped window.
CASES = [
    (11, 10, 4, 3, [0, 3, 6, 7], [0, 3, 6], 4, 4),
    (3, 10, 4, 3, [0], [0, 3, 6], 3, 4),
    (9, 12, (5, 4), (2, 4), [0, 2, 4], [0, 4, 8], 5, 4),
    (8, 8, 4, 4, [0, 4], [0, 4], 4, 4),
]


@pytest.mark.parametrize("height,width,window,stride,rows,cols,wh,ww", CASES)
def test_window_starts_match_hand_listed_offsets(height, width, window, stride, rows, cols, wh, ww):
    (win_h, win_w), (step_h, step_w) = [(v, v) if isinstance(v, int) else v for v in (window, stride)]
    assert window_starts(height, win_h, step_h) == rows
    assert window_starts(width, win_w, step_w) == cols


@pytest.mark.parametrize("height,width,window,stride,rows,cols,wh,ww", CASES)
def test_slide_averages_overlapping_windows(height, width, window, stride, rows, cols, wh, ww):
    model = OffsetModel()
    images = torch.cat([coordinate_image(height, width), coordinate_image(height, width, shift=100.0)])
    out = slide_inference(model, images, window=window, stride=stride, chunk=3)
    assert out.shape == (2, 2, height, width)
    expected = expected_offsets(height, width, rows, cols, wh, ww)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), expected + 100, rtol=1e-6)  # each image its own windows
    windows = 2 * len(rows) * len(cols)
    assert sum(model.batch_sizes) == windows and max(model.batch_sizes) <= 3
    assert set(model.shapes) == {(wh, ww)}


def test_slide_overlap_counts_by_hand():
    # Rows 0..10 with windows at 0, 3, 6, 7 (height 4): the values below are worked out on paper.
    out = slide_inference(OffsetModel(), coordinate_image(11, 4), window=4, stride=3)
    rows = out[0, 0, :, 0].tolist()
    assert rows[0] == 0.0  # only the window at 0
    assert rows[3] == 1.5  # windows at 0 and 3
    assert rows[6] == 4.5  # windows at 3 and 6
    assert rows[7] == 6.5  # windows at 6 and 7
    assert rows[10] == 7.0  # only the window at 7


def test_slide_of_pointwise_model_equals_whole_image():
    torch.manual_seed(0)
    model = Pointwise().eval()
    images = torch.randn(2, 3, 37, 53)
    expected = model(images)["out"]
    for window, stride in ((16, 16), (16, 5), (20, 13)):
        out = slide_inference(model, images, window=window, stride=stride, chunk=5)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_slide_with_window_covering_image_is_the_whole_image_result(resnet):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = resnet(images)["out"]
    assert torch.equal(slide_inference(resnet, images, window=80, stride=60), expected)
    assert torch.equal(slide_inference(resnet, images, window=512, stride=341), expected)


def test_slide_on_real_model_covers_and_differs_from_whole(resnet):
    torch.manual_seed(2)
    images = torch.randn(1, 3, 72, 96)
    out = slide_inference(resnet, images, window=48, stride=32, num_classes=3)
    assert out.shape == (1, 3, 72, 96) and torch.isfinite(out).all()
    with torch.no_grad():
        whole = resnet(images)["out"]
    # A receptive field larger than the window: the windows see less context, so the results differ.
    assert not torch.allclose(out, whole)
    with pytest.raises(ValueError, match="outputs 3 classes, expected 21"):
        slide_inference(resnet, images, window=48, stride=32, num_classes=21)


def test_slide_keeps_channels_last_and_output_dtype():
    model = OffsetModel()
    images = coordinate_image(11, 10).contiguous(memory_format=torch.channels_last)
    slide_inference(model, images, window=4, stride=3)
    assert all(model.channels_last)
    torch.manual_seed(0)
    conv = Pointwise().eval()
    x = torch.randn(1, 3, 30, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = slide_inference(conv, x, window=16, stride=11)
    assert out.dtype == torch.bfloat16  # accumulated in the model's output dtype
    torch.testing.assert_close(out.float(), conv(x)["out"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(window=0, stride=1), "--window"), (dict(window=8, stride=9), "--stride"),
    (dict(window=8, stride=0), "--stride"), (dict(window=8, stride=4, chunk=0), "--chunk"),
])
def test_slide_rejects_bad_geometry(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        slide_inference(OffsetModel(), coordinate_image(10, 10), **kwargs)


def softmax_np(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def upsample2x_np(a: np.ndarray, axis: int) -> np.ndarray:
    """Bilinear 2x upsampling with align_corners=False, written out: output 2k samples the input at
    k - 1/4 and 2k+1 at k + 1/4, clamped at the borders."""
    a = np.moveaxis(a, axis, -1)
    prev = np.concatenate([a[..., :1], a[..., :-1]], axis=-1)
    nxt = np.concatenate([a[..., 1:], a[..., -1:]], axis=-1)
    out = np.empty(a.shape[:-1] + (2 * a.shape[-1],))
    out[..., 0::2] = 0.75 * a + 0.25 * prev
    out[..., 1::2] = 0.75 * a + 0.25 * nxt
    return np.moveaxis(out, -1, axis)


def test_tta_single_scale_is_plain_softmax(resnet):
    torch.manual_seed(3)
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = resnet(images)["out"].softmax(1)
    assert torch.equal(tta_inference(resnet, images, scales=(1.0,)), expected)


def test_flip_tta_of_flip_equivariant_model_is_plain_softmax():
    torch.manual_seed(4)
    model = Pointwise(kernel=3).eval()
    with torch.no_grad():  # mirror-symmetric kernels: the conv commutes with a horizontal flip
        model.conv.weight.copy_((model.conv.weight + model.conv.weight.flip(-1)) / 2)
    images = torch.randn(2, 3, 20, 28)
    expected = model(images)["out"].softmax(1)
    torch.testing.assert_close(tta_inference(model, images, flip=True), expected)


def test_flip_tta_averages_the_flipped_prediction():
    torch.manual_seed(5)
    model = Pointwise(kernel=3).eval()  # not symmetric: the flipped pass predicts something else
    images = torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        plain = softmax_np(model(images)["out"].numpy())
        mirrored = softmax_np(model(images.flip(-1))["out"].numpy())[..., ::-1]
    out = tta_inference(model, images, flip=True).numpy()
    np.testing.assert_allclose(out, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, plain, atol=1e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_multiscale_tta_matches_manual_computation(flip):
    torch.manual_seed(6)
    model = Pointwise(classes=3).eval()
    images = torch.randn(1, 3, 8, 12)
    x = images[0].numpy().astype(np.float64)
    weight = model.conv.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    bias = model.conv.bias.detach().numpy().astype(np.float64)[:, None, None]
    full = np.einsum("kc,chw->khw", weight, x) + bias
    # Bilinear 0.5x with align_corners=False samples between pixel pairs: a 2x2 mean.
    half = x.reshape(3, 4, 2, 6, 2).mean(axis=(2, 4))
    half_logits = np.einsum("kc,chw->khw", weight, half) + bias
    back = upsample2x_np(upsample2x_np(half_logits, 1), 2)
    expected = (softmax_np(full[None]) + softmax_np(back[None])) / 2  # the 1x1 conv is flip-equivariant
    out = tta_inference(model, images, scales=(0.5, 1.0), flip=flip)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0, rtol=1e-6)


def test_tta_runs_base_at_rounded_scaled_sizes():
    sizes = []

    def recording(model, images):
        sizes.append(tuple(images.shape[-2:]))
        return torch.zeros(images.shape[0], 2, *images.shape[-2:])

    out = tta_inference(None, torch.zeros(1, 3, 10, 13), scales=(0.5, 0.75), flip=True, base=recording)
    # 10 x 0.5 = 5, 13 x 0.5 = 6.5 -> 6 (round half to even), 10 x 0.75 = 7.5 -> 8, 13 x 0.75 = 9.75 -> 10
    assert sizes == [(5, 6), (5, 6), (8, 10), (8, 10)]
    assert out.shape == (1, 2, 10, 13) and torch.allclose(out, torch.full_like(out, 0.5))


def test_make_inferer_modes_and_names():
    torch.manual_seed(7)
    model = OffsetModel()
    images = coordinate_image(11, 10)
    whole = make_inferer()
    assert whole.name == "whole" and torch.equal(whole(model, images), model(images)["out"])
    assert not whole.returns_probabilities
    slide = make_inferer("slide", window=4, stride=3)
    assert slide.name == "slide 4/3"
    np.testing.assert_allclose(slide(model, images)[0].numpy(), expected_offsets(11, 10, *CASES[0][4:]))
    tta = make_inferer("slide", window=4, stride=3, scales=[0.5, 1], flip=True)
    assert tta.name == "slide 4/3 ms[0.5,1]+flip"
    probs = tta(Pointwise().eval(), torch.randn(1, 3, 11, 10))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 11, 10))
    assert make_inferer(scales=[1.0]).name == "whole" and make_inferer(flip=True).name == "whole+flip"


@pytest.mark.parametrize("kwargs,flag", [
    (dict(mode="tiles"), "--mode"), (dict(mode="slide", window=-1), "--window"),
    (dict(mode="slide", window=256, stride=300), "--stride"), (dict(scales=[1.0, 0.0]), "--scales"),
    (dict(scales=[]), "--scales"), (dict(chunk=0), "--chunk"),
])
def test_make_inferer_validates(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        make_inferer(**kwargs)


def test_inference_flags():
    parser = argparse.ArgumentParser()
    add_inference_flags(parser)
    defaults = parser.parse_args([])
    assert (defaults.mode, defaults.window, defaults.stride, defaults.scales, defaults.flip, defaults.chunk) == \
        ("whole", 512, 341, None, False, 4)
    assert inferer_from_args(defaults) is None  # the plain whole-image forward: nothing beyond the default
    assert inferer_from_args(parser.parse_args(["--scales", "1.0"])) is None
    single_flip = inferer_from_args(parser.parse_args(["--flip"]))
    assert single_flip.name == "whole+flip" and single_flip.returns_probabilities
    flags = "--mode slide --window 256 --stride 128 --scales 0.75 1 1.25 --flip --chunk 2"
    args = parser.parse_args(flags.split())
    inferer = inferer_from_args(args)
    assert inferer.name == "slide 256/128 ms[0.75,1,1.25]+flip" and inferer.chunk == 2
    assert parser.parse_args(["--flip", "--no-flip"]).flip is False
    with pytest.raises(ValueError, match="--stride"):
        inferer_from_args(parser.parse_args(["--window", "128", "--stride", "200"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--scales", "0"])
    assert all(action.help for action in parser._actions)


def test_evaluate_takes_slide_and_tta_inferers():
    torch.manual_seed(8)
    model = Pointwise(classes=3).eval()
    images = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8)
    targets = torch.randint(0, 3, (2, 24, 40))
    targets[0, :4] = 255  # ignored pixels are not counted
    mean = np.array([0.485, 0.456, 0.406])[:, None, None] * 255
    std = np.array([0.229, 0.224, 0.225])[:, None, None] * 255
    x = (images.numpy().astype(np.float64) - mean) / std
    weight = model.conv.weight.detach().numpy()[:, :, 0, 0]
    pred = (np.einsum("kc,nchw->nkhw", weight, x) + model.conv.bias.detach().numpy()[:, None, None]).argmax(1)
    t = targets.numpy()
    keep = t != 255
    expected = np.bincount(t[keep] * 3 + pred[keep], minlength=9).reshape(3, 3)
    loader = [(images, targets)]
    for infer in (make_inferer("slide", window=16, stride=10), make_inferer(scales=[1.0], flip=True)):
        cm = evaluate(model, loader, Runtime(torch.device("cpu"), channels_last=True), 3, infer=infer)
        np.testing.assert_array_equal(cm.matrix.numpy(), expected)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    sys.path.insert(0, sys.argv[2])
    from inference.modes import slide_inference

    class Tiny(nn.Module):  # FCN-shaped: strided features, 1x1 classifier, bilinear upsampling to the input
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 32, 3, stride=2, padding=1)
            self.classifier = nn.Conv2d(32, 2, 1)

        def forward(self, x):
            out = self.classifier(F.relu(self.features(x)))
            return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}

    torch.manual_seed(0)
    model = Tiny().eval()
    images = torch.randn(1, 3, 3000, 4000)
    def status_kb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    # Peak RSS of this process's own memory only: reset the high-water mark (VmHWM) first. (ru_maxrss would
    # also count the parent's pages shared by fork before the exec: the pytest process can be large.)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    with torch.inference_mode():
        if sys.argv[1] == "slide":
            out = slide_inference(model, images, window=512, stride=341, chunk=4)
        else:
            out = model(images)["out"]
    after = status_kb("VmHWM")
    print(json.dumps({"peak_mb": (after - before) / 1024, "shape": list(out.shape)}))
""")


def peak_memory_mb(mode: str) -> dict:
    """Peak RSS growth of one 3000x4000 prediction, measured in a fresh process (torch's allocations are
    invisible to tracemalloc; the kernel's peak RSS sees them all)."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, mode, str(REPO_ROOT)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_large_photo_slide_memory_is_bounded():
    # Only the result, 1 x 2 classes x 3000 x 4000 float32 = 92 MB, grows with the photo. The rest depends
    # on the window and chunk: per 512x512 window 3 input channels, 2 x 32 feature channels (conv, relu) and
    # 2 logit channels at 1/2 scale, and 2 upsampled logit channels: 21.5 MB. Twice that per window in the
    # chunk, plus 64 MB for torch's runtime and the allocator, gives about 330 MB (about 210-230 MB measured).
    # The whole-image forward of the same model needs 384 MB for the features alone (about 890 MB measured).
    result_mb = 2 * 3000 * 4000 * 4 / 2**20
    window_mb = (3 + 64 / 4 + 2 / 4 + 2) * 512 * 512 * 4 / 2**20
    bound_mb = result_mb + 64 + 2 * 4 * window_mb
    slide = peak_memory_mb("slide")
    assert slide["shape"] == [1, 2, 3000, 4000]
    assert slide["peak_mb"] < bound_mb, f"slide inference grew RSS by {slide['peak_mb']:.0f} MB > {bound_mb:.0f}"
    whole = peak_memory_mb("whole")  # the measurement does see activations: the same model run whole
    assert whole["peak_mb"] > bound_mb, f"whole-image inference grew RSS by only {whole['peak_mb']:.0f} MB"


# ------------------------------------------------------------------------------------------ one forward pass

def test_prediction_validation_and_training_evaluation_give_identical_logits(trained, demo, tmp_path, monkeypatch):
    """predict.py, validation.py and the training run's evaluation feed the model the same normalised photo and
    get the same logits: one normalisation, one forward pass (inference.forward.predict_scores)."""
    logits = {"predict": [], "validation": [], "training": []}

    def spy(name: str, model: nn.Module) -> nn.Module:
        model.register_forward_hook(lambda module, inputs, output: logits[name].append(output["out"].clone()))
        return model

    def spying(name: str, load):
        return lambda args, runtime: (lambda loaded, model: (loaded, spy(name, model)))(*load(args, runtime))

    monkeypatch.setattr(predict, "load_inference_model", spying("predict", predict.load_inference_model))
    monkeypatch.setattr(validation, "load_inference_model", spying("validation", validation.load_inference_model))
    weights, folder = trained / "best.pth", tmp_path / "photos"
    folder.mkdir()
    for path in sorted((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("val_*.jpg")):
        shutil.copy(path, folder)
    common = ["--weights", str(weights), "--device", "cpu", "-j", "0"]
    assert predict.main(predict.parse_args([*common, "--image", str(folder), "--output", str(tmp_path / "m"),
                                            "--warmup", "0"])) == 0
    assert validation.main(validation.parse_args([*common, "--data-path", str(demo), "-b", "1",
                                                  "--record", str(tmp_path / "record.txt")])) == 0
    # What the trainer's fit() evaluates with: train.py's validation loader and the training model.
    args = train.parse_args(["--data-path", str(demo), "--device", "cpu", "-j", "0", "--eval-batch-size", "1"])
    runtime = Runtime(torch.device("cpu"))
    _, val_loader = build_loaders(args, DistInfo(), runtime, *build_datasets(args))
    model = spy("training", model_from_checkpoint(weights).model)
    run_evaluation(model, val_loader, runtime, 5)
    assert len(logits["predict"]) == len(logits["validation"]) == len(logits["training"]) == 3
    for got in ("validation", "training"):
        assert all(torch.equal(a, b) for a, b in zip(logits["predict"], logits[got])), got
