"""The training and evaluation loops, identical for one process and for N processes under DDP."""
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from core.constants import IGNORE_INDEX
from core.runtime import Runtime

# normalize, prepare_images, resize_logits and whole_image lived here before inference.forward; kept importable
# from here for scripts written against earlier versions.
from inference.forward import Inferer, normalize, predict_scores, prepare_images, resize_logits, whole_image  # noqa: F401
from recording.recorders import StepRecord

from .distributed import all_reduce_sum, any_rank, get_world_size, is_main_process
from .loss import LossConfig, check_target, criterion
from .metrics import ConfusionMatrix


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the epoch and the iteration."""


@dataclass
class TrainOptions:
    """Settings of `train_one_epoch` beyond the model, data and optimizer."""

    num_classes: int
    runtime: Runtime = field(default_factory=lambda: Runtime(torch.device("cpu")))  # device, autocast, layout
    aux_weight: float = 0.5
    class_weights: Optional[torch.Tensor] = None
    scaler: Optional[torch.amp.GradScaler] = None  # Runtime.grad_scaler(): enabled for fp16 only
    clip_grad_norm: Optional[float] = None
    print_freq: int = 10
    should_stop: Callable[[], bool] = field(default=lambda: False)
    loss: LossConfig = field(default_factory=LossConfig)
    eval_modules: Sequence[nn.Module] = ()  # kept in eval mode while training (a frozen backbone's BatchNorm)


@dataclass
class EpochResult:
    """What one (possibly interrupted) training epoch did."""

    loss: float
    lr: float
    steps: int
    images_per_s: float
    interrupted: bool = False
    loss_sum: float = 0.0  # over the whole epoch so far, resumed part included
    total_steps: int = 0
    empty_batches: int = 0  # batches without a labelled pixel, all processes, resumed part included


def _nonfinite_error(epoch: int, step: int) -> NonFiniteLossError:
    where = f"iteration {step}" if step >= 0 else "an iteration of another process"
    return NonFiniteLossError(
        f"loss is NaN or inf at epoch {epoch}, {where}; the run stopped and kept its last good checkpoint. "
        f"Try a lower --lr, --clip-grad-norm, or bf16 instead of fp16 autocast")


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, epoch: int,
                    lr_scheduler, opts: TrainOptions, start_step: int = 0, prior: Tuple = (0.0, 0, 0),
                    on_step: Callable[[StepRecord], None] = lambda record: None) -> EpochResult:
    """One pass over `loader` (which may start at `start_step` when resuming mid-epoch).

    `prior` is (loss sum, steps[, batches without labels]) of the part of this epoch done before an
    interruption, so that the epoch's numbers after a resume are the same as without one. `on_step` receives
    a StepRecord at every print interval (the recorders of the run).

    A batch in which every pixel is 255 adds zero loss (and no gradient); such batches are counted and the
    count returned, summed over all processes.

    The loss stays on the device: the host reads it (a sync) only every `print_freq` iterations, where it
    also checks for NaN/inf (the first bad iteration is recorded on the device) and for a stop request.
    """
    model.train()
    for module in opts.eval_modules:
        module.eval()
    device = opts.runtime.device
    total = len(loader) + start_step
    bar = tqdm(total=total, initial=start_step, desc=f"epoch {epoch}", unit="img", dynamic_ncols=True,
               unit_scale=loader.batch_size * get_world_size(), disable=not is_main_process(), leave=False)
    loss_sum = torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.int64, device=device)
    prior_loss_sum, prior_steps, prior_empty = (tuple(prior) + (0,))[:3]
    steps, empty, interrupted, mean_loss, t0 = 0, 0, False, math.nan, time.perf_counter()
    for step, (images, targets) in enumerate(loader, start=start_step):
        empty += int(not bool((targets != IGNORE_INDEX).any()))  # the CPU batch: no device sync
        loss = train_batch(model, optimizer, images, targets, lr_scheduler, opts)
        loss_sum += loss
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
        steps += 1
        bar.update(1)
        last = step + 1 == total
        if (step + 1) % opts.print_freq == 0 or last:
            first_bad = int(bad_step.item())  # the host sync of this interval
            nonfinite, stop = any_rank([first_bad >= 0, opts.should_stop()], device)
            if nonfinite:
                raise _nonfinite_error(epoch, first_bad)
            mean_loss = (loss_sum.item() + prior_loss_sum) / (steps + prior_steps)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", **({"unlabelled": empty} if empty else {}))
            rate = steps * loader.batch_size * get_world_size() / max(time.perf_counter() - t0, 1e-9)
            on_step(StepRecord(epoch, step + 1, total, mean_loss, lr, rate))
            if stop and not last:
                interrupted = True
                break
    bar.close()
    elapsed = time.perf_counter() - t0
    images_seen = steps * loader.batch_size * get_world_size()
    empty = int(all_reduce_sum(torch.tensor(empty, device=device)).item()) + prior_empty
    return EpochResult(mean_loss, optimizer.param_groups[0]["lr"], steps, images_seen / max(elapsed, 1e-9),
                       interrupted, loss_sum.item() + prior_loss_sum, steps + prior_steps, empty)


def train_batch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor,
                lr_scheduler, opts: TrainOptions) -> torch.Tensor:
    """What train_one_epoch does with each loader batch (and tools/benchmark.py times): checks the host masks,
    moves the uint8 batch to the device and normalises it there, takes one optimizer step and one scheduler
    step. Returns the detached loss on the device, unread (no host sync)."""
    check_target(targets, opts.num_classes)  # CPU batch: no device sync
    runtime = opts.runtime
    images = prepare_images(images, runtime.device, runtime.channels_last)
    targets = targets.to(runtime.device, non_blocking=True)
    loss = train_step(model, optimizer, images, targets, opts)
    lr_scheduler.step()
    return loss.detach()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor, opts: TrainOptions) -> torch.Tensor:
    """One optimizer step on a normalised batch (autocast, gradient scaling for fp16, optional clipping);
    returns the loss tensor without reading it, so nothing waits for the device."""
    with opts.runtime.autocast():
        outputs = model(images)
    loss = criterion(outputs, targets, opts.aux_weight, class_weights=opts.class_weights, validate=False,
                     loss=opts.loss)
    optimizer.zero_grad(set_to_none=True)
    scaler = opts.scaler
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if opts.clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if opts.clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
        optimizer.step()
    return loss


Criterion = Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def eval_criterion(opts: TrainOptions) -> Criterion:
    """The training loss as evaluation computes it: the same ignore label and class weights, on the main
    head's logits only (the aux head only regularises training)."""
    return functools.partial(criterion, class_weights=opts.class_weights, validate=False, loss=opts.loss)


