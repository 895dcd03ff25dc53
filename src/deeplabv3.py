"""DeepLabV3 (atrous spatial pyramid pooling) on a dilated ResNet-50/101 or MobileNetV3-Large, state-dict
compatible with torchvision's segmentation DeepLabV3, so its COCO-VOC files load with strict=True."""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models._utils import IntermediateLayerGetter

from .fcn_model import FCN, FCNHead, dilated_resnet
from .weights import load_backbone_weights


class DeepLabV3(FCN):
    """Backbone -> DeepLabHead on "out" (and an FCNHead on "aux"), logits resized to the input; the forward
    pass is the FCN's, only the head differs."""


class ASPPConv(nn.Sequential):
    """3x3 atrous conv, BN, ReLU: one branch of the pyramid, seeing context `dilation` pixels away."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv, BN, ReLU, broadcast back to the feature size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)  # (N, C, 1, 1)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """A 1x1 branch, one atrous branch per rate and image pooling, concatenated and projected to 256."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        branches: List[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        ]
        branches += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))  # (N, 5 * 256, h, w) in


class DeepLabHead(nn.Sequential):
    """ASPP (rates 12, 24, 36 at output stride 8 or 16, as the paper and torchvision), 3x3 conv, BN, ReLU,
    1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, num_classes, 1),
        )


def _deeplabv3_resnet(trunk: nn.Module, num_classes: int, aux: bool) -> DeepLabV3:
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    backbone = IntermediateLayerGetter(trunk, return_layers=return_layers)
    return DeepLabV3(backbone, DeepLabHead(2048, num_classes), FCNHead(1024, num_classes) if aux else None)


def deeplabv3_resnet50(num_classes: int = 21, aux: bool = True,
                       pretrained_backbone: Optional[str] = None) -> DeepLabV3:
    """DeepLabV3 on a ResNet-50 with layer3/layer4 dilated (output stride 8).

    Args:
        num_classes: number of output channels, background included.
        aux: add the auxiliary FCNHead on layer3.
        pretrained_backbone: None/"none", "auto" (torchvision cache or download) or a local .pth file.
    """
    trunk = dilated_resnet("resnet50", pretrained_backbone)
    return _deeplabv3_resnet(trunk, num_classes, aux)


def deeplabv3_resnet101(num_classes: int = 21, aux: bool = True,
                        pretrained_backbone: Optional[str] = None) -> DeepLabV3:
    """DeepLabV3 on a ResNet-101 with layer3/layer4 dilated (output stride 8). Args as `deeplabv3_resnet50`."""
    trunk = dilated_resnet("resnet101", pretrained_backbone)
    return _deeplabv3_resnet(trunk, num_classes, aux)


def mobilenet_v3_stages(pretrained_backbone: Optional[str]) -> tuple:
    """MobileNetV3-Large's `features` with the last stage dilated (output stride 16), and the indices of its
    C2 (stride 8, 40 channels) and C5 (stride 16, 960 channels) blocks: what torchvision's segmentation
    builders take from it."""
    trunk = mobilenet_v3_large(weights=None, dilated=True)
    load_backbone_weights(trunk, "mobilenet_v3_large", pretrained_backbone)
    features = trunk.features
    # Strided blocks start the stages C1 .. C4; the first and last blocks are C0 and C5.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    return features, stages[-4], stages[-1]


def deeplabv3_mobilenet_v3_large(num_classes: int = 21, aux: bool = True,
                                 pretrained_backbone: Optional[str] = None) -> DeepLabV3:
    """DeepLabV3 on a dilated MobileNetV3-Large (output stride 16), the aux FCNHead on the C2 stage (stride 8).
    Args as `deeplabv3_resnet50`."""
    features, low, high = mobilenet_v3_stages(pretrained_backbone)
    return_layers = {str(high): "out", **({str(low): "aux"} if aux else {})}
    backbone = IntermediateLayerGetter(features, return_layers=return_layers)
    aux_classifier = FCNHead(features[low].out_channels, num_classes) if aux else None
    return DeepLabV3(backbone, DeepLabHead(features[high].out_channels, num_classes), aux_classifier)
