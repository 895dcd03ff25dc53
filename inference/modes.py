"""Inference modes for evaluation and prediction: whole image, sliding window, multi-scale + flip TTA.

An inferer is any callable `infer(model, images) -> (N, C, H, W)` at the images' size, as taken by
`inference.forward.predict_scores` and `train_utils.evaluate(..., infer=...)`; `make_inferer` builds one from
the command-line flags of `add_inference_flags`.
"""
import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.cli import UsageError, positive_float, positive_int

from .forward import Inferer, normalize, resize_logits, whole_image

# A photo of at least this many windows shows a progress bar of its windows.
PROGRESS_WINDOWS = 64

IntPair = Union[int, Tuple[int, int]]


def _pair(value: IntPair) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_window(window: IntPair, stride: IntPair) -> None:
    """Raises a ValueError naming --window/--stride unless 0 < stride <= window (per axis)."""
    for w, s in zip(_pair(window), _pair(stride)):
        if w <= 0:
            raise UsageError(f"--window must be a positive number of pixels, got {window}")
        if not 0 < s <= w:
            # A stride above the window would leave pixels that no window covers.
            raise UsageError(f"--stride must be in 1..--window ({window}), got {stride}; "
                             f"use a stride of about 2/3 of the window")


def window_starts(size: int, window: int, stride: int) -> List[int]:
    """Start offsets along one axis, MMSEG-style: every `stride` px, the last window flush with the border.

    Args:
        size: image size along the axis.
        window: window size (clipped to `size`: a short axis is covered by one window).
        stride: step between windows.
    """
    window = min(window, size)
    count = max(size - window + stride - 1, 0) // stride + 1  # ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


