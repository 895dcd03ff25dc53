"""Other runtimes for the forward pass: `--backend torch|onnxruntime|openvino` of predict.py and validation.py.

A backend is a module that maps a normalised float NCHW batch to {"out": logits}, as the torch model does, so
every inferer (whole image, sliding window, scales + flip) and folder prediction run it unchanged. The ONNX
model is the checkpoint's cached export (inference.export.cached_export) or `--onnx-model` (e.g. the int8 model
of tools/quantize.py); ONNX Runtime and OpenVINO are optional: without them one line says what to install.

The first call is checked against the torch model on the same batch (ParityChecked): before anything is timed
or written, a backend whose logits differ beyond the tolerance stops the run.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from core.cli import UsageError, positive_float
from core.platform import kept_signal_stack
from core.runtime import Runtime
from src import CheckpointModel

from .export import TOLERANCE, cached_export, file_sha256, read_metadata, relative_error

BACKENDS = ("torch", "onnxruntime", "openvino")
INSTALL = {"onnxruntime": "pip install onnxruntime onnx onnxscript",
           "openvino": "pip install openvino onnx onnxscript"}
# int8 logits are off by a few quantisation steps: 0.03 (ONNX Runtime) and 0.024 (OpenVINO) of the logit scale
# measured on the demo's fcn_resnet50 checkpoint (32 calibration images); 0.3 leaves 10x that for other models
# and calibrations while still stopping a model whose logits are unrelated to the checkpoint's.
INT8_TOLERANCE = 0.3
Runner = Callable[[np.ndarray], np.ndarray]


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --backend, --onnx-model, --export-cache, --parity-check/--no-parity-check and --parity-tolerance."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default="torch",
                       help="runtime of the forward pass: torch, or the checkpoint's ONNX export in ONNX Runtime or "
                            "OpenVINO (CPU; exported once and cached next to the checkpoint)")
    group.add_argument("--onnx-model", default=None, metavar="FILE",
                       help="run this ONNX model (e.g. the int8 model of tools/quantize.py) instead of the cached "
                            "export; --weights is still read for the class names and the parity check")
    group.add_argument("--export-cache", default=None, metavar="DIR",
                       help="folder of the cached ONNX export (default: the checkpoint's folder)")
    group.add_argument("--parity-check", action=argparse.BooleanOptionalAction, default=True,
                       help="run the first batch in torch too and stop if the backend's logits differ beyond "
                            "--parity-tolerance")
    group.add_argument("--parity-tolerance", type=positive_float, default=None, metavar="REL",
                       help=f"largest max|backend - torch| / max(1, max|torch|) on the first batch (default "
                            f"{TOLERANCE:g} for fp32 models, {INT8_TOLERANCE:g} for int8)")


def check_backend_args(args: argparse.Namespace, runtime: Runtime) -> None:
    """One-line refusals of what a non-torch backend cannot do, before any model is loaded."""
    backend = args.backend
    if backend == "torch":
        if args.onnx_model:
            raise UsageError("--onnx-model needs --backend onnxruntime or --backend openvino")
        return
    if runtime.device.type != "cpu":
        raise UsageError(f"--backend {backend} runs on the CPU; add --device cpu (or use --backend torch)")
    if runtime.amp_dtype is not None or runtime.compile:
        flag = "--amp" if runtime.amp_dtype is not None else "--compile"
        raise UsageError(f"{flag} is torch's; --backend {backend} runs the ONNX model as it is (for int8 use "
                         f"tools/quantize.py); drop {flag}")
    if args.onnx_model and not Path(args.onnx_model).is_file():
        raise FileNotFoundError(f"--onnx-model {args.onnx_model}: no such file")
    module = "openvino" if backend == "openvino" else "onnxruntime"
    for name in (module, "onnx"):
        try:
            __import__(name)
        except ImportError:
            raise UsageError(f"--backend {backend} needs the {name} package: {INSTALL[backend]}") from None


class BackendModel(nn.Module):
    """An ONNX model in another runtime, called like the torch model: normalised (N, 3, H, W) -> {"out"}."""

    def __init__(self, run: Runner, name: str, path: Path, info: Dict[str, str]) -> None:
        super().__init__()
        self.run, self.name, self.path, self.info = run, name, path, info

    @property
    def int8(self) -> bool:
        return "quantization" in self.info

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = images.detach().float().contiguous().cpu().numpy()
        return {"out": torch.from_numpy(np.ascontiguousarray(self.run(x))).to(images.device)}


def onnxruntime_runner(path: Path, threads: Optional[int] = None) -> Runner:
    """An ONNX Runtime CPU session of `path` with all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path, threads: Optional[int] = None) -> Runner:
    """An OpenVINO CPU model of `path`, in f32 for an fp32 model: OpenVINO would otherwise run bf16 on CPUs
    with AMX or AVX-512 BF16, whose logits are 100x further from torch's (int8 layers stay int8 either way)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with kept_signal_stack():  # OpenVINO leaves a signal stack too small for AMX state: see kept_signal_stack
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()  # the request reuses its buffer on the next call
    return run


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def threads_here() -> int:
    """The CPUs this process may use (the runtimes' default counts the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_backend(backend: str, path: Path, threads: Optional[int] = None) -> BackendModel:
    """`path` in `backend` (onnxruntime or openvino) as a BackendModel."""
    return BackendModel(RUNNERS[backend](path, threads or threads_here()), backend, path, read_metadata(path))


class ParityChecked(nn.Module):
    """Runs `backend`; its first call also runs `reference` (the torch model) on the same batch and raises a
    ValueError when the logits differ by more than `tolerance` of their scale. Later calls run the backend only."""

    def __init__(self, backend: BackendModel, reference: nn.Module, tolerance: float) -> None:
        super().__init__()
        self.backend, self.tolerance = backend, tolerance
        self.reference: Optional[nn.Module] = reference
        self.error: Optional[float] = None

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.backend(images)
        if self.reference is not None:
            with torch.no_grad():
                expected = self.reference(images)["out"].float()
            self.reference = None  # checked once; not kept alive for the rest of the run
            self.error = relative_error(out["out"].cpu().numpy(), expected.cpu().numpy())
            if self.error > self.tolerance:
                raise ValueError(
                    f"--backend {self.backend.name} ({self.backend.path.name}): its logits differ from torch's by "
                    f"{self.error:.3g} of their scale on the first batch (tolerance {self.tolerance:g}); the ONNX "
                    f"model does not compute this checkpoint's function: use --backend torch, or --onnx-model "
                    f"made from this checkpoint (--no-parity-check skips the check)")
            print(f"parity check: logits within {self.error:.2g} of torch's scale on the first batch (tolerance "
                  f"{self.tolerance:g})", file=sys.stderr, flush=True)
        return out

    @property
    def int8(self) -> bool:
        return self.backend.int8


def check_source(info: Dict[str, str], path: Path, weights: str) -> None:
    """An --onnx-model that names its checkpoint must name --weights: its class names and parity are read there."""
    recorded = info.get("checkpoint_sha256")
    if recorded and recorded != file_sha256(weights):
        raise ValueError(f"--onnx-model {path} was made from another checkpoint than --weights {weights}; pass the "
                         f"checkpoint it was made from, or make it again (tools/quantize.py --weights {weights})")


def load_backend(args: argparse.Namespace, loaded: CheckpointModel, model: nn.Module) -> nn.Module:
    """The model that --backend selects: `model` itself for torch, else the ONNX model (--onnx-model, or the
    checkpoint's cached export) in ONNX Runtime or OpenVINO, parity-checked against `model` unless
    --no-parity-check. Prints where the ONNX model came from."""
    if args.backend == "torch":
        return model
    if args.onnx_model:
        path, source = Path(args.onnx_model), "--onnx-model"
        check_source(read_metadata(path), path, args.weights)
    else:
        path, reused = cached_export(model, args.weights, loaded, cache_dir=args.export_cache)
        source = "cached export" if reused else "exported (BN folded, checked)"
    backend = open_backend(args.backend, path)
    kind = "int8" if backend.int8 else "fp32"
    print(f"backend: {args.backend}, {kind} ONNX model {path} ({source})", file=sys.stderr, flush=True)
    if not args.parity_check:
        return backend
    tolerance = args.parity_tolerance or (INT8_TOLERANCE if backend.int8 else TOLERANCE)
    return ParityChecked(backend, model, tolerance)
