"""PSPNet: the FCNs' dilated ResNet-50/101 with a pyramid pooling module (MMSegmentation's PSPHead) and the
FCN aux head on layer3."""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from .fcn_model import FCN, FCNHead, dilated_resnet


class AdaptiveAvgPool(nn.Module):
    """nn.AdaptiveAvgPool2d's bins (start floor(i * H / s), end ceil((i + 1) * H / s)) as two matrix products
    built from the input's size at run time: the same averages, but an exported model (TorchScript, ONNX)
    keeps them right at every input size, where a traced adaptive pool freezes the bins of the tracing size.
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def bins(self, length: Union[int, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """(s, length): row i averages the positions of bin i."""
        n = self.output_size
        position = torch.arange(length, device=like.device)
        index = torch.arange(n, device=like.device)[:, None]
        inside = (position >= index * length // n) & (position < ((index + 1) * length + n - 1) // n)
        return inside.to(like.dtype) / inside.sum(1, keepdim=True).to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.bins(x.shape[-2], x), self.bins(x.shape[-1], x)
        return rows @ x @ cols.transpose(0, 1)  # (s, H) @ (N, C, H, W) @ (W, s) -> (N, C, s, s)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class PSPHead(nn.Module):
    """Pyramid pooling: the features averaged into 1x1, 2x2, 3x3 and 6x6 grids, each reduced to `channels`
    by a 1x1 conv, upsampled back and concatenated with the features; a 3x3 bottleneck, dropout, 1x1 classifier.

    Args:
        in_channels: channels of the features (2048 for ResNet-50/101).
        num_classes: output channels.
        pool_scales: grid sizes of the pyramid.
        channels: width of each branch and of the bottleneck (512 as MMSegmentation's R-50-D8 configs).
    """

    def __init__(self, in_channels: int, num_classes: int, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 channels: int = 512) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(scale), *conv_bn_relu(in_channels, channels)) for scale in pool_scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(pool_scales) * channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        # Each grid cell sees a fixed fraction of the image: context at four scales, whatever the input size.
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
                  for branch in self.psp_modules]
        x = self.bottleneck(torch.cat([x, *pooled], dim=1))  # (N, 2048 + 4 * 512, h, w) -> (N, 512, h, w)
        return self.conv_seg(self.dropout(x))


class PSPNet(FCN):
    """Backbone -> PSPHead on "out" (and an FCNHead on "aux"), logits resized to the input; the forward pass
    is the FCN's, only the head differs."""


def _pspnet(trunk: nn.Module, num_classes: int, aux: bool) -> PSPNet:
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    backbone = IntermediateLayerGetter(trunk, return_layers=return_layers)
    return PSPNet(backbone, PSPHead(2048, num_classes), FCNHead(1024, num_classes) if aux else None)


def pspnet_resnet50(num_classes: int = 21, aux: bool = True, pretrained_backbone: Optional[str] = None) -> PSPNet:
    """PSPNet on a ResNet-50 with layer3/layer4 dilated (output stride 8).

    Args:
        num_classes: number of output channels, background included.
        aux: add the auxiliary FCNHead on layer3.
        pretrained_backbone: None/"none", "auto" (torchvision cache or download) or a local .pth file.
    """
    trunk = dilated_resnet("resnet50", pretrained_backbone)
    return _pspnet(trunk, num_classes, aux)


def pspnet_resnet101(num_classes: int = 21, aux: bool = True, pretrained_backbone: Optional[str] = None) -> PSPNet:
    """PSPNet on a ResNet-101 with layer3/layer4 dilated (output stride 8). Args as `pspnet_resnet50`."""
    trunk = dilated_resnet("resnet101", pretrained_backbone)
    return _pspnet(trunk, num_classes, aux)
