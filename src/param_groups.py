"""Parameter-group rules, one per kind of model: which parameters share a learning rate and a weight decay.

Each rule maps (model, lr, weight_decay) to optimizer groups; frozen parameters are left out, and a group
without its own "lr" or "weight_decay" gets the run's.
"""
from typing import Dict, List

from torch import nn


def _trainable(module: nn.Module) -> List[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def backbone_and_heads(model: nn.Module, lr: float, weight_decay: float) -> List[Dict]:
    """torchvision's segmentation recipe: backbone and classifier at `lr`, the aux head at 10x `lr` (it starts
    from scratch on top of a pretrained trunk and would otherwise barely move)."""
    groups = [{"params": _trainable(model.backbone)}, {"params": _trainable(model.classifier)}]
    if getattr(model, "aux_classifier", None) is not None:
        groups.append({"params": _trainable(model.aux_classifier), "lr": lr * 10})
    return groups


def caffe(model: nn.Module, lr: float, weight_decay: float) -> List[Dict]:
    """The original FCN's Caffe recipe: weights at `lr`, biases at 2x `lr` without weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.endswith("bias")]},
            {"params": [p for n, p in named if n.endswith("bias")], "lr": lr * 2, "weight_decay": 0.0}]


def plain(model: nn.Module, lr: float, weight_decay: float) -> List[Dict]:
    """One group: every parameter at `lr` with the run's weight decay (a model trained from scratch has no
    pretrained part to protect and no head to speed up)."""
    return [{"params": _trainable(model)}]
