"""validation.py's pictures: per image the predicted mask and an image | ground truth | prediction | errors
tile, the per-image mean IoU that finds the worst images, and the confusion and per-class IoU figures.

Each rank writes the images of its own shard; the per-image scores are gathered (by the caller's collective)
on rank 0, which draws the figures and keeps the worst images' tiles.
"""
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from core.cli import UsageError
from core.outputs import check_output, check_output_folder, is_within, remove_leftovers
from core.palette import Palette
from core.platform import atomic_copy
from data_utils import save_mask

from . import pictures
from .plots import class_iou_figure, confusion_figure, require_matplotlib, save_figure

MASKS_DIR, TILES_DIR, WORST_DIR = "masks", "tiles", "worst"
CONFUSION_FILE, CLASS_IOU_FILE = "confusion.png", "per_class_iou.png"


def image_mean_iou(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image over the classes in its ground truth or prediction (255 skipped); NaN for an
    image without labelled pixels."""
    keep = target < num_classes
    counts = np.bincount(num_classes * target[keep].astype(np.int64) + pred[keep], minlength=num_classes ** 2)
    matrix = counts.reshape(num_classes, num_classes)
    inter, union = np.diag(matrix), matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    return float((inter[union > 0] / union[union > 0]).mean()) if (union > 0).any() else math.nan


class ValidationPictures:
    """An `on_batch` hook for `run_evaluation`: scores every image and, with a save_dir, writes
    masks/<stem>.png (the palette mask predict.py writes with the same flags) and tiles/<stem>.png.

    Args:
        save_dir: folder for the pictures, or None to score only (for --worst without --save-dir).
        stems: file stem of each dataset index.
        batches: the evaluation batches (dataset indices) in loader order, e.g. EvalBatchSampler.batches.
    """

    def __init__(self, save_dir: Optional[Path], stems: Sequence[str], batches: Sequence[Sequence[int]],
                 num_classes: int, palette: Palette, class_names: Optional[Sequence[str]] = None,
                 epoch: Optional[int] = None) -> None:
        self.save_dir, self.stems, self.batches = save_dir, list(stems), list(batches)
        self.num_classes, self.palette, self.class_names = num_classes, palette, class_names
        # The tiles' captions name the training epoch of the weights when the checkpoint records it.
        self.weights = "" if epoch is None else f"weights of epoch {epoch} | "
        self.next_batch, self.scores = 0, []

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor) -> None:
        indices = self.batches[self.next_batch]
        self.next_batch += 1
        targets, preds = targets.cpu().numpy(), preds.to(torch.uint8).cpu().numpy()
        if tuple(images.shape[-2:]) != targets.shape[-2:]:  # --eval-size: show the photo at the mask's size
            images = F.interpolate(images.float(), size=targets.shape[-2:], mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255).byte()
        for index, image, target, pred in zip(indices, images.permute(0, 2, 3, 1).numpy(), targets, preds):
            stem = self.stems[index]
            score = image_mean_iou(target, pred, self.num_classes)
            self.scores.append((stem, score))
            if self.save_dir is not None:
                save_mask(pred, self.save_dir / MASKS_DIR / f"{stem}.png", self.palette)
                caption = f"{self.weights}{stem} | image mean IoU {score * 100:.1f}"
                picture = pictures.tile(image, target, pred, self.palette, self.class_names, caption)
                pictures.write_png(picture, self.save_dir / TILES_DIR / f"{stem}.png")

    def worst(self, k: int, gather: Callable[[Any], List[Any]] = lambda scores: [scores]) -> List[Tuple[str, float]]:
        """The k images with the lowest mean IoU; `gather` collects every rank's scores (all_gather_objects
        under DDP, then a collective: call it on every rank)."""
        scores = [s for part in gather(self.scores) for s in part if not math.isnan(s[1])]
        return sorted(scores, key=lambda s: (s[1], s[0]))[:k]


def prepare_save_dir(save_dir: Path, data: Iterable[Any] = ()) -> None:
    """Refuses a folder that holds or lies inside `data` (the dataset's folder: a folder dataset's masks/ would
    be overwritten by the predictions), creates the folders (so an unwritable --save-dir fails before the
    evaluation, in one line) and removes the temporary files a killed run left there, saying so."""
    check_output_folder("--save-dir", save_dir, [d for d in data if d is not None])
    require_matplotlib("--save-dir (confusion.png, per_class_iou.png)")
    try:
        for sub in (MASKS_DIR, TILES_DIR):
            (save_dir / sub).mkdir(parents=True, exist_ok=True)
        probe = save_dir / f".write_test.{os.getpid()}"  # one per process: every rank checks its own
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--save-dir {save_dir} is not writable ({e.strerror or e}); choose another "
                         f"--save-dir") from None
    removed = remove_leftovers([save_dir] + [save_dir / sub for sub in (MASKS_DIR, TILES_DIR, WORST_DIR)])
    if removed:
        print(f"--save-dir {save_dir}: removed {len(removed)} temporary file(s) an interrupted run left: "
              f"{', '.join(str(p) for p in removed[:3])}{', ...' if len(removed) > 3 else ''}", file=sys.stderr)


def check_save_dir(save_dir: Path, pairs: Sequence[Sequence[Path]], stems: Sequence[str]) -> None:
    """Before evaluating: no image or mask of the dataset lies in `save_dir` (through links too), and every file
    the pictures would replace is a PNG (a previous run's), not something else kept there."""
    for pair in pairs:
        for path in pair:
            if isinstance(path, (str, os.PathLike)) and is_within(path, save_dir):
                raise UsageError(f"--save-dir {save_dir} holds {path} of the dataset being evaluated; the pictures "
                                 f"could replace it: choose a --save-dir outside the data")
    for name in (CONFUSION_FILE, CLASS_IOU_FILE, *(f"{sub}/{stem}.png" for sub in (MASKS_DIR, TILES_DIR)
                                                    for stem in stems)):
        check_output("--save-dir", save_dir / name, "png")


def save_figures(save_dir: Path, cm: Any, class_names: Sequence[str]) -> None:
    """confusion.png (row-normalised heatmap) and per_class_iou.png (sorted bars) of a ConfusionMatrix (its
    .matrix and .metrics())."""
    save_figure(confusion_figure(cm.matrix.cpu().numpy(), class_names), save_dir / CONFUSION_FILE)
    save_figure(class_iou_figure(cm.metrics()["iou"], class_names), save_dir / CLASS_IOU_FILE)


def keep_worst_tiles(save_dir: Path, worst: Sequence[Tuple[str, float]]) -> None:
    """worst/<rank>_<stem>.png: the worst images' tiles, worst first (linked, not copied, where possible)."""
    folder = save_dir / WORST_DIR
    for old in folder.glob("*.png"):  # a previous run's list
        old.unlink()
    folder.mkdir(exist_ok=True)
    width = len(str(len(worst)))
    for rank, (stem, _) in enumerate(worst, start=1):
        atomic_copy(save_dir / TILES_DIR / f"{stem}.png", folder / f"{rank:0{width}d}_{stem}.png")
