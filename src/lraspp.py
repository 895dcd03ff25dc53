"""Lite R-ASPP on a dilated MobileNetV3-Large, state-dict compatible with torchvision's
lraspp_mobilenet_v3_large, so its COCO-VOC file loads with strict=True."""
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from .deeplabv3 import mobilenet_v3_stages


class LRASPPHead(nn.Module):
    """High features (1/16) through a 1x1 conv gated by their global context, upsampled to the low features
    (1/8) and each classified by a 1x1 conv; the two scores are summed."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        # A sigmoid gate instead of ASPP's pooled BN branch: cheap, and no BN on a 1x1 map.
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        low, high = features["low"], features["high"]
        x = self.cbr(high) * self.scale(high)  # (N, 128, H/16, W/16)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)  # 1/8
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """Backbone returning {"low", "high"}, the LR-ASPP head, logits resized to the input. No aux head.

    Args:
        backbone: module returning an OrderedDict with "low" and "high".
        low_channels / high_channels: their channel counts.
        num_classes: output channels, background included.
    """

    def __init__(self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))  # (N, C, H/8, W/8)
        return OrderedDict(out=F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False))


def lraspp_mobilenet_v3_large(num_classes: int = 21, aux: bool = False,
                              pretrained_backbone: Optional[str] = None) -> LRASPP:
    """LR-ASPP on a dilated MobileNetV3-Large: low features from C2 (stride 8), high from C5 (stride 16).

    Args:
        num_classes: number of output channels, background included.
        aux: must be False: LR-ASPP has no auxiliary head.
        pretrained_backbone: None/"none", "auto" (torchvision cache or download) or a local .pth file.
    """
    if aux:
        raise ValueError("lraspp_mobilenet_v3_large has no auxiliary head; drop --aux")
    features, low, high = mobilenet_v3_stages(pretrained_backbone)
    backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    return LRASPP(backbone, features[low].out_channels, features[high].out_channels, num_classes)
