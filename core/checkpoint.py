"""The checkpoint format, owned here: writing, reading and describing a checkpoint.

A checkpoint is a dict saved with torch.save and read with `weights_only=True` (plain tensors and
containers only: a file from elsewhere cannot run code). Format version 2 (this one) holds:

    format_version   2
    model            the state dict (unwrapped: no DDP or compile prefixes)
    model_name       a name in src.MODELS
    num_classes      int, background included
    class_names      list of str, or None
    aux              whether the state dict has the auxiliary head
    dataset          the dataset the model was trained on (a registry name), or None
    palette          768 ints (256 RGB colours) to draw the classes with, or None (the VOC colours)
    metrics          the evaluation of the saved epoch, or None
    training         None, or what a resume needs: optimizer, lr_scheduler, scaler, next_epoch, next_step,
                     partial_loss, best_miou, best_epoch, early_stop, freeze_backbone, args, rng, world_size

Older files still load: version 1 is this project's checkpoints before the format had a version (the same
keys, training state at the top level), version 0 a raw state dict (torchvision's COCO-VOC files,
pytorch-fcn's files, other trainers' {"state_dict": ...}). A file of a newer version is refused in one line.
"""
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .palette import check_class_names, check_palette
from .platform import atomic_write

FORMAT_VERSION = 2
PathLike = Union[str, Path]
# Version 1 kept the training state at the top level of the dict under these keys.
TRAINING_KEYS = ("optimizer", "lr_scheduler", "scaler", "next_epoch", "next_step", "partial_loss", "best_miou",
                 "best_epoch", "early_stop", "args", "rng", "world_size")


@dataclass
class Checkpoint:
    """A checkpoint as read: the state dict and what the file says about it (None where it says nothing)."""

    state_dict: Dict[str, torch.Tensor]
    format_version: int = FORMAT_VERSION
    model_name: Optional[str] = None
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    aux: Optional[bool] = None
    dataset: Optional[str] = None
    palette: Optional[List[int]] = None
    metrics: Optional[Dict[str, Any]] = None
    training: Optional[Dict[str, Any]] = None
    epoch: Optional[int] = None
    path: str = "<checkpoint>"

    def to_dict(self) -> Dict[str, Any]:
        """The dict that `save_checkpoint` writes."""
        return {"format_version": FORMAT_VERSION, "model": self.state_dict, "model_name": self.model_name,
                "num_classes": self.num_classes, "class_names": self.class_names, "aux": self.aux,
                "dataset": self.dataset, "palette": self.palette, "epoch": self.epoch, "metrics": self.metrics,
                "training": self.training}


def save_checkpoint(checkpoint: Union[Checkpoint, Dict[str, Any]], path: PathLike) -> None:
    """torch.save(checkpoint) to `path` atomically (a kill mid-write leaves the previous file)."""
    data = checkpoint.to_dict() if isinstance(checkpoint, Checkpoint) else checkpoint
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError("save_checkpoint writes the current format only: build it with core.checkpoint.Checkpoint")
    atomic_write(path, lambda f: torch.save(data, f))


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """torch.load with weights_only=True, turning every way a file can be bad into one clear ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file; check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler raises anything (IndexError, KeyError, ...) on garbage bytes
        culprit = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line), None)
        if isinstance(e, pickle.UnpicklingError) and culprit:
            raise ValueError(f"{path}: refused by weights_only=True loading: it references Python objects beyond "
                             f"tensors and plain containers, which could run code ({culprit}); use a checkpoint "
                             f"of plain tensors from a source you trust") from None
        # torch wraps unpickler errors in advice to retry with weights_only=False: keep only the cause.
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        first = detail.group(1) if detail else (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first.split(". ")[0].rstrip(".")[:200]  # the cause, without torch's follow-up sentences
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first}") from None


def extract_state_dict(obj: Any, path: PathLike = "<checkpoint>") -> Dict[str, torch.Tensor]:
    """The model state dict inside a loaded file: ours ("model"), other trainers' keys, or a raw dict."""
    if isinstance(obj, dict):
        for key in ("model", "model_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds no model state dict (expected tensors, or a dict with a 'model' entry)")
    if not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: the state dict has keys that are not strings; is it a model checkpoint?")
    # Checkpoints saved from a DDP- or compile-wrapped model carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    check_finite(obj, path)
    return dict(obj)


