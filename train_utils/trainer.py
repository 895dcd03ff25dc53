"""What train.py and train_multi_GPU.py run: set-up, the epoch loop, checkpoints and records."""
import argparse
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import (append_jsonl, append_text, atomic_copy, atomic_write, get_rng_state, save_checkpoint,
                         set_rng_state)
from .cli import UsageError
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, any_rank, barrier, broadcast_buffers,
                          cleanup, init_distributed_mode)
from .lr import create_lr_scheduler, create_optimizer
from .loss import class_weights_from_counts
from .options import check_args, default_lr, resolve_output_dir
from .sampler import EvalBatchSampler, SeededDataset, TrainSampler
from .train_eval import EpochResult, TrainOptions, amp_dtype_for, evaluate, train_one_epoch

RESULTS_FILE = "results.txt"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"


# How long a DataLoader worker keeps serving batches after a SIGTERM that did not come from the main process.
WORKER_TERM_GRACE_S = 60.0


def _serve_through_sigterm() -> None:
    """A worker's SIGTERM watcher (a thread; the signal is blocked everywhere else). A SIGTERM from the main
    process is the loader, or multiprocessing at exit, stopping this worker: it exits at once. One from
    elsewhere signalled the whole process group (`kill -- -PGID`, a scheduler's time limit): the main process
    got it too and is heading for its next safe point, so the worker keeps serving batches until the loader
    stops it, or WORKER_TERM_GRACE_S has passed."""
    deadline = None
    while True:
        if deadline is None:
            info = signal.sigwaitinfo({signal.SIGTERM})
        else:
            info = signal.sigtimedwait({signal.SIGTERM}, max(deadline - time.monotonic(), 0.0))
        if info is None:
            os._exit(128 + signal.SIGTERM)
        if info.si_pid == os.getppid():
            os._exit(0)  # a shutdown the main process asked for, not a failure
        deadline = deadline or time.monotonic() + WORKER_TERM_GRACE_S


def ignore_signals_in_worker(_: int) -> None:
    """Ctrl-C and `kill -- -PGID` reach the DataLoader workers too. They leave SIGINT to the main process, which
    stops the run at its next safe point and saves; SIGTERM: see `_serve_through_sigterm` (Linux; elsewhere
    it keeps its default)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigtimedwait"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_serve_through_sigterm, name="sigterm-watch", daemon=True).start()


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next safe point (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write, not logging: a handler may run while the logging lock is held.
        os.write(2, f"\n{signal.Signals(signum).name} received: saving a checkpoint at the next print interval, "
                    f"then stopping (Ctrl-C again aborts at once)\n".encode())

    def __call__(self) -> bool:
        return self.signum is not None


@dataclass
class RunState:
    """Progress that a checkpoint carries besides the weights and the optimizer."""

    next_epoch: int = 0
    next_step: int = 0  # batches of `next_epoch` already done (non-zero after a mid-epoch stop)
    partial_loss: Tuple[float, int] = (0.0, 0)
    best_miou: float = -math.inf
    best_epoch: int = -1


# ----------------------------------------------------------------------------------------------- set-up

def prepare_output_dir(args: argparse.Namespace, est_checkpoint_bytes: int) -> Path:
    """Creates the run directory and refuses to clobber an existing run or to start on a full disk."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file, not a directory; choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write_test", lambda f: f.write(b"ok"))
        (out / ".write_test").unlink()
    except OSError as e:
        raise UsageError(f"--output-dir {out} is not writable ({e.strerror or e}); choose another "
                         f"--output-dir") from None
    restarting = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    existing = [n for n in ("last.pth", "best.pth") if (out / n).exists()]
    if existing and not (args.resume or args.overwrite or restarting):
        raise UsageError(f"--output-dir {out} already holds a run ({', '.join(existing)}); pass --resume auto to "
                         f"continue it, --overwrite to start over, or choose another --output-dir")
    if existing and args.overwrite and not args.resume:
        (out / LOG_FILE).unlink(missing_ok=True)  # a new log; the records are rewound in run_training
    free = shutil.disk_usage(out).free
    check_free_space(out, free, est_checkpoint_bytes)
    return out


