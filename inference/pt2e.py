"""int8 in torch itself: PT2E post-training static quantization for x86 CPUs (torchao's X86InductorQuantizer),
compiled by TorchInductor with constant folding ("freezing"), so quantized convolutions run as oneDNN int8
kernels (VNNI, AMX where the CPU has them).

The model is exported with torch.export at one input shape, calibrated on normalised images, converted and
compiled for that shape: calling it with another shape is refused in one line rather than recompiled (a
compile takes tens of seconds on a small CPU). torchao is optional: without it one line says what to install.

torchvision's Bottleneck reuses one ReLU module three times and adds the shortcut in place; the quantizer's
pattern matcher groups operations by the module that made them and stops on such a block ("Input partition
has more than one output node"). The model is therefore quantized from a copy whose Bottlenecks run the
same arithmetic with one ReLU per use and an out-of-place add (same parameters, same outputs).
"""
import copy
from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .export import LogitsOnly

INSTALL = "pip install torchao"


class ExportableBottleneck(Bottleneck):
    """torchvision's Bottleneck with a ReLU per use and an out-of-place shortcut add: equal outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + identity)


def exportable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` that the x86 quantizer can annotate (see the module's docstring)."""
    model = copy.deepcopy(model).eval().cpu().float()
    for module in model.modules():
        if type(module) is Bottleneck:
            module.__class__ = ExportableBottleneck
        elif isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def _torchao():
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as e:
        raise ImportError(f"torch's PT2E int8 needs torchao ({e}); install it with: {INSTALL}") from None
    return quantize_pt2e, x86_inductor_quantizer


def check_available() -> None:
    """Raises the one-line ImportError when torchao is missing."""
    _torchao()


class PT2EInt8Model(nn.Module):
    """The compiled int8 graph, called like the torch model: normalised (N, 3, H, W) of its one shape -> {"out"}."""

    def __init__(self, compiled, shape: Tuple[int, ...], calibration: str) -> None:
        super().__init__()
        # Kept out of the module tree: the exported graph refuses .train()/.eval(), and .to()/BN folding have
        # nothing to do on it (its weights are folded into the compiled kernels).
        self.__dict__["compiled"] = compiled
        self.shape, self.calibration = tuple(shape), calibration

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if tuple(images.shape) != self.shape:
            raise ValueError(f"the PT2E int8 model was compiled for inputs of shape {list(self.shape)}, got "
                             f"{list(images.shape)}; quantize it again at that shape")
        # Always called in the grad mode it was compiled in (no_grad, outside inference_mode: freezing cannot
        # prepack int8 weights under inference_mode), so callers under inference_mode do not recompile it.
        # freezing: weights folded and prepacked, so the quantized convolutions lower to oneDNN's int8 kernels
        # (without it they run as dequantize + fp32 convolution); compiling happens inside the first call.
        from torch._inductor import config as inductor_config

        with torch.inference_mode(False), torch.no_grad(), inductor_config.patch(freezing=True):
            return {"out": self.compiled(images.detach().float().cpu().clone(memory_format=torch.contiguous_format))}


def quantize_pt2e_x86(model: nn.Module, images: Sequence[torch.Tensor], example: torch.Tensor,
                      source: str) -> PT2EInt8Model:
    """`model` (normalised NCHW -> {"out"}) quantized to int8 for x86 CPUs: exported at example's shape,
    activation ranges observed on `images` (normalised tensors of that shape), converted and compiled.
    `source` says what the images were, for the report."""
    quantize_pt2e, x86 = _torchao()

    example = example.detach().float().cpu()
    with torch.no_grad():
        graph = torch.export.export(LogitsOnly(exportable_copy(model)), (example,)).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for image in images:
            prepared(image.detach().float().cpu())
        converted = quantize_pt2e.convert_pt2e(prepared)
        compiled = torch.compile(converted)
    model = PT2EInt8Model(compiled, example.shape, source)
    model(example)  # compiles now
    return model
