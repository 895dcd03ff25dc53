"""Prediction over many photos at loader speed: decoding in DataLoader workers, batches of equal-size photos,
and the files written by background threads, so that the model never waits for the disk.

    loader = photo_loader(paths, batch_size=8, workers=4, pin_memory=True)   # inference.photos
    result = predict_folder(model, loader, runtime, write=save_outputs)

One photo that cannot be read is skipped and reported (`FolderResult.skipped`), not fatal. The masks are the
ones one-at-a-time prediction gives: photos are batched only with photos of their own size, so nothing is
padded, and each photo's logits do not depend on the others in its batch.
"""
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.runtime import Runtime, synchronize

from .forward import Inferer, predict_masks, predict_scores, whole_image


@torch.inference_mode()
def predict_images(model: nn.Module, images: torch.Tensor, runtime: Runtime,
                   infer: Inferer = whole_image) -> torch.Tensor:
    """uint8 (N, 3, H, W) host batch -> scores (N, C, H, W) on the device at the photos' size: logits, or
    probabilities under test-time augmentation; in the autocast dtype (see forward.predict_scores)."""
    return predict_scores(model, images, runtime, infer)


@dataclass
class Prediction:
    """One photo's result, on the host: the photo (uint8 (3, H, W)), its mask (uint8 (H, W) class indices)
    and, if asked for, float16 (C, H, W) class probabilities."""

    index: int
    image: torch.Tensor
    mask: np.ndarray
    probs: Optional[np.ndarray] = None


@dataclass
class FolderResult:
    """What predict_folder did: photos predicted, photos skipped [(index, message)], wall seconds, and the
    device time of each timed model pass (seconds; batches of up to batch_size photos)."""

    done: int = 0
    skipped: List[Tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    pass_seconds: List[float] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    def pass_ms(self) -> Tuple[float, float]:
        """(mean, median) of the timed passes, in milliseconds."""
        return statistics.mean(self.pass_seconds) * 1000, statistics.median(self.pass_seconds) * 1000


class BackgroundWriter:
    """Runs write calls on `threads` threads, at most 2 x `threads` queued (bounded memory); the first error
    is raised in the caller at the next submit or at close.

    PNG compression and file writes release the GIL, so the writes overlap the model and each other.
    """

    def __init__(self, write: Callable[[Prediction], None], threads: int = 4) -> None:
        self.write, self.limit = write, 2 * threads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict-writer")
        self.pending: List[Future] = []

    def submit(self, prediction: Prediction) -> None:
        while len(self.pending) >= self.limit:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self.write, prediction))

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # already failing: do not mask that error with a write error
            self.pool.shutdown(wait=True, cancel_futures=True)


def _pass(model: nn.Module, images: torch.Tensor, runtime: Runtime, infer: Inferer,
          masks_only: bool) -> torch.Tensor:
    """Scores (N, C, H, W) on the device, or with `masks_only` uint8 masks (N, H, W) on the host where the
    inferer has a bounded-memory mask path (slide mode: no photo-sized logits)."""
    masks = getattr(infer, "masks", None) if masks_only else None
    if masks is None:
        return predict_images(model, images, runtime, infer)
    with torch.inference_mode():
        return predict_masks(model, images, runtime, masks)


def _timed_pass(model: nn.Module, images: torch.Tensor, runtime: Runtime, infer: Inferer,
                runs: int, masks_only: bool = False) -> Tuple[torch.Tensor, List[float]]:
    times = []
    for _ in range(runs):
        synchronize(runtime.device)
        start = time.perf_counter()
        scores = _pass(model, images, runtime, infer, masks_only)
        synchronize(runtime.device)
        times.append(time.perf_counter() - start)
    return scores, times


def _to_host(indices: List[int], images: torch.Tensor, scores: torch.Tensor, probabilities: bool,
             with_probs: bool) -> List[Prediction]:
    """Masks (and probabilities) of a batch, computed on the device and copied to the host once per batch;
    `scores` may be the (N, H, W) masks already."""
    masks = (scores if scores.ndim == 3 else scores.argmax(1)).to(torch.uint8).cpu().numpy()
    probs = None
    if with_probs:
        p = scores.float() if probabilities else scores.float().softmax(1)
        probs = p.half().cpu().numpy()
    return [Prediction(index, image, masks[k], None if probs is None else probs[k])
            for k, (index, image) in enumerate(zip(indices, images))]


def predict_folder(model: nn.Module, loader: DataLoader, runtime: Runtime, write: Callable[[Prediction], None],
                   infer: Inferer = whole_image, with_probs: bool = False, warmup: int = 0, runs: int = 1,
                   writer_threads: int = 4, progress: bool = True) -> FolderResult:
    """Predicts every batch of `loader` (see photo_loader) and hands each photo's Prediction to `write`, which
    runs on background threads. Photos the loader could not read are skipped and listed in the result.

    Args:
        model: prepared for inference (inference.loading.load_inference_model).
        loader: yields PhotoBatch.
        runtime: device, autocast and memory format.
        write: saves one Prediction (called from a writer thread).
        infer: the inferer (whole image, sliding window, TTA).
        with_probs: also compute the class probabilities.
        warmup: untimed passes on the first batch, before the first timed one.
        runs: timed passes per batch (the last one's result is used).
        writer_threads: threads running `write`.
        progress: show a progress bar.
    """
    result, first = FolderResult(), True
    probabilities = bool(getattr(infer, "returns_probabilities", False))
    bar = tqdm(total=len(loader.dataset), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    with BackgroundWriter(write, writer_threads) as writer:
        for batch in loader:
            result.skipped += batch.problems
            for indices, images in batch.groups:
                if first:
                    for _ in range(warmup):
                        _pass(model, images, runtime, infer, not with_probs)
                    first = False
                scores, times = _timed_pass(model, images, runtime, infer, runs, not with_probs)
                result.pass_seconds += times
                for prediction in _to_host(indices, images, scores, probabilities, with_probs):
                    writer.submit(prediction)
                result.done += len(indices)
            bar.update(len(batch))
    result.seconds = time.perf_counter() - start
    bar.close()
    result.skipped.sort()
    return result