def check_free_space(out: Path, free_bytes: int, checkpoint_bytes: int) -> None:
    """Room for last.pth, best.pth and one temporary copy is needed, or hours of training end unsaved."""
    need = 3 * checkpoint_bytes + (64 << 20)
    if free_bytes < need:
        raise UsageError(f"--output-dir {out}: only {free_bytes / 2**30:.2f} GiB free, checkpoints need about "
                         f"{need / 2**30:.2f} GiB; free some space or choose another --output-dir")


def setup_logging(out: Path, is_main: bool) -> logging.Logger:
    """Logger writing to <out>/train.log and to the console (through tqdm, so bars stay intact)."""
    from tqdm import tqdm

    log = logging.getLogger("fcn.train")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if is_main:
        file_handler = logging.FileHandler(out / LOG_FILE)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stdout)

    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    # Per-interval loss lines go to the file only: on the console the progress bar shows them.
    console.addFilter(lambda r: not getattr(r, "file_only", False))
    log.addHandler(console)
    return log


def environment(info: DistInfo) -> Dict[str, Any]:
    import torchvision

    env = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
           "python": sys.version.split()[0], "device": str(info.device), "world_size": info.world_size}
    if info.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(info.device)
    return env


def write_config(out: Path, args: argparse.Namespace, info: DistInfo) -> None:
    """The resolved arguments plus versions and device, next to the checkpoints."""
    data = {"args": vars(args), "environment": environment(info)}
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(out / CONFIG_FILE, lambda f: f.write(text.encode()))


def build_datasets(args: argparse.Namespace):
    import my_dataset
    from transforms import SegmentationPresetEval, SegmentationPresetTrain

    train_tf = SegmentationPresetTrain(args.base_size, args.crop_size, scale_range=tuple(args.scale_range))
    eval_tf = SegmentationPresetEval(args.eval_size, args.eval_resize_masks)
    train_set = my_dataset.build_dataset(args.dataset, args.data_path, "train", train_tf)
    val_set = my_dataset.build_dataset(args.dataset, args.data_path, "val", eval_tf)
    return train_set, val_set


def loader_kwargs(args: argparse.Namespace, info: DistInfo) -> Dict[str, Any]:
    from my_dataset import collate_fn

    # A private generator for the workers' base seed: drawing it from the global generator would make the
    # dropout stream depend on when loaders are (re)created, and break exact resume.
    kwargs = {"num_workers": args.workers, "collate_fn": collate_fn, "pin_memory": info.device.type == "cuda",
              "generator": torch.Generator().manual_seed(args.seed)}
    if args.workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_signals_in_worker)
    return kwargs


def build_loaders(args: argparse.Namespace, info: DistInfo, train_set, val_set) -> Tuple[DataLoader, DataLoader]:
    sampler = TrainSampler(len(train_set), args.batch_size, info.rank, info.world_size, args.seed)
    kwargs = loader_kwargs(args, info)
    train_loader = DataLoader(SeededDataset(train_set), batch_size=args.batch_size, sampler=sampler,
                              drop_last=True, **kwargs)
    val_sampler = EvalBatchSampler(val_set.image_sizes(), args.eval_batch_size, info.rank, info.world_size)
    val_loader = DataLoader(val_set, batch_sampler=val_sampler, **kwargs)
    return train_loader, val_loader


def resolve_classes(args: argparse.Namespace, train_set) -> List[str]:
    names = list(train_set.class_names)
    if args.num_classes is None:
        args.num_classes = len(names)
    elif args.num_classes != len(names):
        raise UsageError(f"--num-classes {args.num_classes} but the dataset at {args.data_path} declares "
                         f"{len(names)} classes; drop --num-classes or fix the dataset's class list")
    return names


def amp_dtype(args: argparse.Namespace, device: torch.device) -> Optional[torch.dtype]:
    if not args.amp:
        return None
    return amp_dtype_for(device, args.amp_dtype)


def build_model_for_training(args: argparse.Namespace, info: DistInfo, log: logging.Logger):
    from src import build_model, load_model_weights

    model = build_model(args.model, args.num_classes, args.aux, args.pretrained_backbone)
    if args.weights:
        report = load_model_weights(model, args.weights)
        log.info(f"weights from {args.weights}: {report}")
    model.to(info.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if getattr(args, "sync_bn", False) and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model: nn.Module, args: argparse.Namespace, info: DistInfo, log: logging.Logger) -> nn.Module:
    """DDP when there are several processes, then torch.compile when asked (falling back with a message)."""
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        try:
            model = torch.compile(model)
        except Exception as e:  # unsupported platform or Python version
            log.warning(f"--compile unavailable here ({type(e).__name__}: {e}); running eagerly")
    return model


