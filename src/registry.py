"""One entry per model: everything the rest of the code needs to know about it.

Adding a model is one file (its module and builder) plus one `register(...)` call here; nothing else in the
project branches on model names. An entry says how to build the model, whether it has an aux head and
where, which modules are its pretrained backbone (--freeze-backbone) and which parameter-group rule the
optimizer uses, its ImageNet backbone file, how to recognise its raw state dicts, and torchvision's
counterpart (tools/benchmark.py).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn
from torchvision.models import segmentation as tv_segmentation

from . import param_groups
from .deeplabv3 import DeepLabV3, deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101
from .fcn_model import FCN, fcn_resnet50, fcn_resnet101
from .lraspp import LRASPP, lraspp_mobilenet_v3_large
from .pspnet import PSPNet, pspnet_resnet50, pspnet_resnet101
from .unet import UNet, unet, unet_deconv
from .vgg_fcn import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, fcn8s, fcn8s_atonce, fcn16s, fcn32s
from .weights import BACKBONE_FILES, VGG16_CONVS

StateDict = Mapping[str, torch.Tensor]
ParamRule = Callable[[nn.Module, float, float], List[Dict]]


@dataclass(frozen=True)
class ModelSpec:
    """What the code needs to know about one model.

    Args:
        builder: `builder(num_classes=, aux=, pretrained_backbone=) -> nn.Module` returning {"out"[, "aux"]}.
        model_type: the class it builds (to find the entry of a model object).
        summary: one line for --help and the README.
        fingerprint: True for a raw state dict of this model (validation.py/predict.py on a foreign file).
        classes_key: state-dict key of the last classifier weight (its first dimension = number of classes).
        aux_site: where the aux head sits ("layer3", ...); None: the model has none.
        aux_default: whether it is built with its aux head unless told otherwise.
        backbone: the modules that start from ImageNet weights (--freeze-backbone); None: none (from scratch).
        param_rule: the optimizer's parameter groups (src/param_groups.py).
        backbone_arch: key of weights.BACKBONE_FILES for --pretrained-backbone; None: trains from scratch.
        torchvision: torchvision's builder of the same network (the benchmark's baseline); None: none exists.
        bn_stride: stride of the coarsest BatchNorm'd feature map (None: no BatchNorm): with one image per
            batch, a crop this small leaves BN one value per channel.
        pooled_bn: a BatchNorm after global pooling (ASPP, pyramid pooling): never trainable with one image.
    """

    builder: Callable[..., nn.Module]
    model_type: type
    summary: str
    fingerprint: Callable[[StateDict], bool]
    classes_key: str
    aux_site: Optional[str] = None
    aux_default: bool = False
    backbone: Optional[Callable[[nn.Module], List[nn.Module]]] = None
    param_rule: ParamRule = param_groups.plain
    backbone_arch: Optional[str] = None
    torchvision: Optional[Callable[..., nn.Module]] = None
    bn_stride: Optional[int] = None
    pooled_bn: bool = False

    @property
    def backbone_file(self) -> Optional[str]:
        """torchvision's ImageNet file the backbone starts from, e.g. resnet50-0676ba61.pth."""
        return BACKBONE_FILES[self.backbone_arch] if self.backbone_arch else None

    def batch_of_one_problem(self, crop: int) -> Optional[str]:
        """Why one image per batch cannot train at this crop size, or None when it can."""
        if self.pooled_bn:
            return "its global-pooling branch ends in BatchNorm, which needs more than one value per channel"
        if self.bn_stride is not None and crop <= self.bn_stride:
            return (f"its 1/{self.bn_stride}-resolution features are 1x1, so BatchNorm sees one value per channel; "
                    f"use --crop-size {self.bn_stride + 1} or more")
        return None


REGISTRY: Dict[str, ModelSpec] = {}
MODELS: Dict[str, Callable[..., nn.Module]] = {}  # name -> builder, kept in step with REGISTRY


def register(name: str, spec: ModelSpec) -> ModelSpec:
    """Adds a model under `name` (what --model takes)."""
    if name in REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    REGISTRY[name] = spec
    MODELS[name] = spec.builder
    return spec


def unregister(name: str) -> None:
    """Removes a model added with `register` (for code that adds one for a while, like a test)."""
    REGISTRY.pop(name)
    MODELS.pop(name)


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def spec_of(model: nn.Module) -> ModelSpec:
    """The entry of a model object: the most specific registered class in its MRO (models of one class share
    their backbone and parameter rule)."""
    for cls in type(model).__mro__:
        for spec in REGISTRY.values():
            if spec.model_type is cls:
                return spec
    raise ValueError(f"{type(model).__name__} is not a model of the registry ({', '.join(REGISTRY)}); add it with "
                     f"src.register (docs/extending.md), which also says its parameter groups and backbone")


# ---------------------------------------------------------------------------------------------- fingerprints

def has_keys(*keys: str) -> Callable[[StateDict], bool]:
    return lambda state: all(k in state for k in keys)


def resnet_blocks(layer3_blocks: int, *keys: str) -> Callable[[StateDict], bool]:
    """A dilated-ResNet model: its head keys, and layer3's block count (6 in ResNet-50, 23 in ResNet-101)."""
    def match(state: StateDict) -> bool:
        blocks = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
        return "backbone.conv1.weight" in state and len(blocks) == layer3_blocks and all(k in state for k in keys)
    return match


def _without(*keys: str) -> Callable[[StateDict], bool]:
    return lambda state: not any(k in state for k in keys)


