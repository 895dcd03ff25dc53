"""The recorders that draw a run: curves.png (after every epoch, from steps.jsonl and metrics.jsonl),
vis/epoch_<E>.png (predictions on a fixed set of validation images) and TensorBoard (--tensorboard).

Like every recorder they run on rank 0 only, after the host sync the loop already makes. The pictures
predict with the unwrapped model on rank 0 (a handful of images, once per epoch); the other ranks go on to
the checkpoint's collective and wait there, so no training step waits for a picture.

Step axis: StepRecord.global_step (iterations since the start of the run); per-epoch values are put at the
step that ends their epoch, (epoch + 1) x steps per epoch. A resume continues that axis: records past the
checkpoint are dropped from steps.jsonl (recording.recorders) and purged from TensorBoard, so nothing is
duplicated or rewound.
"""
import argparse
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.cli import UsageError
from core.palette import VOC_PALETTE, Palette
from core.runtime import Runtime
from data_utils import SegmentationDataset
from inference.forward import predict_scores, resize_logits
from recording.history import load_history
from recording.recorders import EpochRecord, IntervalLoss, Recorder, StepRecord
from recording.run_files import CURVES_FILE, TENSORBOARD_DIR, VIS_DIR

from . import pictures
from .plots import confusion_figure, curves_figure, figure_array, require_matplotlib, save_figure
from .val_pictures import image_mean_iou

VIS_IMAGES = 4  # validation images in each vis/ grid and TensorBoard panel set
VIS_MAX_SIDE = 320  # px: larger panels are shrunk, so a grid of VOC photos stays a few hundred KB


