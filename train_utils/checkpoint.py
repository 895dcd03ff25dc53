"""What a training checkpoint saves and restores: weights, optimizer, schedule, scaler, progress and RNG.

The file format itself (versions, reading, writing) belongs to core.checkpoint; this module fills in its
`training` part and puts it back on resume.
"""
import argparse
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from core.cli import UsageError, shown
from core.palette import Palette
from core.platform import atomic_copy
from recording.run_files import BEST, LAST

from .distributed import DistInfo, all_gather_objects, barrier, elastic_restart_count
from .early_stop import EarlyStopping
from .freeze import BackboneFreeze


def get_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, as plain types and tensors (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restores what `get_rng_state` saved (the CUDA part only when the device count matches)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class RunState:
    """Progress that a checkpoint carries besides the weights and the optimizer."""

    next_epoch: int = 0
    next_step: int = 0  # batches of `next_epoch` already done (non-zero after a mid-epoch stop)
    partial_loss: Tuple[float, int, int] = (0.0, 0, 0)  # loss sum, steps and batches without labels so far
    best_miou: float = -math.inf
    best_epoch: int = -1

    @property
    def epoch(self) -> int:
        """The last epoch the weights have completed, or the epoch in progress after a mid-epoch stop."""
        return self.next_epoch - 1 if self.next_step == 0 else self.next_epoch


@dataclass
class Training:
    """Everything a checkpoint saves and restores."""

    args: argparse.Namespace
    info: DistInfo
    model: nn.Module  # unwrapped: no DDP, not compiled, so state-dict keys match the builders
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    class_names: List[str]
    palette: Optional[Palette] = None
    state: RunState = field(default_factory=RunState)
    freeze: BackboneFreeze = field(default_factory=lambda: BackboneFreeze(nn.Module()))
    early_stop: EarlyStopping = field(default_factory=EarlyStopping)

    def checkpoint(self, metrics: Optional[Dict[str, Any]] = None) -> Checkpoint:
        """The checkpoint; collective (gathers every rank's RNG state), so call it on all ranks."""
        s = self.state
        training = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "next_epoch": s.next_epoch,
            "next_step": s.next_step,
            "partial_loss": list(s.partial_loss),
            "best_miou": s.best_miou,
            "best_epoch": s.best_epoch,
            "early_stop": self.early_stop.state_dict(),
            "freeze_backbone": {"epochs": self.freeze.epochs, "frozen": self.freeze.frozen},
            "args": dict(vars(self.args)),
            "rng": all_gather_objects(get_rng_state()),
            "world_size": self.info.world_size,
        }
        return Checkpoint(self.model.state_dict(), model_name=self.args.model, num_classes=self.args.num_classes,
                          class_names=self.class_names, aux=getattr(self.model, "aux_classifier", None) is not None,
                          dataset=self.args.dataset, palette=self.palette, metrics=metrics, training=training,
                          epoch=s.epoch)

    def save(self, out: Path, names: List[str], metrics: Optional[Dict[str, Any]] = None) -> None:
        ckpt = self.checkpoint(metrics)
        if self.info.is_main:
            for i, name in enumerate(names):
                try:  # the same content under several names: serialise once, then link or copy
                    save_checkpoint(ckpt, out / name) if i == 0 else atomic_copy(out / names[0], out / name)
                except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
                    raise OSError(f"could not write {out / name} ({_reason(e)}); the previous checkpoint is "
                                  f"intact: free space and continue with --resume auto") from None
        barrier()

    def restore(self, training: Dict[str, Any], state_dict: Dict[str, torch.Tensor], log: logging.Logger) -> None:
        self.model.load_state_dict(state_dict)
        self.optimizer.load_state_dict(training["optimizer"])
        fresh = dict(self.lr_scheduler.lr_lambdas[0].__dict__)
        self.lr_scheduler.load_state_dict(training["lr_scheduler"])
        if fresh != self.lr_scheduler.lr_lambdas[0].__dict__:
            log.warning("the schedule settings differ from the checkpoint's (e.g. --epochs): following the new ones")
            self.lr_scheduler.lr_lambdas[0].__dict__.update(fresh)
        self.scaler.load_state_dict(training["scaler"])
        rng = training.get("rng") or []
        if len(rng) == self.info.world_size:
            set_rng_state(rng[self.info.rank])
        elif rng:
            log.warning(f"checkpoint saved by {len(rng)} processes, resumed by {self.info.world_size}: "
                        f"random streams restart, so this run will not repeat the original bit for bit")
        self.state = run_state(training)
        self.early_stop.load_state_dict(training.get("early_stop") or {})
        saved = (training.get("freeze_backbone") or {}).get("epochs", 0)
        if saved != self.freeze.epochs:
            log.warning(f"the checkpoint's run had --freeze-backbone {saved}, this one {self.freeze.epochs}: "
                        f"following the new one")
        self.freeze.set_epoch(self.state.next_epoch)  # the phase of the epoch the run continues with


def _field(training: Dict[str, Any], key: str, kinds: Tuple[type, ...], low: float, default: Any = None) -> Any:
    value = training.get(key, default)
    # `type`, not isinstance: True is an int, and a bool here is a damaged file.
    if type(value) not in kinds or not value >= low:
        raise ValueError(f"training field {key!r} is {shown(value)}, expected "
                         f"{' or '.join(k.__name__ for k in kinds)} >= {low:g}")
    return value


