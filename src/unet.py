"""The original U-Net (Ronneberger et al. 2015) with BatchNorm: 4 down / 4 up stages with skip
concatenation, trained from scratch."""
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

DEPTH = 4  # 2x2 max-pools: the bottom of the U is at 1/16


class DoubleConv(nn.Sequential):
    """(3x3 conv, BN, ReLU) twice; padding 1 keeps the size, so skips need no cropping."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None) -> None:
        mid_channels = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2, stride=2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """x2 upsampling, concatenation with the skip from the encoder, then a DoubleConv.

    Args:
        in_channels: channels of the concatenation.
        out_channels: channels after the DoubleConv.
        bilinear: parameter-free bilinear upsampling (the input keeps its channels, so the level below has
            half as many); False: a learned 2x2 transposed convolution that halves the channels, as the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning {"out": logits} at the input's size.

    Any height and width work: the input is zero-padded at the bottom and right to a multiple of 16 (so that
    every max-pool halves exactly and each upsampled map meets its skip at the same size), and the logits
    are cropped back.

    Args:
        num_classes: output channels, background included.
        in_channels: image channels.
        base_channels: width of the first stage; doubled at each of the 4 levels (64 -> 1024, as the paper).
        bilinear: see `Up`.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 64, bilinear: bool = True) -> None:
        super().__init__()
        c = base_channels
        factor = 2 if bilinear else 1
        self.in_conv = DoubleConv(in_channels, c)
        self.down1, self.down2, self.down3 = Down(c, 2 * c), Down(2 * c, 4 * c), Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.out_conv = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        multiple = 2 ** DEPTH
        x = F.pad(x, [0, (multiple - width % multiple) % multiple, 0, (multiple - height % multiple) % multiple])
        x1 = self.in_conv(x)  # 1
        x2 = self.down1(x1)  # 1/2
        x3 = self.down2(x2)  # 1/4
        x4 = self.down3(x3)  # 1/8
        x = self.down4(x4)  # 1/16
        x = self.up4(self.up3(self.up2(self.up1(x, x4), x3), x2), x1)  # back to 1
        return OrderedDict(out=self.out_conv(x)[..., :height, :width])


def _check_scratch(name: str, aux: bool, pretrained_backbone: Optional[str]) -> None:
    if aux:
        raise ValueError(f"{name} has no auxiliary head; drop --aux")
    # "auto" is train.py's default: for a model without a pretrained backbone it asks for nothing.
    if pretrained_backbone is not None and str(pretrained_backbone).lower() not in ("none", "auto"):
        raise ValueError(f"{name} trains from scratch and has no ImageNet backbone to load "
                         f"{pretrained_backbone}; drop --pretrained-backbone")


def unet(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> UNet:
    """U-Net with bilinear upsampling, base 64 channels.

    Args:
        num_classes: number of output channels, background included.
        aux: must be False (no auxiliary head).
        pretrained_backbone: must be None, "none" or "auto" (nothing to load: it trains from scratch).
    """
    _check_scratch("unet", aux, pretrained_backbone)
    return UNet(num_classes, bilinear=True)


def unet_deconv(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> UNet:
    """U-Net with learned 2x2 transposed-convolution upsampling, as the paper. Args as `unet`."""
    _check_scratch("unet_deconv", aux, pretrained_backbone)
    return UNet(num_classes, bilinear=False)
