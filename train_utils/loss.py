"""Cross-entropy over the FCN outputs, with the VOC ignore label and optional class weights."""
from typing import Dict, Optional, Sequence

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


def criterion(outputs: Dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.5,
              ignore_index: int = IGNORE_INDEX, class_weights: Optional[torch.Tensor] = None,
              validate: bool = True) -> torch.Tensor:
    """Cross-entropy on outputs["out"] plus `aux_weight` times the loss on outputs["aux"] if present.

    Args:
        outputs: model outputs, logits (N, C, H, W) under "out" and optionally "aux".
        target: (N, H, W) class indices; `ignore_index` pixels do not contribute.
        aux_weight: 0.5 as in the reference recipe: the layer3 head regularises the trunk without
            dominating the main head's gradient.
        class_weights: optional (C,) per-class weights (see `class_weights_from_counts`).
        validate: check the target values first (a host sync; the training loop checks CPU batches itself).
    """
    if validate:
        check_target(target, outputs["out"].shape[1], ignore_index)
    target = target.long()
    weight = None if class_weights is None else class_weights.to(outputs["out"].device, torch.float32)
    # Losses are computed in fp32 even under autocast: log-softmax over many pixels loses precision in bf16.
    loss = F.cross_entropy(outputs["out"].float(), target, weight=weight, ignore_index=ignore_index)
    if "aux" in outputs and aux_weight:
        aux = F.cross_entropy(outputs["aux"].float(), target, weight=weight, ignore_index=ignore_index)
        loss = loss + aux_weight * aux
    return loss


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
