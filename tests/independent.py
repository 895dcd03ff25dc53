"""Computations written out independently of the library, for the tests to compare it against."""

import numpy as np
import torch

from core.constants import IMAGENET_MEAN, IMAGENET_STD


def normalised(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) ImageNet-normalised float, written out here independently."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def cross_entropy_terms(logits: torch.Tensor, target: np.ndarray) -> tuple:
    """(sum of -log softmax at the label, labelled pixels) of one image, with logsumexp by hand."""
    logits = logits[0].double()  # (C, H, W)
    t = torch.from_numpy(target.astype(np.int64))
    keep = t != 255
    log_prob = logits - torch.logsumexp(logits, 0, keepdim=True)
    picked = log_prob.gather(0, t.clamp(max=logits.shape[0] - 1)[None])[0]
    return float(-picked[keep].sum()), int(keep.sum())