@dataclass
class Evaluation:
    """What one evaluation measured: the confusion matrix and, when a criterion was given, the loss."""

    confusion: ConfusionMatrix
    loss: Optional[float] = None  # mean criterion per labelled pixel, over all ranks


def evaluate(model: nn.Module, loader: Iterable, runtime: Union[Runtime, torch.device], num_classes: int,
             class_names: Optional[list] = None, infer: Inferer = whole_image,
             desc: str = "eval") -> ConfusionMatrix:
    """Confusion matrix of `model` over `loader`, summed over all ranks (see `run_evaluation`). A bare
    torch.device is taken as fp32 on that device, contiguous."""
    runtime = runtime if isinstance(runtime, Runtime) else Runtime(torch.device(runtime))
    return run_evaluation(model, loader, runtime, num_classes, class_names, infer, desc).confusion


@torch.inference_mode()
def run_evaluation(model: nn.Module, loader: Iterable, runtime: Runtime, num_classes: int,
                   class_names: Optional[list] = None, infer: Inferer = whole_image, desc: str = "eval",
                   criterion: Optional[Criterion] = None, on_batch: Optional[BatchHook] = None) -> Evaluation:
    """Confusion matrix (and optionally the loss) of `model` over `loader`, summed over all ranks.

    Each batch goes through inference.forward.predict_scores, the forward pass prediction uses: the scores are
    resized (bilinear) to each label's own resolution before the argmax, so the metrics are computed on the
    original masks even when the images were resized. Each rank must see a disjoint shard of the data without
    padding (see `train_utils.sampler`), so every image counts exactly once.

    Args:
        runtime: device, autocast dtype and memory format (core.runtime.resolve_runtime).
        criterion: called as criterion({"out": logits}, targets) on the resized logits (so `infer` must
            return logits); each batch's mean is weighted by its labelled pixels, so with cross-entropy the
            loss is the mean over every labelled pixel of the split, whatever the batching and world size.
            Sum and count stay on the device: the host reads them once, at the end.
        on_batch: called as on_batch(images, targets, predictions) with the loader's uint8 CPU images and
            the device's targets and predicted labels, e.g. to save pictures (validation.py --save-dir).
    """
    model.eval()
    device = runtime.device
    cm = ConfusionMatrix(num_classes, class_names, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss x pixels, labelled pixels)
    bar = tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, disable=not is_main_process(), leave=False)
    for images, targets in bar:
        targets = targets.to(device, non_blocking=True)
        logits = predict_scores(model, images, runtime, infer, size=targets.shape[-2:])
        if logits.shape[1] != num_classes:  # shapes are known on the host: no sync
            raise ValueError(f"the model outputs {logits.shape[1]} classes, but the evaluation is of {num_classes}; "
                             f"check --num-classes against the checkpoint")
        preds = logits.argmax(1)
        cm.update(targets, preds)
        if criterion is not None:
            loss_sum += _weighted_loss(criterion, logits, targets)
        if on_batch is not None:
            on_batch(images, targets, preds)
    cm.reduce_from_all_processes()
    if criterion is None:
        return Evaluation(cm)
    total, pixels = all_reduce_sum(loss_sum).tolist()
    return Evaluation(cm, total / pixels if pixels else math.nan)


def _weighted_loss(criterion: Criterion, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(batch mean x labelled pixels, labelled pixels) as a float64 device tensor; a batch without labelled
    pixels adds (0, 0) instead of the NaN of an empty mean."""
    pixels = (targets != IGNORE_INDEX).sum().double()
    loss = criterion({"out": logits}, targets).double()
    return torch.stack([torch.where(pixels > 0, loss * pixels, torch.zeros_like(loss)), pixels])
