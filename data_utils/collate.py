"""Batching samples of different sizes."""
from typing import Sequence

import torch

from core.constants import IGNORE_INDEX

from .datasets import Sample


def _pad_stack(tensors: Sequence[torch.Tensor], fill: int) -> torch.Tensor:
    """Stacks (..., H, W) tensors, padding each at the bottom and right to the largest H and W."""
    tensors = [t.as_subclass(torch.Tensor) for t in tensors]
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    if all(t.shape[-2:] == (height, width) for t in tensors):
        return torch.stack(tensors)
    out = torch.full((len(tensors), *tensors[0].shape[:-2], height, width), fill, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, ..., :t.shape[-2], :t.shape[-1]] = t
    return out


def collate_fn(batch: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches samples of different sizes: images padded with 0, masks with IGNORE_INDEX (padding has no
    label, so the loss and metrics skip it). Returns images uint8 (N, 3, H, W) and masks uint8 (N, H, W)."""
    images, masks = zip(*batch)
    return _pad_stack(images, 0), _pad_stack(masks, IGNORE_INDEX)
