"""Prediction over many photos at loader speed: decoding in DataLoader workers, batches of equal-size photos,
and the files written by background threads, so that the model never waits for the disk.

    loader = photo_loader(paths, batch_size=8, workers=4, pin_memory=True)
    result = predict_folder(model, loader, runtime, write=save_outputs)

One photo that cannot be read is skipped and reported (`FolderResult.skipped`), not fatal. The masks are the
ones one-at-a-time prediction gives: photos are batched only with photos of their own size, so nothing is
padded, and each photo's logits do not depend on the others in its batch.
"""
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.cli import UsageError
from core.platform import ignore_signals_in_worker
from core.runtime import Runtime, synchronize
from data_utils import image_size, read_image

from .train_eval import prepare_images, whole_image

Inferer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------- naming

def output_stems(paths: Sequence[Path], endings: Sequence[str] = (".png",)) -> List[str]:
    """A stem per photo such that no two photos' output files (stem + each of `endings`) coincide: the photo's
    own stem, stem_ext when photos share a stem (a.jpg and a.png give a_jpg and a_png), then numbered
    (stem_2, ...) where a name is still taken, e.g. by another photo's overlay. Compared case-insensitively,
    as macOS and Windows file systems compare names."""
    shared = Counter(p.stem.casefold() for p in paths)
    claimed: set = set()
    stems = []
    for path in paths:
        stem = path.stem if shared[path.stem.casefold()] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        name, n = stem, 1
        while any((name + ending).casefold() in claimed for ending in endings):
            n += 1
            name = f"{stem}_{n}"
        claimed.update((name + ending).casefold() for ending in endings)
        stems.append(name)
    return stems


def refuse_overwriting_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Raises a UsageError before anything is written if an output file would replace an input photo."""
    by_name = {str(p.resolve()).casefold(): p for p in inputs}
    for out in outputs:
        photo = by_name.get(str(out.resolve()).casefold())
        if photo is None and out.exists():
            photo = next((p for p in inputs if p.exists() and out.samefile(p)), None)  # hard or symbolic links
        if photo is not None:
            raise UsageError(f"--output: writing {out} would overwrite the input photo {photo}; write the "
                             f"predictions to another folder (--output)")


# ------------------------------------------------------------------------------------------------ loading

class PhotoFolder(Dataset):
    """Photos by path; item i is (i, uint8 (3, H, W) photo as displayed, "") or (i, None, problem) when the file
    cannot be read, so that one bad photo does not stop the others."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], str]:
        try:
            return index, read_image(self.paths[index]), ""
        except (FileNotFoundError, ValueError) as e:
            return index, None, str(e)


@dataclass
class PhotoBatch:
    """One batch of the loader: `groups` of (indices, uint8 (n, 3, H, W)) photos of one size (one group unless a
    photo decodes to another size than its header said), and the problems [(index, message)] of the photos
    that could not be read."""

    groups: List[Tuple[List[int], torch.Tensor]]
    problems: List[Tuple[int, str]]

    def pin_memory(self) -> "PhotoBatch":  # called by a pin_memory DataLoader
        self.groups = [(indices, images.pin_memory()) for indices, images in self.groups]
        return self

    def __len__(self) -> int:
        return sum(len(indices) for indices, _ in self.groups) + len(self.problems)


def collate_photos(items: Sequence[Tuple[int, Optional[torch.Tensor], str]]) -> PhotoBatch:
    by_shape: Dict[Tuple[int, ...], List[Tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, image, _ in items:
        if image is not None:
            by_shape[tuple(image.shape)].append((index, image))
    groups = [([i for i, _ in group], torch.stack([image for _, image in group])) for group in by_shape.values()]
    return PhotoBatch(groups, [(index, problem) for index, image, problem in items if image is None])


def size_batches(paths: Sequence[Path], batch_size: int) -> List[List[int]]:
    """Indices in batches of photos of equal displayed size (read from the headers, no decoding), in the order
    of each size's first photo. A photo whose header cannot be read goes alone: its worker reports why."""
    groups: Dict[Tuple[int, ...], List[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        try:
            groups[image_size(path)].append(i)
        except (FileNotFoundError, ValueError):
            groups[(-1, i)].append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def photo_loader(paths: Sequence[Path], batch_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader of PhotoBatch: photos decoded in `workers` processes (0: in this one), batched by size.

    Args:
        paths: photo files.
        batch_size: at most this many photos (of one size) per batch.
        workers: DataLoader worker processes.
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """
    kwargs = {"prefetch_factor": 4, "worker_init_fn": ignore_signals_in_worker} if workers > 0 else {}
    return DataLoader(PhotoFolder(paths), batch_sampler=size_batches(paths, batch_size), num_workers=workers,
                      collate_fn=collate_photos, pin_memory=pin_memory, **kwargs)


# ---------------------------------------------------------------------------------------------- predicting

@torch.inference_mode()
def predict_images(model: nn.Module, images: torch.Tensor, runtime: Runtime,
                   infer: Inferer = whole_image) -> torch.Tensor:
    """uint8 (N, 3, H, W) host batch -> scores (N, C, H, W) on the device at the photos' size: logits, or
    probabilities under test-time augmentation; in the autocast dtype."""
    x = prepare_images(images, runtime.device, runtime.channels_last)
    with runtime.autocast():
        return infer(model, x)


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


def _timed_pass(model: nn.Module, images: torch.Tensor, runtime: Runtime, infer: Inferer,
                runs: int) -> Tuple[torch.Tensor, List[float]]:
    times = []
    for _ in range(runs):
        synchronize(runtime.device)
        start = time.perf_counter()
        scores = predict_images(model, images, runtime, infer)
        synchronize(runtime.device)
        times.append(time.perf_counter() - start)
    return scores, times


def _to_host(indices: List[int], images: torch.Tensor, scores: torch.Tensor, probabilities: bool,
             with_probs: bool) -> List[Prediction]:
    """Masks (and probabilities) of a batch, computed on the device and copied to the host once per batch."""
    masks = scores.argmax(1).to(torch.uint8).cpu().numpy()
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
        model: prepared for inference (train_utils.inference.load_inference_model).
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
                        predict_images(model, images, runtime, infer)
                    first = False
                scores, times = _timed_pass(model, images, runtime, infer, runs)
                result.pass_seconds += times
                for prediction in _to_host(indices, images, scores, probabilities, with_probs):
                    writer.submit(prediction)
                result.done += len(indices)
            bar.update(len(batch))
    result.seconds = time.perf_counter() - start
    bar.close()
    result.skipped.sort()
    return result
