"""What train.py and train_multi_GPU.py run: set-up, the epoch loop, checkpoints and records."""
import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.platform import StopRequest, exit_code
from core.runtime import resolve_runtime
from data_utils import set_max_image_pixels
from recording.recorders import EpochRecord, IntervalLoss, Recorder, Recorders, default_recorders
from recording.run_dir import prepare_output_dir, release_run_dir, setup_logging, write_config
from recording.run_files import BEST, LAST
from src import build_model
from visualization.recorders import require_tensorboard, visual_recorders

from .builders import build_datasets, build_loaders, build_model_for_training, compute_class_weights, wrap_model
from .checkpoint import Training, load_resume, repair_best, resume_path
from .distributed import (
    DistInfo,
    any_rank,
    barrier,
    broadcast_buffers,
    cleanup,
    elastic_restart_count,
    init_distributed_mode,
)
from .early_stop import EarlyStopping
from .freeze import BackboneFreeze
from .lr import create_lr_scheduler, create_optimizer
from .options import check_args, loss_config, resolve_args
from .train_eval import TrainOptions, eval_criterion, run_evaluation, train_one_epoch


def checkpoint_bytes(args: argparse.Namespace) -> int:
    """About the size of one checkpoint of the run's model: the weights plus one momentum buffer, 8 bytes per
    parameter (built on the meta device: no memory, no weights read)."""
    with torch.device("meta"):
        return 8 * sum(p.numel() for p in build_model(args.model, args.num_classes, args.aux).parameters())


def open_run_dir(args: argparse.Namespace, info: DistInfo) -> Tuple[Path, logging.Logger]:
    """Rank 0 creates and claims the run directory (refusing to clobber a run or to start on a full disk);
    every rank then logs to it."""
    if info.is_main:
        out, notes = prepare_output_dir(args, checkpoint_bytes(args), restarting=elastic_restart_count() > 0)
    else:
        out, notes = Path(args.output_dir), []
    barrier()
    log = setup_logging(out, info.is_main)
    for note in notes:
        log.warning(note)
    return out, log


def run_training(args: argparse.Namespace, extra_recorders: Optional[List[Recorder]] = None) -> int:
    """Trains as the flags say; returns the exit code (non-zero when stopped by a signal).

    Args:
        args: the parsed flags; the run works on a resolved copy (options.resolve_args) and leaves them as they are.
        extra_recorders: recorders (rank 0 only) beyond train.log, results.txt, metrics.jsonl and steps.jsonl.
    """
    check_args(args)
    set_max_image_pixels(args.max_image_pixels)  # here, before any image is read, and for the loader workers
    if args.tensorboard:
        require_tensorboard()  # before any work: a missing extra is one line, not a crash after an epoch
    info = init_distributed_mode(args.device, rendezvous_s=args.rendezvous_timeout)
    runtime = resolve_runtime(args, info.local_rank, device=info.device)
    train_set, val_set = build_datasets(args)
    class_names = list(train_set.class_names)
    args = resolve_args(args, info.world_size, runtime, class_names)
    runtime.set_backend_flags(args.deterministic)
    torch.manual_seed(args.seed + info.rank)
    out, log = open_run_dir(args, info)
    train_loader, val_loader = build_loaders(args, info, runtime, train_set, val_set)
    model = build_model_for_training(args, info, runtime, log)
    # The optimizer gets every trainable parameter, the backbone's too: freezing only withholds gradients.
    optimizer = create_optimizer(model, args.lr, args.momentum, args.weight_decay, fused=runtime.fused_optimizer,
                                 name=args.optimizer, betas=args.betas)
    scheduler = create_lr_scheduler(optimizer, len(train_loader), args.epochs, warmup=args.warmup_epochs > 0,
                                    warmup_epochs=max(args.warmup_epochs, 1))
    scaler = runtime.grad_scaler()
    training = Training(args, info, model, optimizer, scheduler, scaler, class_names, train_set.palette,
                        freeze=BackboneFreeze(model, args.freeze_backbone),
                        early_stop=EarlyStopping(args.early_stop, args.early_stop_min_delta or 0.0))
    path = resume_path(args, out)
    if path is not None:
        load_resume(training, path, log)
        if info.is_main:
            repair_best(out, path, training.state, log)
    s, steps_per_epoch = training.state, train_loader.sampler.batches_per_epoch
    resume_step, interval_loss = s.next_epoch * steps_per_epoch + s.next_step, IntervalLoss()
    recorders = Recorders(default_recorders(out, log, interval_loss, resume_step) + visual_recorders(
        args, out, log, model, val_set, runtime, class_names, train_set.palette, interval_loss, resume_step)
        + list(extra_recorders or []) if info.is_main else [])
    # Entries of epochs this run will (re)do go: after a resume, those recorded after the checkpoint; for a
    # new run, all of them.
    recorders.start(training.state.next_epoch)
    if info.is_main:
        write_config(out, args, runtime, info.world_size)
    log.info(f"command: {shlex.join(sys.argv)}")
    log.info(f"run directory {out}: {len(train_set)} training / {len(val_set)} validation images, "
             f"{args.model} with {args.num_classes} classes on {runtime.describe()} x {info.world_size}, "
             f"lr {args.lr:g}")
    weights = compute_class_weights(args, train_set, info, runtime, log)
    opts = TrainOptions(args.num_classes, runtime, aux_weight=args.aux_weight, class_weights=weights, scaler=scaler,
                        clip_grad_norm=args.clip_grad_norm, print_freq=args.print_freq, loss=loss_config(args))
    try:
        with StopRequest() as stop:
            opts.should_stop = stop
            return fit(training, lambda: wrap_model(model, info, runtime, log), train_loader, val_loader, opts, out,
                       log, stop, recorders)
    finally:
        recorders.close()
        cleanup()
        release_run_dir(out)


