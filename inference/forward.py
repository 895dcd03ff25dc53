"""The one forward pass of a model on photos, shared by evaluation, prediction and the pictures: the uint8
batch normalised on the device, the runtime's memory format and autocast, the inferer, and the scores resized
(bilinear, in fp32) to the labels' size. Training normalises its batches with the same `prepare_images`.
"""
import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from core.constants import IMAGENET_MEAN, IMAGENET_STD
from core.runtime import Runtime

from .memory import check_whole_image_fits

# infer(model, normalised images) -> (N, C, H, W) scores at the images' size: logits, or probabilities
# under test-time augmentation (see inference.modes).
Inferer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch is a blocking host-to-device copy, a sync each step.
    # Normal tensors even when first asked for under inference_mode, so that training can use them too.
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        return mean.to(device), std.to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float ImageNet-normalised. Done on the device: the loader moves 4x fewer bytes."""
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std


def prepare_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Copies a uint8 batch to the device (asynchronously from pinned memory) and normalises it."""
    images = normalize(images.to(device, non_blocking=True))
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def whole_image(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of the whole image in one forward pass (the default inference mode). A large photo whose pass
    would not fit in the memory left is refused first, with the advice to use --mode slide."""
    check_whole_image_fits(model, images)
    return model(images)["out"]


def resize_logits(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) scores resized (bilinear, in fp32) to `size` when they differ, else returned as they are."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def predict_scores(model: nn.Module, images: torch.Tensor, runtime: Runtime, infer: Inferer = whole_image,
                   size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) host batch -> (N, C, H, W) scores on the device: logits, or probabilities under
    test-time augmentation, in the autocast dtype; resized to `size` (the labels' size) when given. The caller
    chooses the grad mode (evaluation and prediction run under inference_mode)."""
    x = prepare_images(images, runtime.device, runtime.channels_last)
    with runtime.autocast():
        scores = infer(model, x)
    return scores if size is None else resize_logits(scores, size)


def predict_masks(model: nn.Module, images: torch.Tensor, runtime: Runtime,
                  masks: Callable[..., torch.Tensor]) -> torch.Tensor:
    """uint8 (N, 3, H, W) host batch -> uint8 (N, H, W) host masks through an inferer's bounded-memory mask path
    (InferenceMode.masks: the photo goes to the device as uint8, each window is normalised there)."""
    with runtime.autocast():
        return masks(model, images.to(runtime.device, non_blocking=True), channels_last=runtime.channels_last)