def _coverage(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """How many windows cover each pixel along one axis, (size,) float."""
    count = torch.zeros(size, device=device)
    for start in window_starts(size, window, stride):
        count[start:start + min(window, size)] += 1
    return count


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()  # without it every window's activations would be kept for a backward pass: no memory bound
def slide_inference(model: nn.Module, images: torch.Tensor, window: IntPair = 512, stride: IntPair = 341,
                    num_classes: Optional[int] = None, chunk: int = 4) -> torch.Tensor:
    """Logits averaged over overlapping windows, so that memory depends on the window, not the image.

    Args:
        model: returns {"out": (n, C, h, w)} at its input size; in eval mode.
        images: normalised (N, 3, H, W); images no larger than the window are run whole, without padding.
        window: window size, int or (height, width).
        stride: step between windows (<= window); the last row and column of windows are moved back to
            end at the border, so every pixel is covered.
        num_classes: when given, a model with another number of output channels raises a ValueError.
        chunk: windows per forward pass (batched), bounding the activation memory.
    Returns:
        (N, C, H, W) logits in the model's output dtype, on the images' device.
    """
    check_window(window, stride)
    if chunk < 1:
        raise UsageError(f"--chunk must be at least 1, got {chunk}")
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    n, _, height, width = images.shape
    if height <= wh and width <= ww:
        return _check_classes(model(images)["out"], num_classes)
    ys, xs = window_starts(height, wh, sh), window_starts(width, ww, sw)
    wh, ww = min(wh, height), min(ww, width)
    logits = _sum_windows(model, images, [(i, y, x) for i in range(n) for y in ys for x in xs], (wh, ww),
                          chunk, num_classes)
    # The count map is the outer product of the per-axis counts: two in-place divides, no (H, W) copy.
    logits /= _coverage(height, wh, sh, images.device).to(logits.dtype).view(height, 1)
    logits /= _coverage(width, ww, sw, images.device).to(logits.dtype).view(1, width)
    return logits


def _sum_windows(model: nn.Module, images: torch.Tensor, crops: List[Tuple[int, int, int]],
                 size: Tuple[int, int], chunk: int, num_classes: Optional[int]) -> torch.Tensor:
    """Sum of the window logits at their places, (N, C, H, W); crops are (image index, top, left)."""
    (wh, ww), (n, _, height, width) = size, images.shape
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    logits = None
    with window_progress(len(crops)) as bar:
        for part in _chunks(crops, chunk):
            out = _run_windows(model, images, part, size, channels_last, num_classes)
            if logits is None:  # allocated here to take the output's dtype (bf16/fp16 under autocast)
                logits = out.new_zeros((n, out.shape[1], height, width))
            for (i, y, x), o in zip(part, out):
                logits[i, :, y:y + wh, x:x + ww] += o
            bar.update(len(part))
    return logits


def window_progress(total: int) -> tqdm:
    """A progress bar of the windows of a large photo (hidden below PROGRESS_WINDOWS windows: small photos
    finish before a bar would say anything)."""
    return tqdm(total=total, desc="windows", unit="win", leave=False, dynamic_ncols=True,
                disable=total < PROGRESS_WINDOWS)


def _run_windows(model: nn.Module, images: torch.Tensor, part: Sequence[Tuple[int, int, int]],
                 size: Tuple[int, int], channels_last: bool, num_classes: Optional[int],
                 normalise: bool = False) -> torch.Tensor:
    """The logits (k, C, wh, ww) of the windows `part` ((image index, top, left)) in one forward pass."""
    wh, ww = size
    batch = torch.stack([images[i, :, y:y + wh, x:x + ww] for i, y, x in part])  # (k, 3, wh, ww)
    if normalise:
        batch = normalize(batch)
    if channels_last:  # keep the layout the caller chose for speed
        batch = batch.contiguous(memory_format=torch.channels_last)
    return _check_classes(model(batch)["out"], num_classes)


def _shift_up(band: torch.Tensor, rows: int) -> None:
    """Moves band[:, rows:] to the top of `band` in place and zeroes the rows freed at the bottom; copied in
    steps of `rows` rows, so that no step reads what it writes (and no band-sized copy is made)."""
    height = band.shape[1]
    for start in range(0, height - rows, rows):
        stop = min(start + rows, height - rows)
        band[:, start:stop] = band[:, start + rows:stop + rows]
    band[:, max(height - rows, 0):] = 0


@torch.no_grad()
def slide_masks(model: nn.Module, images: torch.Tensor, window: IntPair = 512, stride: IntPair = 341,
                num_classes: Optional[int] = None, chunk: int = 4, channels_last: bool = False) -> torch.Tensor:
    """The masks of slide_inference (the argmax of the same averaged logits, bit for bit) in memory bounded by
    the window: the windows are run one row of windows at a time and the logits are kept for the rows that a
    later window still covers only (C x window height x photo width), each finished row going straight into
    the mask. The photo itself stays uint8; each window is normalised on its own.

    Args:
        images: uint8 (N, 3, H, W) photos on the model's device.
        window, stride, num_classes, chunk: as for slide_inference.
        channels_last: run the windows in channels-last memory format.
    Returns:
        uint8 (N, H, W) class indices on the host.
    """
    check_window(window, stride)
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    n, _, height, width = images.shape
    masks = torch.empty((n, height, width), dtype=torch.uint8)
    if height <= wh and width <= ww:
        x = normalize(images)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        masks.copy_(_check_classes(model(x)["out"], num_classes).argmax(1))
        return masks
    ys, xs = window_starts(height, wh, sh), window_starts(width, ww, sw)
    wh, ww = min(wh, height), min(ww, width)
    rows = _coverage(height, wh, sh, images.device)
    cols = _coverage(width, ww, sw, images.device)
    with window_progress(n * len(ys) * len(xs)) as bar:
        for i in range(n):
            band, top = None, 0  # the logits of rows top .. top + wh
            for k, y in enumerate(ys):
                for part in _chunks([(i, y, x) for x in xs], chunk):
                    out = _run_windows(model, images, part, (wh, ww), channels_last, num_classes, normalise=True)
                    if band is None:
                        band = out.new_zeros((out.shape[1], wh, width))
                    elif y != top:  # move the band down to start at this row of windows
                        _shift_up(band, y - top)
                        top = y
                    for (_, _, x), o in zip(part, out):
                        band[:, :, x:x + ww] += o
                    bar.update(len(part))
                # Rows above the next row of windows are final: averaged (as slide_inference divides) and argmaxed.
                end = ys[k + 1] if k + 1 < len(ys) else top + wh
                done = band[:, :end - top]
                done /= rows[top:end].to(done.dtype).view(-1, 1)
                done /= cols.to(done.dtype).view(1, width)
                masks[i, top:end] = done.argmax(0).to(torch.uint8).cpu()
    return masks


def _check_classes(logits: torch.Tensor, num_classes: Optional[int]) -> torch.Tensor:
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model outputs {logits.shape[1]} classes, expected {num_classes}; "
                         f"check --num-classes against the checkpoint")
    return logits


@torch.no_grad()
def tta_inference(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                  base: Inferer = whole_image) -> torch.Tensor:
    """Test-time augmentation: softmax PROBABILITIES (not logits) averaged over scales and flips.

    Probabilities are averaged because logits of different scales are not on a common scale; the
    argmax of the result is the prediction, which is all `evaluate` takes from an inferer.

    Args:
        model: as for `slide_inference`.
        images: normalised (N, 3, H, W).
        scales: each resizes the images (bilinear) to round(H*s) x round(W*s) before `base`.
        flip: also run the horizontally flipped images (and flip their output back).
        base: the inferer run at each scale (whole image or sliding window).
    Returns:
        (N, C, H, W) float32 averaged probabilities.
    """
    check_scales(scales)
    size = images.shape[-2:]
    probs = None
    for scale in scales:
        scaled = _resize_images(images, (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))))
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = resize_logits(base(model, x), size)
            p = logits.float().softmax(1)  # fp32: averaging bf16 probabilities would lose the small ones
            p = p.flip(-1) if flipped else p
            probs = p if probs is None else probs.add_(p)
    return probs / (len(scales) * (2 if flip else 1))


