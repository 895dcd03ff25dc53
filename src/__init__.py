"""FCN models: dilated ResNet-50/101 FCNs (torchvision-compatible) and VGG16 FCN-32s/16s/8s (Caffe-compatible)."""
from typing import Callable, Dict, Optional

from torch import nn

from .fcn_model import FCN, FCNHead, fcn_resnet50, fcn_resnet101
from .vgg_fcn import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, bilinear_kernel, fcn8s, fcn8s_atonce, fcn16s, fcn32s
from .weights import LoadReport, load_backbone_weights, load_model_weights, read_checkpoint

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "fcn_resnet50": fcn_resnet50,
    "fcn_resnet101": fcn_resnet101,
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "fcn8s_atonce": fcn8s_atonce,
}
# Only the ResNet models have an auxiliary head (on layer3).
AUX_MODELS = ("fcn_resnet50", "fcn_resnet101")


def build_model(name: str, num_classes: int = 21, aux: Optional[bool] = None,
                pretrained_backbone: Optional[str] = None) -> nn.Module:
    """Builds a model by name.

    Args:
        name: one of MODELS.
        num_classes: output channels, background included.
        aux: auxiliary head; None means the model's default (on for ResNet FCNs, off for VGG FCNs).
        pretrained_backbone: None/"none", "auto" or a local file of torchvision ImageNet weights.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if aux is None:
        aux = name in AUX_MODELS
    return MODELS[name](num_classes=num_classes, aux=aux, pretrained_backbone=pretrained_backbone)


__all__ = [
    "AUX_MODELS", "FCN", "FCN16s", "FCN32s", "FCN8s", "FCN8sAtOnce", "FCNHead", "LoadReport", "MODELS",
    "bilinear_kernel", "build_model", "fcn16s", "fcn32s", "fcn8s", "fcn8s_atonce", "fcn_resnet101",
    "fcn_resnet50", "load_backbone_weights", "load_model_weights", "read_checkpoint",
]
