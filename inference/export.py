"""ONNX export of a trained model, shared by tools/export.py, tools/quantize.py and the `--backend` flags.

The exported graph takes what `inference.forward.normalize` makes, a float32 NCHW RGB batch normalised with
the ImageNet mean and std (INPUT_LAYOUT), with a free batch, height and width, and returns the logits
(N, C, H, W). BatchNorm is folded into the convolutions before export (checked against the unfolded model).
The file carries what a user of the bare ONNX model needs in its metadata: the class names, the palette, the
normalisation and the SHA-256 of the checkpoint it came from (METADATA_KEYS).
"""
import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from core.constants import IMAGENET_MEAN, IMAGENET_STD
from core.palette import VOC_PALETTE, Palette, default_class_names
from core.platform import atomic_write, file_sha256
from src import CheckpointModel
from src.fuse import fold_batchnorm

PathLike = Union[str, Path]
# What the graph's input is; part of the cache key, so that a change of layout re-exports.
INPUT_LAYOUT = "float32 NCHW RGB, (pixel / 255 - mean) / std"
MIN_SIZE = 32  # the export declares H, W >= 32: below that the 1/8 feature map is a few pixels
# Largest allowed |other - PyTorch| as a fraction of max(1, largest |logit|). Another runtime's float32
# kernels (or folded BN weights) sum in another order: through ~50 layers that moves logits by ~1e-6 of their
# scale (2e-6 measured for ONNX Runtime on fcn_resnet50). Real export bugs (a size frozen at trace time,
# another interpolation, a missing layer) move them by a large fraction of it: 1e-4 separates the two.
TOLERANCE = 1e-4
METADATA_KEYS = ("model", "num_classes", "class_names", "palette", "input", "mean", "std", "checkpoint_sha256",
                 "batchnorm_folded")


class LogitsOnly(nn.Module):
    """model(x)["out"]: exporters want a tensor output, not a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["out"]


def native_opset() -> int:
    """The opset torch's exporter writes without a version conversion (its default)."""
    try:
        from torch.onnx._constants import ONNX_DEFAULT_OPSET
    except ImportError:  # a torch that moved it: its exporter's own default
        return 18
    return int(ONNX_DEFAULT_OPSET)


def lowest_native_opset() -> int:
    """torch.export-based exporter: older opsets are reached by a conversion that warns and may fail."""
    return 18


def check_opset(opset: int) -> None:
    """Refuses an opset torch cannot write natively: its exporter would print a converter warning and a fallback
    line, or silently write another opset."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a torch that moved it: let the exporter judge
        return
    if not lowest_native_opset() <= opset <= ONNX_MAX_OPSET:
        raise ValueError(f"--opset {opset}: this torch exports ONNX opsets {lowest_native_opset()}..{ONNX_MAX_OPSET} "
                         f"natively; choose one of them (default {native_opset()})")


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """max |output - reference| / max(1, max |reference|), for outputs of the same shape."""
    return float(np.abs(output - reference).max() / max(1.0, float(np.abs(reference).max())))


def without_aux(model: nn.Module) -> nn.Module:
    """An fp32 CPU eval-mode copy of `model` without its aux head (its output is never used at inference)."""
    model = copy.deepcopy(model).eval().float().cpu()
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None
    return model


@torch.no_grad()
def folded_copy(model: nn.Module, check: Optional[torch.Tensor] = None,
                tolerance: float = TOLERANCE) -> nn.Module:
    """An eval-mode copy of `model` with BatchNorm folded; with `check` (a normalised batch), the copy's logits
    must match the unfolded model's to `tolerance` (relative), else a ValueError."""
    folded = fold_batchnorm(without_aux(model))
    if check is not None:
        ref, out = model.eval()(check)["out"].numpy(), folded(check)["out"].numpy()
        error = relative_error(out, ref)
        if error > tolerance:
            raise ValueError(f"BatchNorm folding moved the logits by {error:.3g} of their scale (tolerance "
                             f"{tolerance:g}); the model has a BatchNorm that does not follow its convolution")
    return folded


def metadata(loaded: CheckpointModel, checkpoint_sha256: str, folded: bool) -> Dict[str, str]:
    """The ONNX metadata_props: what a user needs to feed the model and read its output."""
    names = loaded.class_names or default_class_names(loaded.num_classes)
    palette: Palette = loaded.palette or VOC_PALETTE
    colors = [palette[3 * i:3 * i + 3] for i in range(loaded.num_classes)]
    return {"model": loaded.name, "num_classes": str(loaded.num_classes), "class_names": json.dumps(list(names)),
            "palette": json.dumps(colors), "input": INPUT_LAYOUT, "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD)), "checkpoint_sha256": checkpoint_sha256,
            "batchnorm_folded": str(folded).lower()}


