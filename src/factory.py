"""The builder table, and building a model from what a checkpoint says about itself."""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from core.checkpoint import load_checkpoint
from core.cli import positive_int
from core.palette import Palette

from .registry import MODELS, REGISTRY, get_spec, spec_of

# Models built with an auxiliary head unless told otherwise (the ones that have one).
AUX_MODELS = tuple(name for name, spec in REGISTRY.items() if spec.aux_default)


def build_model(name: str, num_classes: int = 21, aux: Optional[bool] = None,
                pretrained_backbone: Optional[str] = None) -> nn.Module:
    """Builds a model by name.

    Args:
        name: one of MODELS.
        num_classes: output channels, background included.
        aux: auxiliary head; None means the model's default (its registry entry's aux_default).
        pretrained_backbone: None/"none", "auto" or a local file of torchvision ImageNet weights.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if aux is None:
        aux = spec.aux_default
    return spec.builder(num_classes=num_classes, aux=aux, pretrained_backbone=pretrained_backbone)


def backbone_modules(model: nn.Module) -> List[nn.Module]:
    """The layers that start from ImageNet weights (what --freeze-backbone holds fixed), from the model's
    registry entry: a ResNet or MobileNetV3 model's `backbone`; a VGG FCN's conv1_1 ... conv5_3, fc6, fc7."""
    spec = spec_of(model)
    if spec.backbone is None:
        raise ValueError(f"{type(model).__name__} trains from scratch: it has no pretrained backbone to freeze; "
                         f"drop --freeze-backbone")
    return spec.backbone(model)


def model_help() -> str:
    """One line per model: name, what it is, where its aux head sits."""
    lines = []
    for name, spec in REGISTRY.items():
        aux = f"; aux head on {spec.aux_site}" + ("" if spec.aux_default else " (off by default)")
        lines.append(f"{name}: {spec.summary}{aux if spec.aux_site else ''}")
    return "; ".join(lines)


def add_model_flags(parser: argparse.ArgumentParser, training: bool = False) -> None:
    """--model, --num-classes and --weights, for every script that has them.

    Args:
        training: train.py's meaning: --model picks the architecture to build (default fcn_resnet50) and
            --weights is an optional starting point; otherwise --weights is the checkpoint to run (required)
            and --model/--num-classes only disambiguate raw state dicts.
    """
    group = parser.add_argument_group("model")
    if training:
        group.add_argument("--model", default="fcn_resnet50", choices=tuple(MODELS),
                           help="architecture. " + model_help())
        group.add_argument("--num-classes", type=positive_int, default=None,
                           help="number of classes, background included (default: the dataset's class list)")
        group.add_argument("--weights", default=None, metavar="PATH",
                           help="start from a whole-model checkpoint (e.g. torchvision's COCO-VOC file); "
                                "mismatched heads are dropped and reported")
    else:
        group.add_argument("--weights", required=True, metavar="PATH",
                           help="checkpoint (ours, or a raw torchvision / pytorch-fcn state dict)")
        group.add_argument("--model", default=None, choices=tuple(MODELS),
                           help="architecture, for raw state dicts whose layout is ambiguous (default: from the file)")
        group.add_argument("--num-classes", type=positive_int, default=None, help="default: from the checkpoint")


def guess_architecture(state: Dict[str, torch.Tensor]) -> List[str]:
    """Model names whose layout matches a raw state dict (FCN-8s and its at-once variant look alike)."""
    return [name for name, spec in REGISTRY.items() if spec.fingerprint(state)]


def _num_classes(state: Dict[str, torch.Tensor], names: List[str]) -> Optional[int]:
    for key in dict.fromkeys(get_spec(name).classes_key for name in names):
        if key in state:
            return state[key].shape[0]
    return None


@dataclass
class CheckpointModel:
    """A model rebuilt from a checkpoint, with what the checkpoint told about it."""

    model: nn.Module
    name: str
    num_classes: int
    class_names: Optional[List[str]]
    palette: Optional[Palette] = None
    dataset: Optional[str] = None
    epoch: Optional[int] = None  # the training epoch whose weights these are (0-based, as train.log numbers them)


def model_from_checkpoint(path: Union[str, Path], name: Optional[str] = None,
                          num_classes: Optional[int] = None) -> CheckpointModel:
    """Builds the checkpoint's model and loads its weights exactly (strict).

    Our checkpoints name their model, classes and head; for raw state dicts (torchvision's COCO-VOC files,
    pytorch-fcn files) the architecture and class count are read off the tensors, or given by `name` and
    `num_classes`. A `name` that contradicts the checkpoint is an error, not a silent rebuild.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.state_dict
    saved_name, guesses = ckpt.model_name, guess_architecture(state)
    if name is not None and ((saved_name and name != saved_name) or (not saved_name and name not in guesses)):
        found = saved_name or " or ".join(guesses) or "an unknown architecture"
        raise ValueError(f"{path}: holds {found} weights, not --model {name}; drop --model or fix it")
    name = name or saved_name or (guesses[0] if guesses else None)
    if name is None:
        raise ValueError(f"{path}: cannot tell which model these weights belong to; pass --model")
    found_classes = _num_classes(state, [name])
    if num_classes is not None and found_classes is not None and num_classes != found_classes:
        raise ValueError(f"{path}: has {found_classes} classes, not --num-classes {num_classes}; drop "
                         f"--num-classes or fix it")
    num_classes = num_classes or ckpt.num_classes or found_classes
    if num_classes is None:
        raise ValueError(f"{path}: cannot tell the number of classes (no classifier weights); pass --num-classes")
    aux = any(k.startswith("aux_classifier.") for k in state)
    model = build_model(name, num_classes, aux=aux and get_spec(name).aux_site is not None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit {name} with {num_classes} classes "
                         f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    names = ckpt.class_names if ckpt.class_names is not None and len(ckpt.class_names) == num_classes else None
    return CheckpointModel(model, name, num_classes, names, ckpt.palette, ckpt.dataset, ckpt.epoch)
