"""VGG16 FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once, layer for layer as in the original Caffe models.

One attribute per Caffe layer, named as in the Caffe prototxt (and the pytorch-fcn port), so converted
weights load one-to-one with strict=True.
"""
from typing import Dict, Optional

import torch
from torch import nn

from .weights import VGG16_CONVS, load_backbone_weights


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weight (channels, channels, k, k) of a per-channel bilinear upsampling ConvTranspose2d, as in Caffe."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = filt  # channel c upsamples into channel c only
    return weight.float()


def _upsample(channels: int, kernel_size: int, stride: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=stride, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, kernel_size))
    # Fixed bilinear interpolation, as in the paper's released models: the kernels are not trained.
    layer.weight.requires_grad_(False)
    return layer


def _score(in_channels: int, num_classes: int) -> nn.Conv2d:
    # Score layers start at zero, as in the reference: the initial prediction is uniform and the skip
    # connections add nothing until they learn to.
    layer = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


_POOL_AFTER = {"conv1_2": "pool1", "conv2_2": "pool2", "conv3_3": "pool3", "conv4_3": "pool4", "conv5_3": "pool5"}


class _VGG16FCNBase(nn.Module):
    """VGG16 trunk with conv1_1 padded by 100 so that any input size survives the 32x reduction and fc6."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        for name, cin, cout in VGG16_CONVS:
            padding = 100 if name == "conv1_1" else 1
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=padding))
            setattr(self, "relu" + name[4:], nn.ReLU(inplace=True))
            if name in _POOL_AFTER:
                setattr(self, _POOL_AFTER[name], nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = _score(4096, num_classes)

    def trunk(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns pool3 (1/8), pool4 (1/16) and the fc7 features (1/32), all offset by the 100 px pad."""
        feats = {}
        h = x
        for name, _, _ in VGG16_CONVS:
            h = getattr(self, "relu" + name[4:])(getattr(self, name)(h))
            if name in _POOL_AFTER:
                pool = _POOL_AFTER[name]
                h = getattr(self, pool)(h)
                feats[pool] = h
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        feats["fc7"] = h
        return feats


class FCN32s(_VGG16FCNBase):
    """FCN-32s: score_fr upsampled 32x by one frozen bilinear deconvolution, cropped at offset 19."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__(num_classes)
        self.upscore = _upsample(num_classes, 64, 32)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.score_fr(self.trunk(x)["fc7"])  # 1/32
        h = self.upscore(h)  # 1/1, plus margins from the pad
        h = h[:, :, 19:19 + x.shape[2], 19:19 + x.shape[3]]
        return {"out": h.contiguous()}


class FCN16s(_VGG16FCNBase):
    """FCN-16s: 2x upsampled score_fr fused with the pool4 score, then upsampled 16x."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__(num_classes)
        self.score_pool4 = _score(512, num_classes)
        self.upscore2 = _upsample(num_classes, 4, 2)
        self.upscore16 = _upsample(num_classes, 32, 16)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.trunk(x)
        upscore2 = self.upscore2(self.score_fr(feats["fc7"]))  # 1/16
        score_pool4 = self.score_pool4(feats["pool4"])
        score_pool4c = score_pool4[:, :, 5:5 + upscore2.shape[2], 5:5 + upscore2.shape[3]]  # 1/16
        h = self.upscore16(upscore2 + score_pool4c)  # 1/1
        h = h[:, :, 27:27 + x.shape[2], 27:27 + x.shape[3]]
        return {"out": h.contiguous()}


class FCN8s(_VGG16FCNBase):
    """FCN-8s: FCN-16s' fused score upsampled 2x and fused with the pool3 score, then upsampled 8x.

    Args:
        num_classes: output channels.
        skip_scales: factors applied to pool4 and pool3 before scoring; (0.01, 0.0001) gives the
            "at-once" variant that trains all streams together from the start.
    """

    def __init__(self, num_classes: int = 21, skip_scales: Optional[tuple] = None) -> None:
        super().__init__(num_classes)
        self.skip_scales = skip_scales
        self.score_pool3 = _score(256, num_classes)
        self.score_pool4 = _score(512, num_classes)
        self.upscore2 = _upsample(num_classes, 4, 2)
        self.upscore8 = _upsample(num_classes, 16, 8)
        self.upscore_pool4 = _upsample(num_classes, 4, 2)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.trunk(x)
        pool4, pool3 = feats["pool4"], feats["pool3"]
        if self.skip_scales is not None:
            pool4, pool3 = pool4 * self.skip_scales[0], pool3 * self.skip_scales[1]
        upscore2 = self.upscore2(self.score_fr(feats["fc7"]))  # 1/16
        score_pool4c = self.score_pool4(pool4)[:, :, 5:5 + upscore2.shape[2], 5:5 + upscore2.shape[3]]
        upscore_pool4 = self.upscore_pool4(upscore2 + score_pool4c)  # 1/8
        score_pool3c = self.score_pool3(pool3)[:, :, 9:9 + upscore_pool4.shape[2], 9:9 + upscore_pool4.shape[3]]
        h = self.upscore8(upscore_pool4 + score_pool3c)  # 1/1
        h = h[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]]
        return {"out": h.contiguous()}


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__(num_classes, skip_scales=(0.01, 0.0001))


def _vgg_fcn(cls: type, num_classes: int, aux: bool, pretrained_backbone: Optional[str]) -> nn.Module:
    if aux:
        raise ValueError(f"{cls.__name__} has no auxiliary head; build it with aux=False (--no-aux)")
    model = cls(num_classes)
    load_backbone_weights(model, "vgg16", pretrained_backbone)
    return model


def fcn32s(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> FCN32s:
    """VGG16 FCN-32s. Args: num_classes; aux must be False; pretrained_backbone: None, "auto" or a file."""
    return _vgg_fcn(FCN32s, num_classes, aux, pretrained_backbone)


def fcn16s(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> FCN16s:
    """VGG16 FCN-16s. Args as `fcn32s`."""
    return _vgg_fcn(FCN16s, num_classes, aux, pretrained_backbone)


def fcn8s(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> FCN8s:
    """VGG16 FCN-8s (staged training variant). Args as `fcn32s`."""
    return _vgg_fcn(FCN8s, num_classes, aux, pretrained_backbone)


def fcn8s_atonce(num_classes: int = 21, aux: bool = False, pretrained_backbone: Optional[str] = None) -> FCN8sAtOnce:
    """VGG16 FCN-8s at-once (skip scaling). Args as `fcn32s`."""
    return _vgg_fcn(FCN8sAtOnce, num_classes, aux, pretrained_backbone)