def require_tensorboard() -> None:
    """Raises one line saying what to install when torch.utils.tensorboard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  optional extra
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package, which is not installed: "
                         "pip install tensorboard") from None


class CurvesRecorder(Recorder):
    """curves.png, redrawn from steps.jsonl and metrics.jsonl after every epoch (so a resumed run's picture
    holds its whole history). Without matplotlib it says so once in the log and the run goes on."""

    def __init__(self, out: Path, log: logging.Logger) -> None:
        self.out, self.log, self.enabled = Path(out), log, True

    def on_epoch(self, record: EpochRecord) -> None:
        if not self.enabled:
            return
        try:
            fig = curves_figure([load_history(self.out, class_names=[])])
        except UsageError as e:
            self.enabled = False
            self.log.warning(f"{CURVES_FILE} not drawn: {e}")
            return
        save_figure(fig, self.out / CURVES_FILE)


class VisSamples:
    """A fixed set of validation images (evenly spaced over the split) and the model's predictions on them,
    made once per epoch and shared by the vis/ grids and TensorBoard."""

    def __init__(self, dataset: SegmentationDataset, model: nn.Module, runtime: Runtime,
                 count: int = VIS_IMAGES) -> None:
        self.dataset, self.model, self.runtime = dataset, model, runtime
        n = len(dataset)
        self.indices = sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))
        self.samples: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.cache: Tuple[int, List[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = (-1, [])

    @property
    def stems(self) -> List[str]:
        """The file stem of each fixed image (its index where the dataset has no files)."""
        pairs = getattr(self.dataset, "pairs", None)
        return [Path(pairs[i][0]).stem if pairs is not None else f"image {i}" for i in self.indices]

    def captions(self, epoch: int, num_classes: int) -> List[str]:
        """One line per image: epoch, file stem and the image's mean IoU (over the classes in its ground truth
        or prediction, as validation.py --worst ranks them)."""
        return [f"epoch {epoch} | {stem} | image mean IoU {image_mean_iou(t, p, num_classes) * 100:.1f}"
                for stem, (_, t, p) in zip(self.stems, self.predictions(epoch))]

    def predictions(self, epoch: int) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(image (H, W, 3), ground truth (H, W), prediction (H, W)) uint8 arrays at the mask's size."""
        if self.cache[0] != epoch:
            self.cache = (epoch, self._predict_all())
        return self.cache[1]

    def _load(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        if self.samples is None:  # read once: the same transformed images every epoch
            self.samples = [tuple(t.as_subclass(torch.Tensor) for t in self.dataset[i]) for i in self.indices]
        return self.samples

    @torch.inference_mode()
    def _predict_all(self) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        samples, was_training = self._load(), self.model.training
        self.model.eval()
        by_size: Dict[Tuple[int, ...], List[int]] = {}
        for k, (image, _) in enumerate(samples):  # one forward per image size, not per image
            by_size.setdefault(tuple(image.shape), []).append(k)
        preds: Dict[int, np.ndarray] = {}
        for group in by_size.values():
            logits = predict_scores(self.model, torch.stack([samples[k][0] for k in group]), self.runtime)
            for k, logit in zip(group, logits):
                size = tuple(samples[k][1].shape)
                preds[k] = resize_logits(logit[None], size).argmax(1)[0].to(torch.uint8).cpu().numpy()
        self.model.train(was_training)
        return [(_shown(image, tuple(mask.shape)), mask.numpy(), preds[k]) for k, (image, mask) in enumerate(samples)]


def _shown(image: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """The (3, h, w) uint8 input as an (H, W, 3) picture at the mask's size (resized under --eval-size)."""
    if tuple(image.shape[1:]) != size:
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).byte()
    return image.permute(1, 2, 0).numpy()


class VisRecorder(Recorder):
    """vis/epoch_<E>.png: image | ground truth | prediction for the fixed validation images, every `every`
    epochs (0: none) and after the last one."""

    def __init__(self, out: Path, samples: VisSamples, palette: Palette, every: int, epochs: int,
                 class_names: Sequence[str]) -> None:
        self.dir, self.samples, self.palette = Path(out) / VIS_DIR, samples, palette
        self.every, self.epochs, self.class_names = every, epochs, list(class_names)

    def start(self, next_epoch: int) -> None:
        for path in self.dir.glob("epoch_*.png"):  # pictures of epochs about to be redone
            if path.stem[6:].isdigit() and int(path.stem[6:]) >= next_epoch:
                path.unlink()

    def on_epoch(self, record: EpochRecord) -> None:
        last = record.epoch + 1 == self.epochs
        if not last and (not self.every or (record.epoch + 1) % self.every):
            return
        samples = self.samples.predictions(record.epoch)
        rows = [pictures.sample_panels(*s, palette=self.palette) for s in samples]
        legend = pictures.class_legend([m for _, t, p in samples for m in (t, p)], self.class_names, self.palette)
        miou = "" if record.metrics is None else f", validation mIoU {record.metrics['mean_iou'] * 100:.1f}"
        picture = pictures.grid(rows, pictures.GRID_TITLES, max_side=VIS_MAX_SIDE, legend=legend,
                                captions=self.samples.captions(record.epoch, len(self.class_names)),
                                heading=f"after epoch {record.epoch} (numbered from 0, as in train.log){miou}")
        self.dir.mkdir(parents=True, exist_ok=True)
        pictures.write_png(picture, self.dir / f"epoch_{record.epoch}.png")


class TensorBoardRecorder(Recorder):
    """<run>/tensorboard/: train/loss (per interval), train/lr and train/images_per_s at every print
    interval; per epoch train/epoch_loss, and when evaluated every val/ metric, val/loss, iou/<class name>,
    the confusion matrix and the fixed validation images as image | ground truth | prediction panels."""

    def __init__(self, out: Path, class_names: Sequence[str], samples: Optional[VisSamples], palette: Palette,
                 interval_loss: IntervalLoss, resume_step: int) -> None:
        self.dir, self.class_names, self.samples, self.palette = Path(out) / TENSORBOARD_DIR, class_names, \
            samples, palette
        self.interval_loss, self.resume_step, self.writer = interval_loss, resume_step, None

    def start(self, next_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional extra, checked by require_tensorboard

        if self.resume_step == 0:  # a new run: the event files of an earlier one would mix with its curves
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
        # Events at steps past the checkpoint were recorded by the run that was interrupted and are about to
        # be redone: purge_step hides them from every reader.
        self.writer = SummaryWriter(str(self.dir), purge_step=self.resume_step + 1 if self.resume_step else None)

    def on_step(self, record: StepRecord) -> None:
        step = record.global_step
        self.writer.add_scalar("train/loss", self.interval_loss(record), step)
        self.writer.add_scalar("train/lr", record.lr, step)
        self.writer.add_scalar("train/images_per_s", record.images_per_s, step)

    def on_epoch(self, record: EpochRecord) -> None:
        step = (record.epoch + 1) * record.steps_per_epoch
        self.writer.add_scalar("train/epoch_loss", record.train_loss, step)
        for key, value in record.extra.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}", value, step)
        if record.metrics is not None:
            self._metrics(record, step)
        self.writer.flush()

    def _metrics(self, record: EpochRecord, step: int) -> None:
        m = record.metrics
        for key in ("mean_iou", "pixel_acc", "mean_acc", "fw_iou", "mean_dice"):
            if isinstance(m.get(key), float) and not math.isnan(m[key]):
                self.writer.add_scalar(f"val/{key}", m[key], step)
        for name, value in zip(self.class_names, m["iou"]):
            if not math.isnan(value):  # a class absent from ground truth and predictions has no IoU
                self.writer.add_scalar(f"iou/{name}", value, step)
        self.writer.add_image("val/confusion", confusion_picture(record.confusion.matrix.cpu().numpy(),
                                                                 self.class_names), step, dataformats="HWC")
        if self.samples is not None:
            captions = self.samples.captions(record.epoch, len(self.class_names))
            for i, sample, caption in zip(self.samples.indices, self.samples.predictions(record.epoch), captions):
                strip = pictures.grid([pictures.sample_panels(*sample, palette=self.palette)],
                                      pictures.GRID_TITLES, max_side=VIS_MAX_SIDE, captions=[caption],
                                      legend=pictures.class_legend(sample[1:], self.class_names, self.palette))
                self.writer.add_image(f"val/image_{i}", strip, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def confusion_picture(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The labelled heatmap of confusion.png when matplotlib is installed, else a plain one."""
    try:
        require_matplotlib("the confusion image")
    except UsageError:
        return pictures.heatmap(matrix)
    return figure_array(confusion_figure(matrix, class_names))


def visual_recorders(args: argparse.Namespace, out: Path, log: logging.Logger, model: nn.Module,
                     val_set: SegmentationDataset, runtime: Runtime, class_names: Sequence[str],
                     palette: Optional[Palette], interval_loss: IntervalLoss, resume_step: int) -> List[Recorder]:
    """curves.png always; vis/ grids unless --vis-every 0 (by default at every evaluation); TensorBoard with
    --tensorboard. They come after recording.default_recorders, whose files curves.png is drawn from.

    Args:
        model: the unwrapped model (not DDP, not compiled), for the pictures' predictions on rank 0.
        interval_loss: the one steps.jsonl uses (recording.default_recorders).
        resume_step: the global step the run continues from (0 for a new run).
    """
    recorders: List[Recorder] = [CurvesRecorder(out, log)]
    samples = VisSamples(val_set, model, runtime) if args.vis_every != 0 or args.tensorboard else None
    if args.vis_every != 0:
        every = args.eval_every if args.vis_every is None else args.vis_every
        recorders.append(VisRecorder(out, samples, palette or VOC_PALETTE, every, args.epochs, class_names))
    if args.tensorboard:
        recorders.append(TensorBoardRecorder(out, class_names, samples, palette or VOC_PALETTE, interval_loss,
                                             resume_step))
    return recorders