def read_metadata(path: PathLike) -> Dict[str, str]:
    """metadata_props of an ONNX file (the weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _export_proto(module: nn.Module, example: torch.Tensor, opset: int):
    """The ModelProto of `module` with a dynamic batch, height and width."""
    import onnx

    try:
        import onnxscript  # noqa: F401  (torch's default exporter is written in it)
    except ImportError:
        # The TorchScript-based exporter needs only onnx; it is deprecated, so it is the fallback.
        axes = {0: "batch", 2: "height", 3: "width"}
        import io

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")  # chosen knowingly
            torch.onnx.export(module, (example,), buffer, input_names=["image"], output_names=["out"],
                              opset_version=opset, dynamo=False, dynamic_axes={"image": axes, "out": axes})
        return onnx.load_from_string(buffer.getvalue())
    # The example's batch is 2: torch.export specialises a size-1 dimension to the constant 1.
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=MIN_SIZE),
            3: torch.export.Dim("width", min=MIN_SIZE)}
    program = torch.onnx.export(module, (example,), input_names=["image"], output_names=["out"],
                                opset_version=opset, dynamo=True, dynamic_shapes=(dims,), external_data=False,
                                verbose=False)
    return program.model_proto


def export_onnx(model: nn.Module, path: PathLike, loaded: CheckpointModel, checkpoint_sha256: str,
                opset: Optional[int] = None, size: int = 64, fold: bool = True) -> Path:
    """Writes `model` (eval mode, no aux head) to `path` atomically, BN folded (checked) unless `fold` is False,
    with a dynamic batch, height and width and the metadata of `metadata`; returns `path`.

    Args:
        size: square size of the traced example (>= MIN_SIZE); the graph accepts any size.
        opset: default: the one torch writes natively (native_opset()).
    """
    import onnx

    opset = native_opset() if opset is None else opset
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    module = LogitsOnly(folded_copy(model, example) if fold else without_aux(model)).eval()
    proto = _export_proto(module, example, opset)
    for key, value in metadata(loaded, checkpoint_sha256, fold).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


def onnx_opset(path: PathLike) -> int:
    """The default-domain opset written into the file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def cache_key(checkpoint_sha256: str, opset: int, fold: bool) -> str:
    """What an export depends on besides the code: the checkpoint's bytes, the input layout, the opset and
    the BN folding; 16 hex digits of their hash."""
    text = json.dumps([checkpoint_sha256, INPUT_LAYOUT, opset, fold])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_export_path(weights: PathLike, key: str, cache_dir: Optional[PathLike] = None) -> Path:
    """<cache_dir or the checkpoint's folder>/<checkpoint stem>.<key>.onnx"""
    weights = Path(weights)
    folder = Path(cache_dir) if cache_dir is not None else weights.resolve().parent
    return folder / f"{weights.stem}.{key}.onnx"


def stale_exports(path: Path) -> List[Path]:
    """Other cached exports of the same checkpoint file name: made from an older version of it (or with
    another opset), they are replaced by `path`."""
    stem = path.name.split(".")[0]
    return [p for p in path.parent.glob(f"{stem}.*.onnx")
            if p != path and len(p.name.split(".")) == 3 and len(p.name.split(".")[1]) == 16]


def cached_export(model: nn.Module, weights: PathLike, loaded: CheckpointModel, opset: Optional[int] = None,
                  cache_dir: Optional[PathLike] = None) -> "tuple[Path, bool]":
    """The ONNX export of the checkpoint `weights` (whose model is `model`), reused when one with the same key
    exists next to it (or in `cache_dir`), else written there (older exports of the same file are removed).
    Returns (path, reused)."""
    opset = native_opset() if opset is None else opset
    check_opset(opset)
    sha = file_sha256(weights)
    path = cached_export_path(weights, cache_key(sha, opset, True), cache_dir)
    if path.is_file():
        return path, True
    try:
        export_onnx(model, path, loaded, sha, opset)
    except PermissionError:
        raise ValueError(f"cannot write the ONNX export to {path.parent} (permission denied); "
                         f"pass --export-cache DIR with a writable folder") from None
    for old in stale_exports(path):
        old.unlink(missing_ok=True)
    return path, False
