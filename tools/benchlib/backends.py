"""The --backends, --int8 and --pt2e-int8 variants of --mode infer and predict: our model exported to ONNX (BN
folded, as predict.py --backend does) and run in ONNX Runtime or OpenVINO, optionally quantized to int8
(tools/quantize.py's quantizer), or quantized to int8 in torch itself (inference.pt2e), timed side by side with
torchvision's eager model and ours."""
import argparse
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.cli import UsageError
from inference import normalize
from inference.backends import BackendModel, check_backend_args, open_backend
from inference.export import export_onnx, file_sha256
from inference.pt2e import check_available, quantize_pt2e_x86
from src import CheckpointModel
from tools.quantize import quantize

from .baselines import num_classes_of
from .inputs import smooth_images

CALIBRATION_IMAGES = 4
PT2E = "torch pt2e int8"


def variant_names(args: argparse.Namespace) -> List[str]:
    """The extra variants, in the order they are timed: each backend, then each backend in int8."""
    names = list(args.backends or [])
    if args.int8 or args.int8_model:
        names += [f"{b} int8" for b in (args.backends or ["onnxruntime"])]
    if getattr(args, "pt2e_int8", False):
        names.append(PT2E)
    return names


def check_args(args: argparse.Namespace, runtime) -> None:
    """One-line refusals: the extras must be installed, the device a CPU, no autocast or compile."""
    names = variant_names(args)
    for backend in dict.fromkeys(n.split()[0] for n in names if n != PT2E):
        check_backend_args(argparse.Namespace(backend=backend, onnx_model=args.int8_model), runtime)
    if PT2E in names:
        if runtime.device.type != "cpu" or runtime.amp_dtype is not None or runtime.compile:
            raise UsageError("--pt2e-int8 is int8 for x86 CPUs, compiled on its own: add --device cpu and drop "
                             "--amp and --compile")
        try:
            check_available()
        except ImportError as e:
            raise UsageError(f"--pt2e-int8: {e}") from None


def calibration_images(args: argparse.Namespace) -> List[torch.Tensor]:
    """CALIBRATION_IMAGES normalised synthetic images at the size timed: --size, or --mode predict's first
    --image-sizes."""
    size = (args.size, args.size) if args.size else tuple(args.image_sizes[0])
    gen = torch.Generator().manual_seed(args.seed + 1)
    return [normalize(i[None]) for i in smooth_images(CALIBRATION_IMAGES, size, gen)]


def backend_models(args: argparse.Namespace, ours: nn.Module, folder: Path) -> Dict[str, BackendModel]:
    """{variant: model} for variant_names(args): `ours` exported to `folder` (fp32; quantized on --int8 with
    CALIBRATION_IMAGES synthetic images, or --int8-model) and opened in each backend."""
    names = variant_names(args)
    models = {}
    if PT2E in names or (args.int8 and not args.int8_model):
        calibration = calibration_images(args)
    if PT2E in names:
        models[PT2E] = quantize_pt2e_x86(ours, calibration, calibration[0],
                                         f"{len(calibration)} synthetic smooth images")
    names = [n for n in names if n != PT2E]
    if not names:
        return models
    ours = ours.eval()
    loaded = CheckpointModel(ours, args.model, num_classes_of(ours), None)
    sha = file_sha256(args.weights) if args.weights else "random weights"
    fp32 = export_onnx(ours, folder / "fp32.onnx", loaded, sha)
    int8 = Path(args.int8_model) if args.int8_model else None
    if int8 is None and args.int8:
        int8 = folder / "int8.onnx"
        quantize(fp32, int8, [i.numpy() for i in calibration], "minmax", f"{len(calibration)} synthetic smooth images")
    models.update({name: open_backend(name.split()[0], int8 if name.endswith("int8") else fp32) for name in names})
    return {name: models[name] for name in variant_names(args)}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="fcn_benchmark_onnx_")


def masks_agreement(a: List[Path], b: List[Path]) -> float:
    """Share of equal pixels between two lists of mask files."""
    same = total = 0
    for x, y in zip(a, b):
        mx, my = np.array(Image.open(x)), np.array(Image.open(y))
        same, total = same + int((mx == my).sum()), total + mx.size
    return same / max(total, 1)