def compute_class_weights(args: argparse.Namespace, train_set, info: DistInfo,
                          log: logging.Logger) -> Optional[torch.Tensor]:
    """Loss weights from the training masks' pixel counts; each rank counts its share of the masks."""
    if args.class_weights == "none":
        return None
    from my_dataset import scan_split

    shard = train_set.pairs[info.rank::info.world_size]
    counts, _ = scan_split(shard, train_set.class_names, args.workers, masks_only=True, progress=info.is_main)
    counts = all_reduce_sum(torch.from_numpy(counts).to(info.device)).cpu().numpy()
    weights = class_weights_from_counts(counts[:args.num_classes], args.class_weights)
    log.info(f"class weights ({args.class_weights}): {[round(w, 3) for w in weights.tolist()]}")
    return weights


# ------------------------------------------------------------------------------------------ checkpoints

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
    state: RunState = field(default_factory=RunState)

    def checkpoint(self, metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The checkpoint dict; collective (gathers every rank's RNG state), so call it on all ranks."""
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.next_epoch - 1 if s.next_step == 0 else s.next_epoch,
            "next_epoch": s.next_epoch,
            "next_step": s.next_step,
            "partial_loss": list(s.partial_loss),
            "best_miou": s.best_miou,
            "best_epoch": s.best_epoch,
            "model_name": self.args.model,
            "num_classes": self.args.num_classes,
            "aux": getattr(self.model, "aux_classifier", None) is not None,
            "class_names": self.class_names,
            "args": {k: v for k, v in vars(self.args).items()},
            "metrics": metrics,
            "rng": all_gather_objects(get_rng_state()),
            "world_size": self.info.world_size,
        }

    def save(self, out: Path, names: List[str], metrics: Optional[Dict[str, Any]] = None) -> None:
        ckpt = self.checkpoint(metrics)
        if self.info.is_main:
            for i, name in enumerate(names):
                try:  # the same content under several names: serialise once, then link or copy
                    save_checkpoint(ckpt, out / name) if i == 0 else atomic_copy(out / names[0], out / name)
                except OSError as e:
                    raise OSError(f"could not write {out / name} ({e.strerror or e}); the previous checkpoint "
                                  f"is intact: free space and continue with --resume auto") from None
        barrier()

    def restore(self, ckpt: Dict[str, Any], log: logging.Logger) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        fresh = dict(self.lr_scheduler.lr_lambdas[0].__dict__)
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if fresh != self.lr_scheduler.lr_lambdas[0].__dict__:
            log.warning("the schedule settings differ from the checkpoint's (e.g. --epochs): following the new ones")
            self.lr_scheduler.lr_lambdas[0].__dict__.update(fresh)
        self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt.get("rng") or []
        if len(rng) == self.info.world_size:
            set_rng_state(rng[self.info.rank])
        elif rng:
            log.warning(f"checkpoint saved by {len(rng)} processes, resumed by {self.info.world_size}: "
                        f"random streams restart, so this run will not repeat the original bit for bit")
        self.state = RunState(ckpt["next_epoch"], ckpt["next_step"], tuple(ckpt.get("partial_loss", (0.0, 0))),
                              ckpt["best_miou"], ckpt.get("best_epoch", -1))


def resume_path(args: argparse.Namespace, out: Path) -> Optional[Path]:
    """The checkpoint to resume from: --resume PATH, --resume auto (last.pth if any), or an elastic restart."""
    restarting = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if args.resume == "auto" or (restarting and not args.resume):
        last = out / "last.pth"
        return last if last.exists() else None
    if args.resume:
        path = Path(args.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint; check the path or use --resume auto")
        return path
    return None


def load_resume(training: Training, path: Path, log: logging.Logger) -> None:
    from src import read_checkpoint

    ckpt = read_checkpoint(path)
    args = training.args
    if ckpt.get("model_name", args.model) != args.model:
        raise UsageError(f"{path}: checkpoint of model {ckpt['model_name']}, but this run has --model {args.model}; "
                         f"use the same settings or another --output-dir")
    if ckpt.get("num_classes", args.num_classes) != args.num_classes:
        raise UsageError(f"{path}: checkpoint of {ckpt['num_classes']} classes, but this run has {args.num_classes} "
                         f"(--num-classes / the dataset); use the same settings or another --output-dir")
    try:
        training.restore(ckpt, log)
    except (KeyError, RuntimeError, ValueError) as e:
        raise UsageError(f"{path}: cannot resume from it ({str(e).splitlines()[0]}); is it a checkpoint of "
                         f"this run?") from None
    s = training.state
    log.info(f"resumed from {path}: epoch {s.next_epoch}, iteration {s.next_step}, best mIoU "
             f"{s.best_miou * 100:.1f}")


# ------------------------------------------------------------------------------------------------ records

def rewind_records(out: Path, next_epoch: int) -> None:
    """Drops record entries of epochs >= `next_epoch`: a run killed after recording an epoch but before its
    checkpoint landed redoes that epoch on resume, and must not record it twice."""
    metrics = out / METRICS_FILE
    if metrics.exists():
        lines = [ln for ln in metrics.read_text().splitlines(keepends=True) if ln.strip()]
        kept = [ln for ln in lines if _json_epoch(ln) is not None and _json_epoch(ln) < next_epoch]
        if kept != lines:
            atomic_write(metrics, lambda f: f.write("".join(kept).encode()))
    results = out / RESULTS_FILE
    if results.exists():
        blocks = re.split(r"(?m)^(?=\[epoch: )", results.read_text())
        kept = [b for b in blocks if _block_epoch(b) is not None and _block_epoch(b) < next_epoch]
        if len(kept) != len([b for b in blocks if b]):
            atomic_write(results, lambda f: f.write("".join(kept).encode()))


def _block_epoch(block: str) -> Optional[int]:
    match = re.match(r"\[epoch: (\d+)\]", block)
    return int(match.group(1)) if match else None


def _json_epoch(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def record_epoch(out: Path, epoch: int, result: EpochResult, cm, elapsed: float) -> Dict[str, Any]:
    """Appends the reference-style block to results.txt and a JSON line to metrics.jsonl."""
    line = {"epoch": epoch, "train_loss": result.loss, "lr": result.lr, "images_per_s": result.images_per_s,
            "epoch_time_s": elapsed}
    if cm is not None:
        metrics = cm.metrics()
        line.update({k: v for k, v in metrics.items() if k != "class_names"})
        block = f"[epoch: {epoch}]\ntrain_loss: {result.loss:.4f}\nlr: {result.lr:.6f}\n{cm}\n\n"
        append_text(out / RESULTS_FILE, block)
    append_jsonl(out / METRICS_FILE, line)
    return line


# ------------------------------------------------------------------------------------------------ the run

def setup(args: argparse.Namespace) -> Tuple[DistInfo, Path, logging.Logger]:
    check_args(args)
    info = init_distributed_mode(args.device)
    args.device = str(info.device)
    args.output_dir = resolve_output_dir(args)
    if args.channels_last is None:
        args.channels_last = info.device.type == "cuda"
    if args.lr is None:
        args.lr = default_lr(args.batch_size, info.world_size)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest conv algorithms once
    torch.manual_seed(args.seed + info.rank)
    # A checkpoint holds the weights plus one momentum buffer: about 8 bytes per parameter.
    from src import build_model

    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_model(args.model, 21, args.aux).parameters())
    out = prepare_output_dir(args, 8 * n_params) if info.is_main else Path(args.output_dir)
    barrier()
    return info, out, setup_logging(out, info.is_main)


def run_training(args: argparse.Namespace) -> int:
    """Trains as the flags say; returns the exit code (non-zero when stopped by a signal)."""
    info, out, log = setup(args)
    train_set, val_set = build_datasets(args)
    class_names = resolve_classes(args, train_set)
    train_loader, val_loader = build_loaders(args, info, train_set, val_set)
    model = build_model_for_training(args, info, log)
    optimizer = create_optimizer(model, args.lr, args.momentum, args.weight_decay,
                                 fused=info.device.type == "cuda")
    scheduler = create_lr_scheduler(optimizer, len(train_loader), args.epochs, warmup=args.warmup_epochs > 0,
                                    warmup_epochs=max(args.warmup_epochs, 1))
    dtype = amp_dtype(args, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)
    training = Training(args, info, model, optimizer, scheduler, scaler, class_names)
    path = resume_path(args, out)
    if path is not None:
        load_resume(training, path, log)
    if info.is_main:
        # Entries of epochs this run will (re)do go: after a resume, those recorded after the checkpoint;
        # for a new run, all of them.
        rewind_records(out, training.state.next_epoch)
        write_config(out, args, info)
    log.info(f"command: {shlex.join(sys.argv)}")
    log.info(f"run directory {out}: {len(train_set)} training / {len(val_set)} validation images, "
             f"{args.model} with {args.num_classes} classes on {info.device} x {info.world_size}, lr {args.lr:g}")
    weights = compute_class_weights(args, train_set, info, log)
    weights = None if weights is None else weights.to(info.device)  # once, not a copy per step
    opts = TrainOptions(args.num_classes, args.aux_weight, weights, dtype, scaler, args.clip_grad_norm,
                        args.channels_last, args.print_freq)
    try:
        with StopRequest() as stop:
            opts.should_stop = stop
            return fit(training, wrap_model(model, args, info, log), train_loader, val_loader, opts, out, log,
                       stop)
    finally:
        cleanup()


def fit(training: Training, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
        opts: TrainOptions, out: Path, log: logging.Logger, stop: StopRequest) -> int:
    args, info, s = training.args, training.info, training.state
    first_epoch = s.next_epoch
    for epoch in range(s.next_epoch, args.epochs):
        start = time.perf_counter()
        train_loader.sampler.set_epoch(epoch, s.next_step)
        result = train_one_epoch(model, training.optimizer, train_loader, info.device, epoch,
                                 training.lr_scheduler, opts, s.next_step, s.partial_loss,
                                 lambda msg: log.info(msg, extra={"file_only": True}))
        if result.interrupted:
            s.next_step, s.partial_loss = s.next_step + result.steps, (result.loss_sum, result.total_steps)
            training.save(out, ["last.pth"])
            return stopped(stop, f"at epoch {epoch}, iteration {s.next_step}", out, log)
        cm = None
        if (args.eval_every and (epoch + 1) % args.eval_every == 0) or epoch + 1 == args.epochs:
            broadcast_buffers(training.model)
            cm = evaluate(model, val_loader, info.device, args.num_classes, training.class_names, opts.amp_dtype,
                          args.channels_last, desc=f"eval {epoch}")
        s.next_epoch, s.next_step, s.partial_loss = epoch + 1, 0, (0.0, 0)
        line = record_epoch(out, epoch, result, cm, time.perf_counter() - start) if info.is_main else {}
        names = ["last.pth"]
        if cm is not None:
            m = cm.metrics()
            log.info(f"epoch {epoch}: train loss {result.loss:.4f}, mIoU {m['mean_iou'] * 100:.1f}, "
                     f"pixel acc {m['pixel_acc'] * 100:.1f}, {result.images_per_s:.1f} img/s")
            if m["mean_iou"] > s.best_miou:
                s.best_miou, s.best_epoch = m["mean_iou"], epoch
                names.append("best.pth")
        training.save(out, names, metrics=line or None)
        if any_rank([stop()], info.device)[0]:
            return stopped(stop, f"after epoch {epoch}", out, log)
        if args.stop_after_epochs and epoch + 1 - first_epoch >= args.stop_after_epochs and epoch + 1 < args.epochs:
            log.info(f"stopping after {args.stop_after_epochs} epoch(s) (--stop-after-epochs): continue with "
                     f"--resume auto")
            return 0
    log.info(f"done: best mIoU {s.best_miou * 100:.1f} at epoch {s.best_epoch}; checkpoints in {out}")
    return 0


def stopped(stop: StopRequest, where: str, out: Path, log: logging.Logger) -> int:
    """Logs a signal stop and returns the conventional exit code 128 + signal number."""
    signum = stop.signum or signal.SIGTERM  # another rank may have received it
    log.warning(f"stopped by {signal.Signals(signum).name} {where}: saved {out / 'last.pth'}; continue with "
                f"--resume auto")
    return 128 + signum
