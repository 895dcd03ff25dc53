"""Segmentation losses over the FCN outputs: cross-entropy, focal, soft Dice and CE + Dice, all with the VOC
ignore label and optional class weights.

Every loss is a sum over the labelled pixels divided by their (weighted) count, with the count clamped away
from zero: a batch in which every pixel is 255 gives exactly 0 (and zero gradients) instead of NaN, without a
host sync to find out.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from core.constants import IGNORE_INDEX


def check_target(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raises a ValueError naming the label values that are neither a class index nor `ignore_index`.

    On CUDA, cross-entropy on such a value fails with an opaque device-side assert; this check says which
    values are wrong instead. It reads the tensor on the host, so call it on CPU batches in hot loops.
    """
    bad = (target < 0) | ((target >= num_classes) & (target != ignore_index))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(f"label values {values} are neither a class index in [0, {num_classes}) nor the ignore "
                         f"label {ignore_index}; check the masks and --num-classes")


@dataclass(frozen=True)
class LossConfig:
    """Which loss the training minimises (`--loss`, `--dice-weight`, `--focal-gamma`).

    Args:
        name: a key of LOSSES: "ce", "focal", "dice" or "ce+dice".
        dice_weight: weight of the Dice term in "ce+dice".
        focal_gamma: focusing exponent of the focal loss (0 gives cross-entropy).
    """

    name: str = "ce"
    dice_weight: float = 1.0
    focal_gamma: float = 2.0


def _labelled(target: torch.Tensor, ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(labelled pixel mask, target with ignored pixels set to class 0 so that it can index)."""
    labelled = target != ignore_index
    return labelled, torch.where(labelled, target, 0)


def _pixel_weights(weight: Optional[torch.Tensor], safe: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Weight of each pixel: its class weight (1 without class weights), 0 where ignored."""
    return (weight[safe] if weight is not None else torch.ones_like(safe, dtype=torch.float32)) * labelled


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # The clamp only matters when every weight is 0 (nothing labelled): then the sum is 0 too, and so is the loss.
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """F.cross_entropy's weighted mean over the labelled pixels; 0 when none is labelled (F.cross_entropy: NaN)."""
    labelled, safe = _labelled(target, ignore_index)
    nll = F.cross_entropy(logits, safe, reduction="none")  # (N, H, W)
    return _weighted_mean(nll, _pixel_weights(weight, safe, labelled))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: Optional[torch.Tensor] = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Focal loss (Lin et al.): -(1 - p_t)^gamma log p_t, averaged like cross-entropy (class weights included),
    so gamma = 0 is exactly cross-entropy. Confident pixels weigh less, leaving the gradient to the hard ones."""
    labelled, safe = _labelled(target, ignore_index)
    log_pt = F.log_softmax(logits, 1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, H, W)
    # The clamp keeps the gradient of (1 - p_t)^gamma finite for gamma < 1 where p_t rounds to 1.
    focus = (1 - log_pt.exp()).clamp_min(1e-12) ** gamma
    return _weighted_mean(-focus * log_pt, _pixel_weights(weight, safe, labelled))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
              ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the batch: 1 - mean over classes of (2 |P.G| + s) / (|P| + |G| + s), with P the
    softmax probabilities and G the one-hot labels, both summed over the labelled pixels of the whole batch.

    Each class counts as much as any other, however few pixels it has: what makes Dice useful for small
    objects. A class absent from both labels and predictions scores 1 (the smoothing term `smooth`); class
    weights, when given, weight the per-class terms of the mean.
    """
    labelled, safe = _labelled(target, ignore_index)
    num_classes = logits.shape[1]
    probs = F.softmax(logits, 1) * labelled.unsqueeze(1)  # (N, C, H, W), ignored pixels zeroed
    onehot = safe.unsqueeze(1) == torch.arange(num_classes, device=logits.device).view(1, -1, 1, 1)
    onehot = onehot & labelled.unsqueeze(1)  # (N, C, H, W) bool
    intersection = (probs * onehot).sum((0, 2, 3))
    cardinality = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * intersection + smooth) / (cardinality + smooth)  # (C,)
    class_weight = torch.ones_like(dice) if weight is None else weight.to(dice.dtype)
    return _weighted_mean(1 - dice, class_weight)


Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor, Optional[Tensor], LossConfig, int], Tensor]


