"""Exports a trained FCN to TorchScript and ONNX, then checks each export against PyTorch at another size.

    python tools/export.py --weights run/best.pth --output-dir export/
    python tools/export.py --weights fcn8s.pth --model fcn8s --num-classes 21 --output-dir export/ --format onnx

The exported models take a normalised float batch (N, 3, H, W) (ImageNet mean/std, core.constants) of any
height and width and return the logits (N, C, H, W); the argmax over C is the label map. The aux head
is dropped: it only adds a training signal. The ONNX model is written at the opset torch writes natively, with
BatchNorm folded (checked), a dynamic batch, and the class names, palette and normalisation in its metadata
(inference/export.py; predict.py --backend onnxruntime runs the same export). ONNX needs `pip install onnx
onnxruntime` (and onnxscript for torch's default exporter; without it the older TorchScript-based exporter is
used).
"""
import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src and train_utils live at the repository root
from core.cli import ArgumentParser, HelpFormatter, add_config_flags, parse_with_config, positive_int, run_main  # noqa: E402
from core.outputs import check_output  # noqa: E402
from inference.export import (  # noqa: E402
    MIN_SIZE,
    TOLERANCE,
    LogitsOnly,
    check_opset,
    export_onnx,
    file_sha256,
    native_opset,
    onnx_opset,
    relative_error,
)
from src import CheckpointModel, add_model_flags, model_from_checkpoint  # noqa: E402

FORMATS = ("torchscript", "onnx")

Runner = Callable[[torch.Tensor], np.ndarray]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_flags(parser)  # exports are traced in fp32 on the CPU: they run on any device afterwards
    parser.add_argument("--output-dir", default="export", help="folder for model.torchscript.pt and model.onnx")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=None,
                        help="what to write; default: torchscript, plus onnx when the onnx package is installed")
    parser.add_argument("--opset", type=positive_int, default=native_opset(),
                        help="ONNX opset version (default: the one this torch writes natively)")
    parser.add_argument("--size", type=positive_int, default=512,
                        help=f"square input size used to trace the model (>= {MIN_SIZE}); the exports accept "
                             f"any size and are checked at a different one")
    add_config_flags(parser)
    return parse_with_config(parser, argv)


def load_for_export(path: str, model: Optional[str], num_classes: Optional[int]) -> Tuple[nn.Module, str]:
    """The checkpoint's model (loaded strictly, as validation.py and predict.py do) in eval mode without its
    aux head, and a one-line description."""
    loaded, description = load_checkpoint(path, model, num_classes)
    return loaded.model, description