def check_finite(state: Dict[str, torch.Tensor], path: PathLike = "<checkpoint>") -> None:
    """Raises a ValueError naming the first parameter or buffer holding NaN or inf: such a model predicts
    garbage (all one class) without any error, so it is refused on load rather than scored."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise ValueError(f"{path}: tensor {name!r} holds non-finite values ({nan} NaN, {inf} inf of "
                             f"{tensor.numel()}); the weights are damaged (a diverged or corrupted run?): use an "
                             f"earlier checkpoint")


def _typed(meta: Dict[str, Any], key: str, kind: type, path: PathLike) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    if type(value) is not kind:  # bool is an int subclass: `type` keeps "aux: 1" and "num_classes: True" out
        raise ValueError(f"{path}: checkpoint field {key!r} is {type(value).__name__} {value!r:.60}, expected "
                         f"{kind.__name__}; the file was not written by this project or was edited: re-save it")
    return value


def format_version(obj: Any) -> int:
    """2 for the current format, 1 for this project's unversioned files, 0 for a raw state dict."""
    if isinstance(obj, dict) and "format_version" in obj:
        return obj["format_version"]
    return 1 if isinstance(obj, dict) and "model" in obj and "model_name" in obj else 0


def parse_checkpoint(obj: Any, path: PathLike = "<checkpoint>") -> Checkpoint:
    """The Checkpoint in a loaded file of any known version; its metadata checked for type."""
    version = format_version(obj)
    if type(version) is not int or version < 0:
        raise ValueError(f"{path}: format_version {version!r} is not a version number; the file is damaged")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version} is newer than this code reads (up to "
                         f"{FORMAT_VERSION}); update this project to load it")
    state = extract_state_dict(obj, path)
    meta = obj if version >= 1 else {}
    if version == 1:
        training = {k: meta[k] for k in TRAINING_KEYS if k in meta} or None
    else:
        training = meta.get("training")
        if training is not None and not isinstance(training, dict):
            raise ValueError(f"{path}: checkpoint field 'training' is not a dict; the file is damaged")
    num_classes = _typed(meta, "num_classes", int, path)
    if num_classes is not None and not 1 <= num_classes <= 255:
        raise ValueError(f"{path}: num_classes {num_classes} is outside 1..255; the file is damaged")
    names = meta.get("class_names")
    if names is not None:
        names = check_class_names(names, f"{path} (class_names)")
        if num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{path}: {len(names)} class names for {num_classes} classes; the file is damaged")
    palette = meta.get("palette")
    if palette is not None:
        palette = check_palette(palette, f"{path} (palette)")
    metrics = meta.get("metrics")
    return Checkpoint(state, version, _typed(meta, "model_name", str, path), num_classes, names,
                      _typed(meta, "aux", bool, path), _typed(meta, "dataset", str, path), palette,
                      metrics if isinstance(metrics, dict) else None, training, _typed(meta, "epoch", int, path),
                      str(path))


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Reads and parses a checkpoint file of any known version."""
    return parse_checkpoint(read_checkpoint(path, map_location), path)


def describe(ckpt: Checkpoint) -> str:
    """A few lines saying what a checkpoint holds."""
    kind = {0: "raw state dict", 1: "this project, format 1 (unversioned)"}.get(ckpt.format_version,
                                                                            f"this project, format {ckpt.format_version}")
    params = sum(t.numel() for t in ckpt.state_dict.values() if t.is_floating_point())
    lines = [f"{ckpt.path}: {kind}", f"  model: {ckpt.model_name or '(not recorded)'}, {params:,} float values"
             f"{', auxiliary head' if ckpt.aux else ''}",
             f"  classes: {ckpt.num_classes or '(not recorded)'}"
             + (f" ({', '.join(ckpt.class_names[:8])}{', ...' if len(ckpt.class_names) > 8 else ''})"
                if ckpt.class_names else ""),
             f"  dataset: {ckpt.dataset or '(not recorded)'}"]
    if ckpt.training:
        t = ckpt.training
        lines.append(f"  training state: next epoch {t.get('next_epoch')}, iteration {t.get('next_step')}, best "
                     f"mIoU {float(t.get('best_miou', float('nan'))) * 100:.1f} at epoch {t.get('best_epoch')}")
    if ckpt.metrics and "mean_iou" in ckpt.metrics:
        lines.append(f"  metrics of epoch {ckpt.metrics.get('epoch')}: mIoU {ckpt.metrics['mean_iou'] * 100:.1f}")
    return "\n".join(lines)