def run_state(training: Dict[str, Any]) -> RunState:
    """The RunState a checkpoint's training dict records, each field checked for type and range. partial_loss
    is (loss sum, steps, empty batches); files written before empty batches were counted hold two values."""
    partial = training.get("partial_loss", (0.0, 0, 0))
    if (not isinstance(partial, (list, tuple)) or len(partial) not in (2, 3) or type(partial[0]) not in (int, float)
            or not all(type(v) is int for v in partial[1:])):
        raise ValueError(f"training field 'partial_loss' is {shown(partial)}, expected [loss sum, steps, empty "
                         f"batches]")
    partial = (float(partial[0]), *partial[1:], 0)[:3]
    return RunState(_field(training, "next_epoch", (int,), 0), _field(training, "next_step", (int,), 0),
                    partial, float(_field(training, "best_miou", (int, float), -math.inf)),
                    _field(training, "best_epoch", (int,), -1, -1))


def _reason(error: BaseException) -> str:
    """Why a write failed. torch.save reports a failed write as a RuntimeError about stream positions; the
    OSError of the file's write (No space left on device, File too large) is in its context."""
    cause: Optional[BaseException] = error
    for _ in range(8):  # the chain is short; bounded in case it loops
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def resume_path(args: argparse.Namespace, out: Path) -> Optional[Path]:
    """The checkpoint to resume from: --resume PATH, --resume auto (last.pth if any), or an elastic restart."""
    restarting = elastic_restart_count() > 0
    if args.resume == "auto" or (restarting and not args.resume):
        last = out / LAST
        return last if last.exists() else None
    if args.resume:
        path = Path(args.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint; check the path or use --resume auto")
        return path
    return None


def load_resume(training: Training, path: Path, log: logging.Logger) -> None:
    """Restores `training` from the checkpoint at `path`, refusing one of another model or class count."""
    ckpt = load_checkpoint(path)
    args = training.args
    if ckpt.model_name not in (None, args.model):
        raise UsageError(f"{path}: checkpoint of model {ckpt.model_name}, but this run has --model {args.model}; "
                         f"use the same settings or another --output-dir")
    if ckpt.num_classes not in (None, args.num_classes):
        raise UsageError(f"{path}: checkpoint of {ckpt.num_classes} classes, but this run has {args.num_classes} "
                         f"(--num-classes / the dataset); use the same settings or another --output-dir")
    if not ckpt.training:
        raise UsageError(f"{path}: holds weights but no training state, so it cannot be resumed; start from it "
                         f"with --weights instead of --resume")
    saved_args, wanted = ckpt.training.get("args"), getattr(args, "optimizer", "sgd")
    optimizer = saved_args.get("optimizer", "sgd") if isinstance(saved_args, dict) else wanted
    if optimizer != wanted:  # the optimizer state of one cannot drive the other
        raise UsageError(f"{path}: trained with --optimizer {optimizer}, but this run has --optimizer {wanted}; "
                         f"resume with the same optimizer, or start from it with --weights")
    try:
        training.restore(ckpt.training, ckpt.state_dict, log)
    except (KeyError, IndexError, AttributeError, RuntimeError, ValueError, TypeError) as e:
        raise UsageError(f"{path}: cannot resume from it ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         f"is it a checkpoint of this run?") from None
    s = training.state
    log.info(f"resumed from {path}: epoch {s.next_epoch}, iteration {s.next_step}, best mIoU "
             f"{s.best_miou * 100:.1f}")


def _saved_as(path: Path) -> Optional[Tuple[Any, Any]]:
    """(epoch, mIoU) a checkpoint file records, read without loading its tensors; None if missing or unreadable."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, truncated, not a checkpoint: in every case not the best epoch's file
        return None
    if not isinstance(obj, dict):
        return None
    metrics = obj.get("metrics")
    return obj.get("epoch"), metrics.get("mean_iou") if isinstance(metrics, dict) else None


def repair_best(out: Path, resumed: Path, state: RunState, log: logging.Logger) -> None:
    """After resuming from `out`/last.pth, makes best.pth the best epoch's checkpoint again if a kill between
    replacing last.pth and linking best.pth left it one epoch behind, or missing."""
    last, best = out / LAST, out / BEST
    if not last.is_file() or not resumed.is_file() or not os.path.samefile(resumed, last) or state.best_epoch < 0:
        return
    if best.is_file() and os.path.samefile(best, last):
        return
    found = _saved_as(best)
    if found == (state.best_epoch, state.best_miou):  # a copy (no hard links on this filesystem)
        return
    was = "missing" if not best.is_file() else f"of epoch {found[0]}" if found else "unreadable"
    if state.next_step == 0 and state.best_epoch == state.next_epoch - 1:  # last.pth is the best epoch
        atomic_copy(last, best)
        log.warning(f"best.pth was {was}, but the best epoch is {state.best_epoch} (the run was stopped between "
                    f"writing last.pth and best.pth): restored it from last.pth")
    else:
        log.warning(f"best.pth is {was}, not the best epoch {state.best_epoch}, whose weights are gone; it is "
                    f"replaced when an epoch beats mIoU {state.best_miou * 100:.1f}")
