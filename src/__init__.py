"""Segmentation models: FCNs (dilated ResNet, torchvision-compatible; VGG16 FCN-32s/16s/8s, Caffe-compatible),
DeepLabV3 and LR-ASPP (torchvision-compatible), U-Net and PSPNet, all in one registry (src/registry.py)."""
from .deeplabv3 import DeepLabV3, deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101
from .factory import (
                      AUX_MODELS,
                      MODELS,
                      CheckpointModel,
                      add_model_flags,
                      backbone_modules,
                      build_model,
                      guess_architecture,
                      model_from_checkpoint,
)
from .fcn_model import FCN, FCNHead, fcn_resnet50, fcn_resnet101
from .lraspp import LRASPP, lraspp_mobilenet_v3_large
from .pspnet import PSPNet, pspnet_resnet50, pspnet_resnet101
from .registry import REGISTRY, ModelSpec, get_spec, register, spec_of, unregister
from .unet import UNet, unet, unet_deconv
from .vgg_fcn import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, bilinear_kernel, fcn8s, fcn8s_atonce, fcn16s, fcn32s
from .weights import LoadReport, load_backbone_weights, load_model_weights

__all__ = [
    "AUX_MODELS", "CheckpointModel", "add_model_flags", "backbone_modules", "FCN", "FCN16s", "FCN32s", "FCN8s", "FCN8sAtOnce", "FCNHead", "LoadReport",
    "MODELS", "bilinear_kernel", "build_model", "fcn16s", "fcn32s", "fcn8s", "fcn8s_atonce", "fcn_resnet101",
    "fcn_resnet50", "guess_architecture", "load_backbone_weights", "load_model_weights", "model_from_checkpoint",
    "DeepLabV3", "LRASPP", "ModelSpec", "PSPNet", "REGISTRY", "UNet", "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet101", "deeplabv3_resnet50", "get_spec", "lraspp_mobilenet_v3_large", "pspnet_resnet101",
    "pspnet_resnet50", "register", "spec_of", "unet", "unet_deconv", "unregister",
]
