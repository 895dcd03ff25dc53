"""Loading weights from local files: ImageNet backbones and whole-model checkpoints.

Everything is read with `torch.load(..., weights_only=True)`: a checkpoint from elsewhere can carry a pickle
that runs code, and this refuses it.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from core.checkpoint import extract_state_dict, read_checkpoint

# torchvision's ImageNet weights that the backbones start from, by backbone name.
BACKBONE_FILES = {
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "vgg16": "vgg16-397923af.pth",
    "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
}
# The ImageNet classifier of each trunk: in the file, not in a segmentation backbone.
_CLASSIFIER_PREFIX = {"resnet50": "fc.", "resnet101": "fc.", "mobilenet_v3_large": "classifier."}
# (name, in, out) for the 13 VGG16 convolutions; a max-pool follows the last conv of each block.
VGG16_CONVS: List[tuple] = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]
# torchvision features.<i> index of each VGG16 convolution, in order.
_VGG16_FEATURE_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


@dataclass
class LoadReport:
    """What a non-strict load did: tensors dropped for a shape mismatch, missing and unexpected keys."""

    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.dropped or self.missing or self.unexpected)

    def __str__(self) -> str:
        if self.exact:
            return "all tensors loaded"
        parts = []
        for name, keys in (("dropped (shape mismatch)", self.dropped), ("missing", self.missing),
                           ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{name}: {', '.join(keys)}")
        return "; ".join(parts)


def load_state_dict_matching(model: nn.Module, state: Dict[str, torch.Tensor]) -> LoadReport:
    """Loads the tensors whose names and shapes match; reports the rest instead of failing."""
    own = model.state_dict()
    report = LoadReport()
    kept = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.dropped.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
        else:
            kept[key] = value
    report.missing = [k for k in own if k not in kept and not any(d.startswith(k + " ") for d in report.dropped)]
    model.load_state_dict(kept, strict=False)
    return report


def load_model_weights(model: nn.Module, path: Union[str, Path], strict: bool = False) -> LoadReport:
    """Loads a whole-model checkpoint (ours, torchvision's COCO-VOC files, pytorch-fcn files) into `model`.

    Args:
        model: the model to fill (unwrapped, not DDP).
        path: the checkpoint file.
        strict: raise a ValueError unless every tensor matched by name and shape.
    Returns:
        What was dropped (shape mismatch, e.g. a 21-class head into a 5-class model), missing and unexpected.
    """
    state = extract_state_dict(read_checkpoint(path), path)
    if not set(state) & set(model.state_dict()):
        raise ValueError(f"{path}: none of its tensor names match this model; is it a checkpoint of another "
                         f"architecture? (first key: {next(iter(state))})")
    report = load_state_dict_matching(model, state)
    if strict and not report.exact:
        raise ValueError(f"{path}: does not match the model exactly: {report}")
    return report


def _fetch_torchvision_backbone(arch: str) -> Dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for `arch` from its cache, downloading them if the cache is empty."""
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights, VGG16_Weights

    weights = {"resnet50": ResNet50_Weights.IMAGENET1K_V1, "resnet101": ResNet101_Weights.IMAGENET1K_V1,
               "vgg16": VGG16_Weights.IMAGENET1K_V1,
               "mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1}[arch]
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # URLError, socket errors, SSL errors, HTTP errors: all mean "no download"
        raise ValueError(
            f"could not download {BACKBONE_FILES[arch]} for --pretrained-backbone auto ({type(e).__name__}: {e}). "
            f"Offline? Copy the file from a machine with internet ({weights.url}) and pass its path, "
            f"or put it in torch's cache ({torch.hub.get_dir()}/checkpoints/), or pass 'none' to train from scratch"
        ) from None


def vgg16_to_fcn(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision VGG16 keys to the FCN layer names; fc6/fc7 Linear weights reshaped into conv kernels."""
    out = {}
    for (name, _, _), idx in zip(VGG16_CONVS, _VGG16_FEATURE_INDICES):
        out[f"{name}.weight"] = state[f"features.{idx}.weight"]
        out[f"{name}.bias"] = state[f"features.{idx}.bias"]
    out["fc6.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    out["fc6.bias"] = state["classifier.0.bias"]
    out["fc7.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    out["fc7.bias"] = state["classifier.3.bias"]
    return out


def load_backbone_weights(model: nn.Module, arch: str, source: Optional[str]) -> None:
    """Fills a ResNet or MobileNetV3 trunk, or a VGG16 FCN, with ImageNet weights from `source`.

    Args:
        model: a torchvision ResNet or MobileNetV3 (before wrapping) or one of the VGG16 FCN classes.
        arch: a key of BACKBONE_FILES.
        source: None or "none" (keep random init), "auto" (torchvision's cache/download), or a file path.
    Raises:
        ValueError / FileNotFoundError when weights were asked for and cannot be had: never falls back to
        random weights silently.
    """
    if source is None or str(source).lower() == "none":
        return
    if str(source) == "auto":
        state = _fetch_torchvision_backbone(arch)
        where = f"torchvision {BACKBONE_FILES[arch]}"
    else:
        state = extract_state_dict(read_checkpoint(source), source)
        where = str(source)
    try:
        if arch == "vgg16":
            state = vgg16_to_fcn(state)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith(("score", "upscore"))]
        else:
            head = _CLASSIFIER_PREFIX[arch]
            state = {k: v for k, v in state.items() if not k.startswith(head)}
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith(head)]
    except (KeyError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0]
        raise ValueError(f"{where}: not torchvision {arch} ImageNet weights ({msg}); "
                         f"expected a file like {BACKBONE_FILES[arch]}") from None
    if missing or unexpected:
        raise ValueError(f"{where}: not torchvision {arch} ImageNet weights (missing {missing[:3]}, "
                         f"unexpected {list(unexpected)[:3]}); expected a file like {BACKBONE_FILES[arch]}")