def fit(training: Training, wrap: Callable[[], nn.Module], train_loader: DataLoader, val_loader: DataLoader,
        opts: TrainOptions, out: Path, log: logging.Logger, stop: StopRequest, recorders: Recorder) -> int:
    """The epoch loop; `wrap` returns the model to train (DDP, compiled), made anew whenever the set of
    trained parameters changes."""
    args, info, s = training.args, training.info, training.state
    if training.early_stop.stopped and training.early_stop.should_stop:
        log.info(f"this run stopped early ({training.early_stop.reason()}): nothing to do; a larger --early-stop "
                 f"continues it")
        return 0
    if s.next_epoch >= args.epochs:  # a finished run resumed: the loop would not run, nor write anything
        source = out / LAST if args.resume in (None, "auto") else args.resume
        log.info(f"{source} has completed all {s.next_epoch} epochs, so there is nothing to train"
                 f"{'' if (out / LAST).exists() else f' and no checkpoint is written to {out}'}; raise --epochs to "
                 f"train on, or start a new run from its weights with --weights")
        return 0
    first_epoch, model = s.next_epoch, None
    for epoch in range(s.next_epoch, args.epochs):
        # DDP reduces only the parameters that trained when it was made: a new phase needs a new wrapper.
        if training.freeze.set_epoch(epoch) or model is None:
            model, opts.eval_modules = wrap(), training.freeze.eval_modules
            if training.freeze.epochs:
                log.info(training.freeze.describe(epoch))
        start = time.perf_counter()
        train_loader.sampler.set_epoch(epoch, s.next_step)
        result = train_one_epoch(model, training.optimizer, train_loader, epoch, training.lr_scheduler, opts,
                                 s.next_step, s.partial_loss, recorders.on_step)
        if result.interrupted:
            s.next_step = s.next_step + result.steps
            s.partial_loss = (result.loss_sum, result.total_steps, result.empty_batches)
            training.save(out, [LAST])
            return stopped(stop, f"at epoch {epoch}, iteration {s.next_step}", out, log)
        cm, extra = None, {}
        if (args.eval_every and (epoch + 1) % args.eval_every == 0) or epoch + 1 == args.epochs:
            broadcast_buffers(training.model)
            evaluation = run_evaluation(model, val_loader, opts.runtime, args.num_classes, training.class_names,
                                        desc=f"eval {epoch}", criterion=eval_criterion(opts))
            cm, extra = evaluation.confusion, {"val_loss": evaluation.loss}
        record = EpochRecord(epoch, result.loss, result.lr, result.images_per_s, time.perf_counter() - start,
                             train_loader.sampler.batches_per_epoch, cm, cm.metrics() if cm is not None else None,
                             extra)
        if finish_epoch(training, record, result.empty_batches, recorders, out, log):
            return 0
        if any_rank([stop()], info.device)[0]:
            return stopped(stop, f"after epoch {epoch}", out, log)
        if args.stop_after_epochs and epoch + 1 - first_epoch >= args.stop_after_epochs and epoch + 1 < args.epochs:
            log.info(f"stopping after {args.stop_after_epochs} epoch(s) (--stop-after-epochs): continue with "
                     f"--resume auto")
            return 0
    log.info(f"done: best mIoU {s.best_miou * 100:.1f} at epoch {s.best_epoch}; checkpoints in {out}")
    return 0


def finish_epoch(training: Training, record: EpochRecord, empty_batches: int, recorders: Recorder, out: Path,
                 log: logging.Logger) -> bool:
    """Records a completed epoch, saves last.pth (and best.pth when mIoU improved); True when early stopping
    ends the run here."""
    s, early, epoch = training.state, training.early_stop, record.epoch
    s.next_epoch, s.next_step, s.partial_loss = epoch + 1, 0, (0.0, 0, 0)
    record.extra["empty_batches"] = empty_batches
    if empty_batches:
        log.warning(f"epoch {epoch}: {empty_batches} of {record.steps_per_epoch * training.info.world_size} "
                    f"batches had no labelled pixel (all 255) and added zero loss; `python my_dataset.py check` "
                    f"lists images without labels, and a larger --crop-size makes such crops rarer")
    fired = record.metrics is not None and early.update(record.metrics["mean_iou"], epoch)
    stop_early = early.stopped_early(epoch, training.args.epochs) if fired else False
    if early.patience is not None:
        record.extra["evals_without_improvement"] = early.bad_evals
    if stop_early:
        record.extra["stopped"] = f"early stop: {early.reason()}"
    recorders.on_epoch(record)
    names = [LAST]
    if record.metrics is not None and record.metrics["mean_iou"] > s.best_miou:
        s.best_miou, s.best_epoch = record.metrics["mean_iou"], epoch
        names.append(BEST)
    training.save(out, names, metrics=record.as_dict())
    if stop_early:
        log.info(f"early stop after epoch {epoch}: {early.reason()}; best.pth holds epoch {s.best_epoch} (mIoU "
                 f"{s.best_miou * 100:.1f})")
    return stop_early


def stopped(stop: StopRequest, where: str, out: Path, log: logging.Logger) -> int:
    """Logs a signal stop and returns the conventional exit code 128 + signal number."""
    code = exit_code(stop.signum)  # another rank may have received it: SIGTERM then
    log.warning(f"stopped by {stop.name()} {where}: saved {out / LAST}; continue with --resume auto")
    return code
