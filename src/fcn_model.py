"""FCN with a dilated ResNet-50/101 trunk, state-dict compatible with torchvision's segmentation FCN."""
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter

from .weights import load_backbone_weights


class FCNHead(nn.Sequential):
    """3x3 conv to in_channels/4, BN, ReLU, dropout, then a 1x1 classifier (indices 0, 1, 4 hold weights)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        inter_channels = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter_channels, channels, 1),
        )


class FCN(nn.Module):
    """Backbone returning {"out": C5[, "aux": C4]} at stride 8, heads on each, logits resized to the input.

    Args:
        backbone: module returning an OrderedDict with "out" (and "aux" when aux_classifier is given).
        classifier: head applied to "out".
        aux_classifier: optional head applied to "aux"; only used for its extra training signal.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)  # "out": (N, 2048, H/8, W/8), "aux": (N, 1024, H/8, W/8)
        result = OrderedDict()
        # Bilinear upsampling of coarse logits (not a learned deconvolution): it is what the published
        # torchvision checkpoints were trained with, and it has no parameters to fit.
        out = self.classifier(features["out"])
        result["out"] = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is not None and "aux" in features:
            aux = self.aux_classifier(features["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def _fcn_resnet(trunk: nn.Module, num_classes: int, aux: bool) -> FCN:
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    # IntermediateLayerGetter drops avgpool/fc (everything after layer4), which keeps the state-dict keys
    # identical to torchvision's `backbone.*`.
    backbone = IntermediateLayerGetter(trunk, return_layers=return_layers)
    aux_classifier = FCNHead(1024, num_classes) if aux else None
    return FCN(backbone, FCNHead(2048, num_classes), aux_classifier)


def dilated_resnet(arch: str, pretrained_backbone: Optional[str] = None) -> ResNet:
    """torchvision's ResNet-50/101 ("resnet50", "resnet101") with layer3/layer4 dilated (output stride 8), its
    ImageNet weights from a local file (see load_backbone_weights): the trunk of the FCNs, DeepLabV3 and PSPNet."""
    trunk = {"resnet50": resnet50, "resnet101": resnet101}[arch](weights=None,
                                                                replace_stride_with_dilation=[False, True, True])
    load_backbone_weights(trunk, arch, pretrained_backbone)
    return trunk


def fcn_resnet50(num_classes: int = 21, aux: bool = True, pretrained_backbone: Optional[str] = None) -> FCN:
    """FCN on a ResNet-50 with layer3/layer4 dilated (output stride 8).

    Args:
        num_classes: number of output channels, background included.
        aux: add the auxiliary FCNHead on layer3.
        pretrained_backbone: None/"none", "auto" (torchvision cache or download) or a local .pth file.
    """
    trunk = dilated_resnet("resnet50", pretrained_backbone)
    return _fcn_resnet(trunk, num_classes, aux)


def fcn_resnet101(num_classes: int = 21, aux: bool = True, pretrained_backbone: Optional[str] = None) -> FCN:
    """FCN on a ResNet-101 with layer3/layer4 dilated (output stride 8). Args as `fcn_resnet50`."""
    trunk = dilated_resnet("resnet101", pretrained_backbone)
    return _fcn_resnet(trunk, num_classes, aux)
