"""Inference-time simplifications that keep the function the same (up to float rounding)."""
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

# Containers whose children run in registration order, so a BatchNorm2d registered right after a Conv2d
# normalises that convolution's output (torchvision's ResNet blocks register conv1, bn1, conv2, bn2, ...).
_SEQUENTIAL = (nn.Sequential, IntermediateLayerGetter, Bottleneck, BasicBlock)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Folds each eval-mode BatchNorm2d into the convolution before it (in place; returns `model`).

    A frozen BN is an affine map per channel, so it can be merged into the conv's weights and bias:
    one pass over the activations instead of two. Only for inference: the model must be in eval mode.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BN statistics must be frozen)")
    for parent in model.modules():
        if not isinstance(parent, _SEQUENTIAL):
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module, device: torch.device, channels_last: bool = True,
                          fold: bool = True) -> nn.Module:
    """Eval mode, no auxiliary head (its output is never used at inference), BN folded (unless `fold` is
    False: folding moves the last bits of the logits), on `device`."""
    model.eval()
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None
    if fold:
        fold_batchnorm(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)