def load_checkpoint(path: str, model: Optional[str], num_classes: Optional[int]) -> Tuple[CheckpointModel, str]:
    """As load_for_export, with what the checkpoint says about its classes (for the ONNX metadata)."""
    loaded = model_from_checkpoint(path, model, num_classes)
    net = loaded.model
    has_aux = getattr(net, "aux_classifier", None) is not None
    if has_aux:
        net.aux_classifier = None
    net.eval()
    return loaded, f"{loaded.name}, {loaded.num_classes} classes" + (" (aux head dropped)" if has_aux else "")


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    """Traces `module` (shapes are read at run time, so H and W stay free) and returns a runner of the file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")  # still the TorchScript API
        with torch.no_grad():
            # check_trace would rerun at the same size; check_export tests another size instead.
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
        loaded = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()
    return run


def onnx_runner(path: Path) -> Optional[Runner]:
    """An onnxruntime runner of `path`; without onnxruntime, runs onnx.checker and returns None."""
    try:
        import onnxruntime
    except ImportError:
        import onnx

        onnx.checker.check_model(str(path))
        print("onnx: onnx.checker passed; no numerical check without onnxruntime (pip install onnxruntime)")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x.numpy()})[0]


def check_export(fmt: str, run: Runner, image: torch.Tensor, reference: np.ndarray) -> bool:
    """Runs an export on `image`, prints its difference from PyTorch's `reference`; True within TOLERANCE."""
    size = "x".join(map(str, image.shape[-2:]))
    try:
        output = np.asarray(run(image))
    except Exception as e:  # any runtime's refusal (e.g. a shape frozen at trace time) is a failed check
        print(f"{fmt}: fails at {size}: {type(e).__name__}: {str(e).strip().splitlines()[0]}: MISMATCH")
        return False
    if output.shape != reference.shape:
        print(f"{fmt}: output shape {output.shape} at {size}, PyTorch gives {reference.shape}: MISMATCH")
        return False
    error = relative_error(output, reference)
    diff = float(np.abs(output - reference).max())
    verdict = "ok" if error <= TOLERANCE else f"MISMATCH (tolerance {TOLERANCE:g} relative)"
    print(f"{fmt}: max abs diff vs PyTorch at {size}: {diff:.3g} (logits up to {np.abs(reference).max():.3g}, "
          f"relative {error:.3g}) {verdict}")
    return error <= TOLERANCE


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def chosen_formats(requested: Optional[List[str]]) -> List[str]:
    """--format, or the default: TorchScript, plus ONNX when onnx is installed (else a note, no failure)."""
    if requested is not None:
        if "onnx" in requested and not onnx_available():
            raise ValueError("--format onnx needs the onnx package: pip install onnx onnxruntime "
                             "(or leave onnx out of --format)")
        return list(dict.fromkeys(requested))
    if onnx_available():
        return list(FORMATS)
    print("onnx: skipped, the onnx package is not installed; pip install onnx onnxruntime to export ONNX too")
    return ["torchscript"]


def export(fmt: str, module: nn.Module, example: torch.Tensor, out_dir: Path, opset: int,
           loaded: Optional[CheckpointModel] = None, checkpoint_sha256: str = "") -> Optional[Runner]:
    """Writes one format; returns a runner of the written file, or None when it cannot be run here."""
    if fmt == "torchscript":
        path = out_dir / "model.torchscript.pt"
        run = export_torchscript(module, example, path)
        print(f"wrote {path}")
        return run
    path = out_dir / "model.onnx"
    export_onnx(module.model, path, loaded, checkpoint_sha256, opset, size=example.shape[-1])
    print(f"wrote {path} (opset {onnx_opset(path)}, dynamic batch, height and width, BatchNorm folded; class names, "
          f"palette and normalisation in its metadata)")
    return onnx_runner(path)


# The file each format writes into --output-dir, and what it holds (core.outputs kinds).
EXPORT_FILES = {"torchscript": ("model.torchscript.pt", "checkpoint"), "onnx": ("model.onnx", "onnx")}


def main(args: argparse.Namespace) -> int:
    if args.size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE}, got {args.size}")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output-dir {out_dir} is a file, not a folder; choose another --output-dir")
    formats = chosen_formats(args.format)
    if "onnx" in formats:
        check_opset(args.opset)
    for fmt, (name, kind) in EXPORT_FILES.items():  # neither replaces the checkpoint nor a file of another kind
        if fmt in formats:
            check_output("--output-dir", out_dir / name, kind, [args.weights, args.config])
    loaded, description = load_checkpoint(args.weights, args.model, args.num_classes)
    print(f"loaded {args.weights}: {description}")
    module = LogitsOnly(loaded.model).eval()
    sha = file_sha256(args.weights) if "onnx" in formats else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, args.size, args.size, generator=generator)
    # A non-square size unlike the traced one: a height or width frozen into the graph shows up here.
    image = torch.randn(1, 3, args.size + 32, args.size + 64, generator=generator)
    with torch.no_grad():
        reference = module(image).numpy()
    ok = True
    for fmt in formats:
        run = export(fmt, module, example, out_dir, args.opset, loaded, sha)
        if run is not None:
            ok = check_export(fmt, run, image, reference) and ok
    if not ok:
        print("error: an exported model does not match PyTorch (see above); do not deploy it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
