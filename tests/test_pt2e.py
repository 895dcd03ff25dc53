"""inference.pt2e: int8 in torch itself (PT2E, torchao's x86 quantizer, TorchInductor), on a toy network built
from torchvision's Bottleneck so the compile stays a few seconds."""
import sys

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from inference.pt2e import ExportableBottleneck, check_available, exportable_copy, quantize_pt2e_x86

try:
    import torchao  # noqa: F401
    HAVE_TORCHAO = True
except ImportError:
    HAVE_TORCHAO = False


class Toy(nn.Module):
    """stem, two Bottlenecks (one with a downsample branch), a 1x1 classifier, logits at the input size."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.blocks = nn.Sequential(Bottleneck(16, 8, downsample=down), Bottleneck(32, 8))
        self.classifier = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> dict:
        out = self.classifier(self.blocks(self.stem(x)))
        return {"out": nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def toy() -> Toy:
    torch.manual_seed(0)
    model = Toy()
    with torch.no_grad():  # BN statistics away from the identity, so the folding done by the quantizer is tested
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_the_exportable_copy_computes_the_same_and_leaves_the_model_alone():
    model = toy()
    copy = exportable_copy(model)
    blocks = [m for m in copy.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(type(m) is ExportableBottleneck for m in blocks)
    assert all(type(m) is Bottleneck for m in model.modules() if isinstance(m, Bottleneck))
    assert model.stem[2].inplace and not copy.stem[2].inplace
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy(x)["out"], model(x)["out"])


@pytest.mark.skipif(not HAVE_TORCHAO, reason="PT2E int8 needs torchao (pip install torchao)")
def test_int8_agrees_with_fp32_and_refuses_another_shape():
    model = toy()
    gen = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, 32, 32, generator=gen) for _ in range(4)]
    int8 = quantize_pt2e_x86(model, images, images[0], "4 random images")
    with torch.inference_mode():  # as the benchmark and predict call models
        got = int8(images[1])["out"]
    with torch.no_grad():
        want = model(images[1])["out"]
    assert got.shape == want.shape and got.dtype == torch.float32
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() < 0.1 * scale  # int8 steps, not an unrelated network
    assert (got.argmax(1) == want.argmax(1)).double().mean().item() > 0.9
    with pytest.raises(ValueError, match=r"compiled for inputs of shape \[1, 3, 32, 32\], got \[1, 3, 48, 32\]"):
        int8(torch.zeros(1, 3, 48, 32))


def test_without_torchao_one_line_says_what_to_install(monkeypatch):
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")] or ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"needs torchao .*install it with: pip install torchao$"):
        check_available()
