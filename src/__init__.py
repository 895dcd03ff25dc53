"""FCN models: dilated ResNet-50/101 FCNs (torchvision-compatible) and VGG16 FCN-32s/16s/8s (Caffe-compatible)."""
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
from .vgg_fcn import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, bilinear_kernel, fcn8s, fcn8s_atonce, fcn16s, fcn32s
from .weights import LoadReport, load_backbone_weights, load_model_weights

__all__ = [
    "AUX_MODELS", "CheckpointModel", "add_model_flags", "backbone_modules", "FCN", "FCN16s", "FCN32s", "FCN8s", "FCN8sAtOnce", "FCNHead", "LoadReport",
    "MODELS", "bilinear_kernel", "build_model", "fcn16s", "fcn32s", "fcn8s", "fcn8s_atonce", "fcn_resnet101",
    "fcn_resnet50", "guess_architecture", "load_backbone_weights", "load_model_weights", "model_from_checkpoint",
]
