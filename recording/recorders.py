"""Recorders: where the training loop's numbers go. The loop hands structured records to a list of
recorders on rank 0, after the host sync it already makes; train.log, results.txt, metrics.jsonl and steps.jsonl
are the first four, and a TensorBoard writer or a plot is one more recorder, not an edit of the loop (the ones
that draw are in visualization.recorders).

    class MyRecorder(Recorder):
        def on_step(self, record: StepRecord) -> None: ...    # every --print-freq iterations
        def on_epoch(self, record: EpochRecord) -> None: ...  # after every epoch (metrics when evaluated)
"""
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from core.platform import append_jsonl, append_text, atomic_write, nan_to_none

from .history import read_jsonl
from .run_files import METRICS_FILE, RESULTS_FILE, STEPS_FILE


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
    # A train_utils.metrics.ConfusionMatrix (str() is the reference summary, .matrix the pixel counts); typed
    # loosely so that the records do not depend on the engine that fills them.
    confusion: Optional[Any] = None
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


class IntervalLoss:
    """The mean loss of each print interval, from the running epoch means the loop reports: with m_s the
    mean over the first s iterations, the interval (p, s] has mean (m_s s - m_p p) / (s - p)."""

    def __init__(self) -> None:
        self.last: Optional[Tuple[int, int, float]] = None  # (epoch, step, running mean) of the last record
        self.cache: Tuple[int, float] = (-1, math.nan)  # (global step, value): each record is computed once

    def seed(self, epoch: int, step: int, loss: float) -> None:
        self.last = (epoch, step, loss)

    def __call__(self, record: StepRecord) -> float:
        if self.cache[0] == record.global_step:
            return self.cache[1]
        prev_step, prev_loss = 0, 0.0
        if self.last is not None and self.last[0] == record.epoch and self.last[1] < record.step:
            prev_step, prev_loss = self.last[1], self.last[2]
        value = (record.loss * record.step - prev_loss * prev_step) / (record.step - prev_step)
        self.last, self.cache = (record.epoch, record.step, record.loss), (record.global_step, value)
        return value


class StepsRecorder(Recorder):
    """steps.jsonl: one line per print interval (loss, interval loss, lr, images/s, the global step). A resume
    drops the lines past the checkpoint's step, so nothing is duplicated or rewound."""

    def __init__(self, out: Path, interval_loss: IntervalLoss, resume_step: int) -> None:
        self.path, self.interval_loss, self.resume_step = Path(out) / STEPS_FILE, interval_loss, resume_step

    def start(self, next_epoch: int) -> None:
        lines = read_jsonl(self.path)
        kept = [r for r in lines if isinstance(r.get("global_step"), int) and r["global_step"] <= self.resume_step]
        if self.path.exists() and (kept != lines or self.path.read_bytes().count(b"\n") != len(lines)):
            text = "".join(_json_line(r) for r in kept)
            atomic_write(self.path, lambda f: f.write(text.encode()))
        if kept:
            self.interval_loss.seed(kept[-1]["epoch"], kept[-1]["step"], kept[-1]["loss"])

    def on_step(self, record: StepRecord) -> None:
        line = {"epoch": record.epoch, "step": record.step, "global_step": record.global_step,
                "steps_per_epoch": record.steps_per_epoch, "loss": record.loss,
                "interval_loss": self.interval_loss(record), "lr": record.lr, "images_per_s": record.images_per_s}
        # A plain append, not append_jsonl's atomic rewrite: this file grows by a line every print interval,
        # and rewriting it each time would cost quadratic I/O. A torn last line is skipped when read.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_json_line(line))


def _json_line(record: Dict) -> str:
    return json.dumps(nan_to_none(record)) + "\n"  # strict JSON (NaN as null), as append_jsonl writes


def default_recorders(out: Path, log: logging.Logger, interval_loss: IntervalLoss,
                      resume_step: int) -> List[Recorder]:
    """The recorders every run has: train.log lines, results.txt, metrics.jsonl and steps.jsonl.

    Args:
        interval_loss: shared with the other recorders that plot the per-interval loss (TensorBoard).
        resume_step: the global step the run continues from (0 for a new run).
    """
    return [LogRecorder(log), ResultsRecorder(out), MetricsRecorder(out),
            StepsRecorder(out, interval_loss, resume_step)]


def _block_epoch(block: str) -> Optional[int]:
    match = re.match(r"\[epoch: (\d+)\]", block)
    return int(match.group(1)) if match else None


def _json_epoch(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None
