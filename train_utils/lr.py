"""Optimizers (SGD, AdamW), their parameter groups and the per-iteration warm-up + poly learning-rate schedule."""
from typing import Dict, List, Tuple

import torch
from torch import nn

from src import spec_of


def get_params_groups(model: nn.Module, lr: float, weight_decay: float) -> List[Dict]:
    """Parameter groups by the rule of the model's registry entry (src/param_groups.py: torchvision's
    backbone / classifier / 10x aux head, the Caffe FCNs' 2x biases without decay, or one plain group);
    frozen parameters are left out."""
    groups = spec_of(model).param_rule(model, lr, weight_decay)
    for g in groups:
        g.setdefault("lr", lr)
        g.setdefault("weight_decay", weight_decay)
    return [g for g in groups if g["params"]]


OPTIMIZERS = ("sgd", "adamw")


def create_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                     fused: bool = False, name: str = "sgd",
                     betas: Tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD with momentum (the reference) or AdamW over `get_params_groups`.

    Args:
        momentum: SGD only.
        weight_decay: L2 penalty for SGD; decoupled decay for AdamW (its groups keep the same exceptions).
        fused: the single-kernel CUDA implementation (otherwise the multi-tensor one).
        name: "sgd" or "adamw".
        betas: AdamW's moment decay rates.
    """
    groups = get_params_groups(model, lr, weight_decay)
    kwargs = {"fused": True} if fused else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class WarmupPoly:
    """lr factor at iteration `step`: linear from `warmup_factor` to 1 over the warm-up, then
    (1 - progress) ** power down to exactly 0 at the last step. A class (not a closure) so that it pickles
    into DataLoader workers and its settings show up in the scheduler's state dict."""

    def __init__(self, num_step: int, epochs: int, warmup: bool = True, warmup_epochs: int = 1,
                 warmup_factor: float = 1e-3, power: float = 0.9) -> None:
        if num_step <= 0 or epochs <= 0:
            raise ValueError(f"the schedule needs num_step > 0 and epochs > 0 (got {num_step}, {epochs})")
        self.warmup_steps = num_step * min(warmup_epochs, epochs - 1) if warmup else 0
        self.total_steps = num_step * epochs
        self.warmup_factor = warmup_factor
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return self.warmup_factor * (1 - alpha) + alpha
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return max(0.0, 1 - progress) ** self.power


def create_lr_scheduler(optimizer: torch.optim.Optimizer, num_step: int, epochs: int, warmup: bool = True,
                        warmup_epochs: int = 1, warmup_factor: float = 1e-3,
                        power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call `.step()` after every optimizer step): warm-up then poly decay to 0.

    Args:
        num_step: iterations per epoch.
        epochs: total epochs; the factor reaches 0 at iteration num_step * epochs.
        warmup_epochs: length of the linear warm-up (clipped so that at least one epoch decays).
    """
    fn = WarmupPoly(num_step, epochs, warmup, warmup_epochs, warmup_factor, power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)