def _resize_images(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # scale 1: skip the resampling, so that it is exactly the plain result
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def check_scales(scales: Sequence[float]) -> None:
    """Raises a ValueError naming --scales unless there is at least one scale and all are positive."""
    if len(scales) == 0 or any(not s > 0 for s in scales):
        raise UsageError(f"--scales must be one or more positive factors (e.g. 0.75 1.0 1.25), got {list(scales)}")


@dataclass(frozen=True)
class InferenceMode:
    """An inferer built from flags; `name` is its short label for record files ("slide 512/341+flip")."""

    mode: str = "whole"
    window: int = 512
    stride: int = 341
    scales: Optional[Tuple[float, ...]] = None
    flip: bool = False
    chunk: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise UsageError(f"--mode must be 'whole' or 'slide', got {self.mode!r}")
        check_window(self.window, self.stride)
        if self.chunk < 1:
            raise UsageError(f"--chunk must be at least 1, got {self.chunk}")
        if self.scales is not None:
            check_scales(self.scales)

    @property
    def base(self) -> Inferer:
        if self.mode == "whole":
            return whole_image
        return partial(slide_inference, window=self.window, stride=self.stride, chunk=self.chunk)

    @property
    def masks(self) -> Optional[Callable[..., torch.Tensor]]:
        """For slide mode without test-time augmentation, `masks(model, uint8 images, channels_last)` -> uint8
        masks in memory bounded by the window (see slide_masks); None where the scores are needed whole."""
        if self.mode != "slide" or self.tta:
            return None
        return partial(slide_masks, window=self.window, stride=self.stride, chunk=self.chunk)

    @property
    def tta(self) -> bool:
        return self.flip or (self.scales is not None and tuple(self.scales) != (1.0,))

    @property
    def returns_probabilities(self) -> bool:
        """True with scales or flip (softmax averages), False for plain logits."""
        return self.tta

    @property
    def name(self) -> str:
        label = "whole" if self.mode == "whole" else f"slide {self.window}/{self.stride}"
        if self.scales is not None and tuple(self.scales) != (1.0,):
            label += f" ms[{','.join(f'{s:g}' for s in self.scales)}]"
        return label + ("+flip" if self.flip else "")

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self.base(model, images)  # logits
        return tta_inference(model, images, self.scales or (1.0,), self.flip, self.base)  # probabilities


def make_inferer(mode: str = "whole", window: int = 512, stride: int = 341,
                 scales: Optional[Sequence[float]] = None, flip: bool = False, chunk: int = 4) -> InferenceMode:
    """An inferer for `evaluate(..., infer=...)`; with scales or flip it returns probabilities, else logits.

    Args:
        mode: "whole" (one forward per image) or "slide" (windows of `window` px every `stride` px).
        window, stride, chunk: as for `slide_inference` (used in slide mode).
        scales: test-time scales; None is the single scale 1.0.
        flip: add horizontally flipped copies.
    """
    return InferenceMode(mode, window, stride, None if scales is None else tuple(float(s) for s in scales),
                         flip, chunk)


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --mode, --window, --stride, --scales, --flip/--no-flip and --chunk to `parser`."""
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=("whole", "slide"), default="whole",
                       help="whole image in one forward pass, or sliding windows averaged where they overlap "
                            "(bounded memory for large photos)")
    group.add_argument("--window", type=positive_int, default=512, help="sliding-window size in pixels")
    group.add_argument("--stride", type=positive_int, default=341,
                       help="step between sliding windows in pixels (at most --window)")
    group.add_argument("--scales", type=positive_float, nargs="+", metavar="S", default=None,
                       help="test-time scales, e.g. 0.75 1.0 1.25 (probabilities are averaged); default 1.0 only")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                       help="also predict the horizontally flipped image and average")
    group.add_argument("--chunk", type=positive_int, default=4,
                       help="windows per forward pass in slide mode (lower it if memory runs out)")
    group.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="fold BatchNorm into the convolutions: faster, but the logits move by float rounding, "
                            "so off by default (validation.py then equals the training run's evaluation, and "
                            "predict.py writes the masks validation.py scores)")


def inferer_from_args(args: argparse.Namespace) -> Optional[InferenceMode]:
    """The inferer selected by the flags of `add_inference_flags` (validated even when unused), or None
    for the default plain whole-image forward, so a caller can tell whether anything else was asked for."""
    infer = make_inferer(args.mode, args.window, args.stride, args.scales, args.flip, args.chunk)
    return None if infer.mode == "whole" and not infer.tta else infer