def _ce(logits: Tensor, target: Tensor, weight: Optional[Tensor], config: LossConfig,
        ignore_index: int) -> Tensor:
    return cross_entropy(logits, target, weight, ignore_index)


def _focal(logits: Tensor, target: Tensor, weight: Optional[Tensor], config: LossConfig,
           ignore_index: int) -> Tensor:
    return focal_loss(logits, target, config.focal_gamma, weight, ignore_index)


def _dice(logits: Tensor, target: Tensor, weight: Optional[Tensor], config: LossConfig,
          ignore_index: int) -> Tensor:
    return dice_loss(logits, target, weight, ignore_index)


def _ce_dice(logits: Tensor, target: Tensor, weight: Optional[Tensor], config: LossConfig,
             ignore_index: int) -> Tensor:
    return (cross_entropy(logits, target, weight, ignore_index)
            + config.dice_weight * dice_loss(logits, target, weight, ignore_index))


# --loss: name -> loss of one head's logits (N, C, H, W) against the target (N, H, W).
LOSSES: Dict[str, LossFn] = {"ce": _ce, "focal": _focal, "dice": _dice, "ce+dice": _ce_dice}


def criterion(outputs: Dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.5,
              ignore_index: int = IGNORE_INDEX, class_weights: Optional[torch.Tensor] = None,
              validate: bool = True, loss: LossConfig = LossConfig()) -> torch.Tensor:
    """The loss on outputs["out"] plus `aux_weight` times the same loss on outputs["aux"] if present.

    Args:
        outputs: model outputs, logits (N, C, H, W) under "out" and optionally "aux".
        target: (N, H, W) class indices; `ignore_index` pixels do not contribute.
        aux_weight: 0.5 as in the reference recipe: the layer3 head regularises the trunk without
            dominating the main head's gradient.
        class_weights: optional (C,) per-class weights (see `class_weights_from_counts`).
        validate: check the target values first (a host sync; the training loop checks CPU batches itself).
        loss: which loss (cross-entropy by default).
    """
    if validate:
        check_target(target, outputs["out"].shape[1], ignore_index)
    if loss.name not in LOSSES:
        raise ValueError(f"unknown loss {loss.name!r}; choose one of {', '.join(LOSSES)}")
    fn, target = LOSSES[loss.name], target.long()
    weight = None if class_weights is None else class_weights.to(outputs["out"].device, torch.float32)
    # Losses are computed in fp32 even under autocast: log-softmax over many pixels loses precision in bf16.
    total = fn(outputs["out"].float(), target, weight, loss, ignore_index)
    if "aux" in outputs and aux_weight:
        total = total + aux_weight * fn(outputs["aux"].float(), target, weight, loss, ignore_index)
    return total


def class_weights_from_counts(counts: Sequence[int], mode: str = "median") -> torch.Tensor:
    """Per-class loss weights from a pixel histogram (classes that never occur get weight 0).

    Args:
        counts: pixel count of each class (the ignore label excluded), e.g. from `my_dataset.py check`.
        mode: "inverse": total / (C_present * count), so a class of average frequency weighs 1;
              "median": median(freq) / freq, median-frequency balancing (Eigen & Fergus; SegNet).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("class pixel counts are all zero; cannot compute class weights")
    weights = torch.zeros_like(counts)
    if mode == "inverse":
        weights[present] = counts.sum() / (present.sum() * counts[present])
    elif mode == "median":
        freq = counts[present] / counts.sum()
        weights[present] = torch.quantile(freq, 0.5) / freq
    else:
        raise ValueError(f"unknown class weight mode {mode!r}; use 'inverse' or 'median'")
    return weights.float()
