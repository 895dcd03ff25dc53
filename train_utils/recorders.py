"""Recorders: where the training loop's numbers go. The loop hands structured records to a list of
recorders on rank 0, after the host sync it already makes; train.log, results.txt and metrics.jsonl are the
first three, and a TensorBoard writer or a plot is one more recorder, not an edit of the loop.

    class MyRecorder(Recorder):
        def on_step(self, record: StepRecord) -> None: ...    # every --print-freq iterations
        def on_epoch(self, record: EpochRecord) -> None: ...  # after every epoch (metrics when evaluated)
"""
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from core.platform import append_jsonl, append_text, atomic_write

from .metrics import ConfusionMatrix

RESULTS_FILE = "results.txt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class StepRecord:
    """The state of training at a print interval."""

    epoch: int
    step: int  # iterations of this epoch done, resumed part included
    steps_per_epoch: int
    loss: float  # mean training loss of this epoch so far
    lr: float
    images_per_s: float

    @property
    def global_step(self) -> int:
        """Iterations since the start of the run: a step axis that a resume continues without repeats."""
        return self.epoch * self.steps_per_epoch + self.step


@dataclass
class EpochRecord:
    """What one epoch did; `confusion` and `metrics` are set when the epoch was evaluated."""

    epoch: int
    train_loss: float
    lr: float
    images_per_s: float
    epoch_time_s: float
    steps_per_epoch: int
    confusion: Optional[ConfusionMatrix] = None
    metrics: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # values other parts of the run add (e.g. val_loss)

    def as_dict(self) -> Dict[str, Any]:
        """The metrics.jsonl line (per-class lists included, class names left out)."""
        line = {"epoch": self.epoch, "train_loss": self.train_loss, "lr": self.lr,
                "images_per_s": self.images_per_s, "epoch_time_s": self.epoch_time_s, **self.extra}
        if self.metrics is not None:
            line.update({k: v for k, v in self.metrics.items() if k != "class_names"})
        return line


class Recorder:
    """Base class: every method is optional. `start` runs once before training (after a resume, with the
    epoch training continues from: records of later epochs must go, they are about to be redone)."""

    def start(self, next_epoch: int) -> None:
        pass

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_epoch(self, record: EpochRecord) -> None:
        pass

    def close(self) -> None:
        pass


class Recorders(Recorder):
    """Fans every call out to a list of recorders, in order."""

    def __init__(self, recorders: Sequence[Recorder] = ()) -> None:
        self.recorders = list(recorders)

    def start(self, next_epoch: int) -> None:
        for r in self.recorders:
            r.start(next_epoch)

    def on_step(self, record: StepRecord) -> None:
        for r in self.recorders:
            r.on_step(record)

    def on_epoch(self, record: EpochRecord) -> None:
        for r in self.recorders:
            r.on_epoch(record)

    def close(self) -> None:
        for r in self.recorders:
            r.close()


class LogRecorder(Recorder):
    """Per-interval loss lines into train.log (the console shows them in the progress bar instead)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def on_step(self, record: StepRecord) -> None:
        self.log.info(f"epoch {record.epoch} [{record.step}/{record.steps_per_epoch}] loss {record.loss:.4f} "
                      f"lr {record.lr:.6f}", extra={"file_only": True})

    def on_epoch(self, record: EpochRecord) -> None:
        if record.metrics is not None:
            m = record.metrics
            extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in record.extra.items()
                            if isinstance(v, float))
            self.log.info(f"epoch {record.epoch}: train loss {record.train_loss:.4f}{extra}, mIoU "
                          f"{m['mean_iou'] * 100:.1f}, pixel acc {m['pixel_acc'] * 100:.1f}, "
                          f"{record.images_per_s:.1f} img/s")


class ResultsRecorder(Recorder):
    """results.txt: the reference's per-epoch block ([epoch: N], train_loss, lr, the confusion summary)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RESULTS_FILE

    def start(self, next_epoch: int) -> None:
        if self.path.exists():
            blocks = re.split(r"(?m)^(?=\[epoch: )", self.path.read_text(encoding="utf-8", errors="replace"))
            kept = [b for b in blocks if _block_epoch(b) is not None and _block_epoch(b) < next_epoch]
            if len(kept) != len([b for b in blocks if b]):
                atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def on_epoch(self, record: EpochRecord) -> None:
        if record.confusion is None:
            return
        extra = "".join(f"{k}: {v:.4f}\n" for k, v in record.extra.items() if isinstance(v, float))
        append_text(self.path, f"[epoch: {record.epoch}]\ntrain_loss: {record.train_loss:.4f}\n"
                               f"lr: {record.lr:.6f}\n{extra}{record.confusion}\n\n")


class MetricsRecorder(Recorder):
    """metrics.jsonl: one strict-JSON line per epoch with every number."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / METRICS_FILE

    def start(self, next_epoch: int) -> None:
        if self.path.exists():
            lines = [ln for ln in self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
                     if ln.strip()]
            kept = [ln for ln in lines if _json_epoch(ln) is not None and _json_epoch(ln) < next_epoch]
            if kept != lines:
                atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def on_epoch(self, record: EpochRecord) -> None:
        append_jsonl(self.path, record.as_dict())


def default_recorders(out: Path, log: logging.Logger) -> List[Recorder]:
    """The recorders every run has: train.log lines, results.txt and metrics.jsonl."""
    return [LogRecorder(log), ResultsRecorder(out), MetricsRecorder(out)]


def _block_epoch(block: str) -> Optional[int]:
    match = re.match(r"\[epoch: (\d+)\]", block)
    return int(match.group(1)) if match else None


def _json_epoch(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None