def _all(*tests: Callable[[StateDict], bool]) -> Callable[[StateDict], bool]:
    return lambda state: all(t(state) for t in tests)


# ----------------------------------------------------------------------------------------- backbone modules

def trunk(model: nn.Module) -> List[nn.Module]:
    return [model.backbone]


def vgg16_layers(model: nn.Module) -> List[nn.Module]:
    """conv1_1 ... conv5_3 plus fc6 and fc7, VGG16's fully connected layers as convolutions."""
    return [getattr(model, name) for name, _, _ in VGG16_CONVS] + [model.fc6, model.fc7]


# -------------------------------------------------------------------------------------------------- entries

_FCN_HEAD = "classifier.1.running_mean"  # FCNHead's BN at index 1; ASPP and PSP heads have other keys there
_ASPP = "classifier.0.convs.0.0.weight"
_PSP = "classifier.psp_modules.0.1.weight"
_MOBILENET = "backbone.0.0.weight"  # MobileNetV3's features[0] (a ResNet's stem is backbone.conv1)

for _name, _builder, _blocks, _arch in (("fcn_resnet50", fcn_resnet50, 6, "resnet50"),
                                        ("fcn_resnet101", fcn_resnet101, 23, "resnet101")):
    register(_name, ModelSpec(
        _builder, FCN, f"FCN on a dilated {_arch} (output stride 8)", resnet_blocks(_blocks, _FCN_HEAD),
        "classifier.4.weight", aux_site="layer3", aux_default=True, backbone=trunk,
        param_rule=param_groups.backbone_and_heads, backbone_arch=_arch,
        torchvision=getattr(tv_segmentation, _name), bn_stride=8))

_VGG = ((fcn32s, FCN32s, "upscore.weight", "FCN-32s"), (fcn16s, FCN16s, "upscore16.weight", "FCN-16s"),
        (fcn8s, FCN8s, "upscore8.weight", "FCN-8s"), (fcn8s_atonce, FCN8sAtOnce, "upscore8.weight", "FCN-8s at-once"))
for _builder, _cls, _key, _what in _VGG:
    # FCN-8s and its at-once variant have the same tensors: both fingerprints match, the user picks.
    register(_builder.__name__, ModelSpec(
        _builder, _cls, f"VGG16 {_what} (the Caffe model)", has_keys(_key, "score_fr.weight"), "score_fr.weight",
        backbone=vgg16_layers, param_rule=param_groups.caffe, backbone_arch="vgg16"))

for _name, _builder, _blocks, _arch in (("deeplabv3_resnet50", deeplabv3_resnet50, 6, "resnet50"),
                                        ("deeplabv3_resnet101", deeplabv3_resnet101, 23, "resnet101")):
    register(_name, ModelSpec(
        _builder, DeepLabV3, f"DeepLabV3 (ASPP 12/24/36) on a dilated {_arch} (output stride 8)",
        resnet_blocks(_blocks, _ASPP), "classifier.4.weight", aux_site="layer3", aux_default=True, backbone=trunk,
        param_rule=param_groups.backbone_and_heads, backbone_arch=_arch,
        torchvision=getattr(tv_segmentation, _name), bn_stride=8, pooled_bn=True))

register("deeplabv3_mobilenet_v3_large", ModelSpec(
    deeplabv3_mobilenet_v3_large, DeepLabV3, "DeepLabV3 (ASPP 12/24/36) on a dilated MobileNetV3-Large (stride 16)",
    has_keys(_MOBILENET, _ASPP), "classifier.4.weight", aux_site="the C2 stage (stride 8)", aux_default=True,
    backbone=trunk, param_rule=param_groups.backbone_and_heads, backbone_arch="mobilenet_v3_large",
    torchvision=tv_segmentation.deeplabv3_mobilenet_v3_large, bn_stride=16, pooled_bn=True))

register("lraspp_mobilenet_v3_large", ModelSpec(
    lraspp_mobilenet_v3_large, LRASPP, "Lite R-ASPP on a dilated MobileNetV3-Large (low 1/8, high 1/16 features)",
    has_keys(_MOBILENET, "classifier.high_classifier.weight"), "classifier.high_classifier.weight", backbone=trunk,
    param_rule=param_groups.backbone_and_heads, backbone_arch="mobilenet_v3_large",
    torchvision=tv_segmentation.lraspp_mobilenet_v3_large, bn_stride=16))

register("unet", ModelSpec(
    unet, UNet, "U-Net, base 64 channels, bilinear upsampling, from scratch",
    _all(has_keys("in_conv.0.weight", "out_conv.weight"), _without("up1.up.weight")), "out_conv.weight",
    bn_stride=16))
register("unet_deconv", ModelSpec(
    unet_deconv, UNet, "U-Net, base 64 channels, transposed-convolution upsampling (the paper's), from scratch",
    has_keys("in_conv.0.weight", "out_conv.weight", "up1.up.weight"), "out_conv.weight", bn_stride=16))

for _name, _builder, _blocks, _arch in (("pspnet_resnet50", pspnet_resnet50, 6, "resnet50"),
                                        ("pspnet_resnet101", pspnet_resnet101, 23, "resnet101")):
    register(_name, ModelSpec(
        _builder, PSPNet, f"PSPNet (pyramid pooling 1/2/3/6) on a dilated {_arch} (output stride 8)",
        resnet_blocks(_blocks, _PSP), "classifier.conv_seg.weight", aux_site="layer3", aux_default=True,
        backbone=trunk, param_rule=param_groups.backbone_and_heads, backbone_arch=_arch, bn_stride=8,
        pooled_bn=True))
