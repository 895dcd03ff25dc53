"""Times our training, evaluation, inference and data-loading paths against torchvision's reference recipe.

    python tools/benchmark.py --mode train --device cuda --batch-size 8 --size 480 --json train.json
    python tools/benchmark.py --mode eval --device cuda --batch-size 8 --json eval.json
    python tools/benchmark.py --mode infer --device cuda --size 520 --iters 200 --json infer.json
    python tools/benchmark.py --mode data --batch-size 8 --workers 1 2 4 8 16 --gpu-step-rate 150

train, eval and infer run our code path and torchvision's ("the baseline") in one process, in alternating
rounds (baseline, ours, baseline, ours, ...) so that clock changes and other load hit both alike, and report
images/s, the ratio ours / baseline, peak CUDA memory, FLOPs per image and MFU. data times the training
DataLoader alone: it has no baseline. The protocol is printed with the numbers and written to --json (see
docs/BENCHMARKS.md). Both models get the same random weights unless --weights is given: speed does not depend
on the weights, but the argmax agreement that infer reports only means something with trained ones.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import segmentation as tv_segmentation
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages live at the repository root
from core.cli import (ArgumentParser, UsageError, add_config_flags, non_negative_int, parse_with_config,  # noqa: E402
                      positive_float, positive_int, run_main)
from core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from core.runtime import Runtime, add_runtime_flags, autocast, resolve_runtime  # noqa: E402
from data_utils import build_dataset, collate_fn, read_image, save_mask  # noqa: E402
from src import build_model, model_from_checkpoint  # noqa: E402
from src.fuse import prepare_for_inference  # noqa: E402
from transforms import SegmentationPresetTrain  # noqa: E402
from train_utils.builders import loader_kwargs  # noqa: E402
from train_utils.loss import check_target  # noqa: E402
from train_utils.lr import create_lr_scheduler, create_optimizer  # noqa: E402
from train_utils.sampler import EvalBatchSampler, SeededDataset, TrainSampler  # noqa: E402
from train_utils.train_eval import TrainOptions, evaluate, prepare_images, train_step  # noqa: E402

MODES = ("train", "eval", "infer", "data")
TV_BUILDERS = {"fcn_resnet50": tv_segmentation.fcn_resnet50, "fcn_resnet101": tv_segmentation.fcn_resnet101}
# Per mode: the unit that --warmup and --iters count, and their defaults.
UNITS = {"train": "steps", "eval": "passes over the images", "infer": "calls", "data": "batches"}
DEFAULT_WARMUP = {"train": 5, "eval": 1, "infer": 5}
DEFAULT_ITERS = {"train": 50, "eval": 5, "infer": 50}
DEFAULT_SIZE = {"train": 480, "infer": 520, "data": 480}
DEFAULT_NUM_IMAGES = {"eval": 48, "data": 64}
# VOC has few distinct image sizes; these three (height x width) cover most of it.
VOC_SIZES = ((375, 500), (333, 500), (500, 375))
DEFAULT_WORKERS = (1, 2, 4, 8, 16)
LR = 0.02  # the reference recipe's; the value does not change the speed
AGREEMENT_TARGET = 0.999
LOADER_HEADROOM = 1.5  # the loader should outrun the GPU by this much to hide its jitter
# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s: (bf16/fp16, tf32). First match wins;
# NVL boards (lower clocks) are left out on purpose, so their peak gets measured.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0, 378.0),
    (r"H100|H200", 989.4, 494.7),
    (r"A100", 312.0, 156.0),
    (r"L40S", 362.1, 183.0),
    (r"\bL4\b", 121.0, 60.0),
    (r"\bA10\b", 125.0, 62.5),
)

Unit = Callable[[], None]


# --------------------------------------------------------------------------------------------- command line

def image_size(text: str) -> Tuple[int, int]:
    """'375x500' -> (375, 500), height x width."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 375x500, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return height, width


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p = parser.add_argument
    p("--mode", choices=MODES, default="train", help="what to time")
    p("--model", choices=list(TV_BUILDERS), default=None,
      help="architecture; the baseline is torchvision's model of the same name (default: the --weights "
           "checkpoint's model, else fcn_resnet50)")
    p("-b", "--batch-size", type=positive_int, default=8,
      help="images per training step, per eval batch of ours (the baseline evaluates one at a time) and per "
           "loader batch; infer always uses 1")
    p("--size", type=positive_int, default=None,
      help="side of the square input: train crop (default 480), infer image (520), data crop (480)")
    p("--warmup", type=non_negative_int, default=None,
      help="untimed units per variant: train steps (default 5), eval passes (1), infer calls (5), data batches "
           "(max(5, 2 x workers))")
    p("--iters", type=positive_int, default=None,
      help="timed units per variant: train steps (default 50), eval passes (5), infer calls (50), data batches "
           "(max(50, 10 x workers))")
    p("--rounds", type=positive_int, default=5, help="the timed units are split into this many alternating rounds")
    p("--num-classes", type=positive_int, default=None, help="output classes (default: 21, or the checkpoint's)")
    p("--weights", default=None, metavar="PATH",
      help="checkpoint loaded into both models (default: the same random weights)")
    p("--seed", type=non_negative_int, default=0, help="seed of the random weights and inputs")
    p("--image", default=None, metavar="PATH",
      help="infer: a photo, resized to --size (default: a synthetic smooth image)")
    p("--image-sizes", type=image_size, nargs="+", default=None, metavar="HxW",
      help="eval and data: image sizes, used in turn (default: 375x500 333x500 500x375, as in VOC)")
    p("--num-images", type=positive_int, default=None,
      help="eval: images held in memory (default 48); data: JPEG files written (default 64)")
    p("--base-size", type=positive_int, default=520, help="data: base size of SegmentationPresetTrain")
    p("--workers", type=non_negative_int, nargs="+", default=None,
      help=f"data: loader worker counts to time (default {' '.join(map(str, DEFAULT_WORKERS))})")
    p("--gpu-step-rate", type=positive_float, default=None, metavar="IMGS",
      help="data: GPU training images/s (from --mode train) that the loader has to keep up with")
    p("--json", default=None, metavar="FILE", help="write the protocol and all numbers to this JSON file")
    # Ours runs with the flags of every other script (the same runtime policy); the baseline is always
    # torchvision's fp32, contiguous, eager recipe.
    add_runtime_flags(parser)
    add_config_flags(parser)
    return parse_with_config(parser, argv)


def _reject(args: argparse.Namespace, flag: str, modes: Sequence[str]) -> None:
    if getattr(args, flag.lstrip("-").replace("-", "_")) is not None and args.mode not in modes:
        raise UsageError(f"{flag} does not apply to --mode {args.mode} (only to {', '.join(modes)}); drop it")


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills in the defaults that depend on --mode and rejects flags that do not apply to it."""
    for flag, modes in (("--size", ("train", "infer", "data")), ("--image", ("infer",)),
                        ("--image-sizes", ("eval", "data")), ("--num-images", ("eval", "data")),
                        ("--workers", ("data",)), ("--gpu-step-rate", ("data",)),
                        ("--weights", ("train", "eval", "infer")), ("--num-classes", ("train", "eval", "infer")),
                        ("--model", ("train", "eval", "infer")), ("--channels-last", ("train", "eval", "infer"))):
        _reject(args, flag, modes)
    for flag in ("amp", "compile"):
        if getattr(args, flag) and args.mode == "data":
            raise UsageError(f"--{flag} does not apply to --mode data (only to train, eval, infer); drop it")
    mode = args.mode
    args.size = args.size or DEFAULT_SIZE.get(mode)
    if mode != "data":  # data's defaults depend on the worker count (see loader_rate)
        args.warmup = DEFAULT_WARMUP[mode] if args.warmup is None else args.warmup
        args.iters = args.iters or DEFAULT_ITERS[mode]
    args.image_sizes = [tuple(s) for s in (args.image_sizes or VOC_SIZES)]
    args.num_images = args.num_images or DEFAULT_NUM_IMAGES.get(mode)
    args.workers = args.workers or list(DEFAULT_WORKERS)
    if mode == "data" and args.num_images < args.batch_size:
        raise UsageError(f"--num-images {args.num_images} is less than one batch (--batch-size {args.batch_size}); "
                         f"raise --num-images")
    return args


# ------------------------------------------------------------------------------------------ what ours runs

class Setup:
    """The device and what ours runs with there (the baseline is always fp32, contiguous, not compiled)."""

    def __init__(self, runtime: Runtime) -> None:
        self.device = runtime.device
        self.amp = runtime.amp_dtype
        self.channels_last = runtime.channels_last
        self.compile = runtime.compile

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def settings(self, **extra: Any) -> Dict[str, Any]:
        return {"dtype": dtype_name(self.amp), "memory_format": format_name(self.channels_last),
                "compile": self.compile, **extra}


def dtype_name(amp: Optional[torch.dtype]) -> str:
    return "float32" if amp is None else str(amp).replace("torch.", "")


def format_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def baseline_settings(**extra: Any) -> Dict[str, Any]:
    return {"dtype": "float32", "memory_format": "contiguous", "compile": False, **extra}


# ------------------------------------------------------------------------------------------ models and data

def make_models(args: argparse.Namespace) -> Tuple[nn.Module, nn.Module, str]:
    """(baseline, ours) on the CPU with identical weights, and where the weights come from.

    torchvision's and our state dicts have the same keys, so one loads the other's strictly.
    """
    if args.weights:
        loaded = model_from_checkpoint(args.weights, args.model, args.num_classes)
        if loaded.name not in TV_BUILDERS:
            raise UsageError(f"{args.weights}: holds {loaded.name} weights; the benchmark compares "
                             f"{' and '.join(TV_BUILDERS)} with torchvision's, pass a checkpoint of one of them")
        ours, args.model = loaded.model, loaded.name
        aux = getattr(ours, "aux_classifier", None) is not None
        baseline = TV_BUILDERS[args.model](weights=None, weights_backbone=None, aux_loss=aux,
                                           num_classes=num_classes_of(ours))
        baseline.load_state_dict(ours.state_dict())
        return baseline, ours, f"checkpoint {args.weights}"
    args.model = args.model or "fcn_resnet50"
    torch.manual_seed(args.seed)
    num_classes = args.num_classes or 21
    baseline = TV_BUILDERS[args.model](weights=None, weights_backbone=None, aux_loss=True, num_classes=num_classes)
    ours = build_model(args.model, num_classes, aux=True)
    ours.load_state_dict(baseline.state_dict())
    return baseline, ours, f"random: torchvision's init after torch.manual_seed({args.seed}), copied into ours"


def num_classes_of(model: nn.Module) -> int:
    return model.classifier[-1].out_channels


def has_aux(model: nn.Module) -> bool:
    return getattr(model, "aux_classifier", None) is not None


def smooth_images(n: int, size: Tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """uint8 (n, 3, H, W) photo-like images: random colours on a coarse grid, upsampled, with mild noise."""
    height, width = size
    coarse = torch.rand(n, 3, max(height // 64, 2), max(width // 64, 2), generator=gen) * 255
    images = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    images = images + 8 * torch.randn(n, 3, height, width, generator=gen)
    return images.clamp(0, 255).round().to(torch.uint8)


def random_masks(n: int, size: Tuple[int, int], num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 (n, H, W) blocky class maps with about 5% ignore pixels (VOC marks object boundaries so)."""
    height, width = size
    coarse = torch.randint(0, num_classes, (n, 1, max(height // 32, 1), max(width // 32, 1)), generator=gen)
    masks = F.interpolate(coarse.float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
    masks[torch.rand(n, height, width, generator=gen) < 0.05] = IGNORE_INDEX
    return masks


def tv_normalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's presets on the host: uint8 -> float in [0, 1] (ToDtype scale=True), then Normalize."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked on CUDA (what a pin_memory DataLoader hands over), as is on the CPU."""
    return t.pin_memory() if device.type == "cuda" else t


def tv_criterion(outputs: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """torchvision's reference criterion: CE(out) + 0.5 CE(aux), ignore 255."""
    losses = {name: F.cross_entropy(x, target, ignore_index=IGNORE_INDEX) for name, x in outputs.items()}
    return losses["out"] if len(losses) == 1 else losses["out"] + 0.5 * losses["aux"]


# ---------------------------------------------------------------------------------------- train variants

class TVTrain:
    """One step of torchvision's train_one_epoch (the baseline), fp32, contiguous.

    TV's param groups (backbone, classifier, aux head at 10x lr), torch.optim.SGD with its default
    implementation, PolynomialLR(power 0.9) stepped every iteration. The input is what TV's loader yields:
    a float32 normalised batch and int64 masks, here pinned and sent with non_blocking=True.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
                 total_steps: int) -> None:
        self.model, self.device = model.to(device).train(), device
        groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad]},
                  {"params": [p for p in model.classifier.parameters() if p.requires_grad]}]
        if has_aux(model):
            groups.append({"params": [p for p in model.aux_classifier.parameters() if p.requires_grad],
                           "lr": LR * 10})
        self.optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=total_steps, power=0.9)
        self.images, self.targets = pinned(tv_normalize(images), device), pinned(masks.long(), device)
        self.loss = torch.zeros(())

    def __call__(self) -> None:
        image = self.images.to(self.device, non_blocking=True)
        target = self.targets.to(self.device, non_blocking=True)
        output = self.model(image)
        loss = tv_criterion(output, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.loss = loss.detach()  # TV also calls loss.item() here, a host sync per step: left out

    def report(self) -> Dict[str, Any]:
        return {"final_loss": float(self.loss)}


class OurTrain:
    """Our step: the per-step work of train_utils.train_eval.train_one_epoch, minus its progress bar.

    check_target on the host batch, prepare_images (uint8 pinned batch to the device, normalised there),
    uint8 masks, train_step (autocast, GradScaler for fp16), the poly scheduler (as the baseline's), the loss summed
    on the device. Optimizer: create_optimizer (fused SGD on CUDA).
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, setup: Setup,
                 total_steps: int) -> None:
        self.device, self.channels_last = setup.device, setup.channels_last
        model = model.to(setup.device, memory_format=setup.memory_format).train()
        self.optimizer = create_optimizer(model, LR, 0.9, 1e-4, fused=setup.device.type == "cuda")
        # The baseline's schedule (poly over the timed run, no warm-up), so that the final losses compare.
        self.scheduler = create_lr_scheduler(self.optimizer, num_step=total_steps, epochs=1, warmup=False)
        scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp == torch.float16)
        self.num_classes = num_classes_of(model)
        self.opts = TrainOptions(self.num_classes, amp_dtype=setup.amp, scaler=scaler,
                                 channels_last=setup.channels_last)
        self.model = torch.compile(model) if setup.compile else model
        self.images, self.masks = pinned(images, setup.device), pinned(masks, setup.device)
        self.loss_sum = torch.zeros((), device=setup.device)
        self.loss = torch.zeros(())

    def __call__(self) -> None:
        check_target(self.masks, self.num_classes)
        images = prepare_images(self.images, self.device, self.channels_last)
        targets = self.masks.to(self.device, non_blocking=True)
        loss = train_step(self.model, self.optimizer, images, targets, self.device, self.opts)
        self.scheduler.step()
        self.loss = loss.detach()
        self.loss_sum += self.loss

    def report(self) -> Dict[str, Any]:
        return {"final_loss": float(self.loss)}


# ----------------------------------------------------------------------------------------- eval variants

class TVEval:
    """torchvision's evaluate() (the baseline): one image at a time, fp32, a float32 host-normalised image and
    int64 mask per step (blocking .to()), aux head computed as built, and TV's ConfusionMatrix (below)."""

    def __init__(self, model: nn.Module, images: List[torch.Tensor], masks: List[torch.Tensor],
                 device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device
        self.num_classes = num_classes_of(model)
        self.samples = [(tv_normalize(i[None]), m[None].long()) for i, m in zip(images, masks)]
        self.mat: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def __call__(self) -> None:
        n = self.num_classes
        self.mat = torch.zeros((n, n), dtype=torch.int64, device=self.device)
        for image, target in self.samples:
            image, target = image.to(self.device), target.to(self.device)
            output = self.model(image)["out"]
            self.update(target.flatten(), output.argmax(1).flatten())

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """THE BASELINE'S METRIC, written out: torchvision references/segmentation/utils.py
        ConfusionMatrix.update. Boolean-mask indexing and bincount each make the host wait for the device."""
        n = self.num_classes
        k = (a >= 0) & (a < n)
        inds = n * a[k].to(torch.int64) + b[k]
        self.mat += torch.bincount(inds, minlength=n ** 2).reshape(n, n)

    def matrix(self) -> torch.Tensor:
        return self.mat.cpu()


class OurEval:
    """Our evaluation, validation.py's path: aux head dropped, equal-size images batched (EvalBatchSampler), uint8
    pinned batches normalised on the device, autocast, train_eval.evaluate with the device ConfusionMatrix."""

    def __init__(self, model: nn.Module, images: List[torch.Tensor], masks: List[torch.Tensor], setup: Setup,
                 batch_size: int) -> None:
        model.aux_classifier = None  # validation.py drops it: its output is never used in evaluation
        self.model = model.to(setup.device, memory_format=setup.memory_format).eval()
        self.net = torch.compile(self.model) if setup.compile else self.model
        self.setup, self.num_classes = setup, num_classes_of(model)
        sampler = EvalBatchSampler([tuple(i.shape[-2:]) for i in images], batch_size)
        batches = [collate_fn([(images[i], masks[i]) for i in idx]) for idx in sampler]
        self.batches = [(pinned(x, setup.device), pinned(y, setup.device)) for x, y in batches]
        self.amp = setup.amp
        self.cm = None

    def __call__(self) -> None:
        self.cm = evaluate(self.net, self.batches, self.setup.device, self.num_classes, amp_dtype=self.amp,
                           channels_last=self.setup.channels_last, desc="ours")

    def matrix(self) -> torch.Tensor:
        return self.cm.matrix.cpu()


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off, so that fp32 means fp32 (cuDNN convolutions use TF32 by default on Ampere and newer)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def moved_pixels(a: torch.Tensor, b: torch.Tensor) -> int:
    """sum |a - b| / 2: pixels that sit in another cell of b than of a (a lower bound on changed predictions)."""
    return int((a - b).abs().sum()) // 2


def eval_check(baseline: TVEval, ours: OurEval) -> Dict[str, Any]:
    """Both confusion matrices in strict fp32, which must be equal; and how far ours as timed (AMP) moved."""
    amp_moved = moved_pixels(baseline.matrix(), ours.matrix())
    with strict_fp32():
        baseline()
        ours.amp = None
        ours()
        ours.amp = ours.setup.amp
    a, b = baseline.matrix(), ours.matrix()
    return {"fp32_equal": bool(torch.equal(a, b)), "fp32_moved_pixels": moved_pixels(a, b),
            "as_timed_moved_pixels": amp_moved, "pixels_counted": int(a.sum()),
            "baseline_matrix": a.tolist(), "ours_fp32_matrix": b.tolist()}


# ---------------------------------------------------------------------------------------- infer variants

class TVInfer:
    """The baseline: the torchvision model as built (aux head included), eval, fp32, under inference_mode; a
    float32 host-normalised image sent to the device, the argmax taken there."""

    def __init__(self, model: nn.Module, image: torch.Tensor, device: torch.device) -> None:
        self.model, self.device, self.image = model.to(device).eval(), device, image[None]
        self.labels: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def __call__(self) -> None:
        self.labels = self.model(tv_normalize(self.image).to(self.device))["out"].argmax(1)


class OurInfer:
    """Our inference, predict.py's path: prepare_for_inference (aux head dropped, BN folded), channels-last, the uint8
    image normalised on the device (prepare_images), autocast, the argmax taken on the device."""

    def __init__(self, model: nn.Module, image: torch.Tensor, setup: Setup) -> None:
        self.model = prepare_for_inference(model, setup.device, setup.channels_last)
        self.net = torch.compile(self.model) if setup.compile else self.model
        self.setup, self.image, self.amp = setup, image[None], setup.amp
        self.labels: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def __call__(self) -> None:
        x = prepare_images(self.image, self.setup.device, self.setup.channels_last)
        with autocast(self.setup.device, self.amp):
            self.labels = self.net(x)["out"].argmax(1)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def infer_check(baseline: TVInfer, ours: OurInfer, weights: str) -> Dict[str, Any]:
    """Fraction of pixels whose class agrees with the baseline: ours as timed, and ours in strict fp32."""
    as_timed = agreement(baseline.labels, ours.labels)
    with strict_fp32():
        baseline()
        ours.amp = None
        ours()
        ours.amp = ours.setup.amp
    return {"argmax_agreement": as_timed, "argmax_agreement_fp32": agreement(baseline.labels, ours.labels),
            "target": AGREEMENT_TARGET, "meets_target": as_timed >= AGREEMENT_TARGET, "weights": weights}


def infer_image(args: argparse.Namespace) -> torch.Tensor:
    """uint8 (3, size, size): --image resized, or a synthetic smooth image."""
    if args.image is None:
        return smooth_images(1, (args.size, args.size), torch.Generator().manual_seed(args.seed))[0]
    return TF.resize(read_image(args.image), [args.size, args.size], antialias=True)


# ------------------------------------------------------------------------------------------------ timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(unit: Unit, n: int, device: torch.device) -> float:
    """Wall time of n units, with a device sync before the first and after the last (none in between)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        unit()
    sync(device)
    return time.perf_counter() - start


def start(build: Callable[[], Unit], warmup: int, device: torch.device) -> Tuple[Unit, Optional[float]]:
    """Builds one variant on the device and warms it up while the other waits; on CUDA, then measures the
    peak memory of one more unit, counting only what this variant allocated (MiB; None on the CPU)."""
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    unit = build()
    for _ in range(warmup):
        unit()
    if device.type != "cuda":
        return unit, None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    unit()
    sync(device)
    return unit, (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def split(iters: int, rounds: int) -> List[int]:
    """iters units in min(rounds, iters) rounds of near-equal length."""
    rounds = min(rounds, iters)
    return [iters // rounds + (r < iters % rounds) for r in range(rounds)]


def interleave(units: Dict[str, Unit], counts: List[int], device: torch.device,
               per_unit: bool) -> Dict[str, List[List[float]]]:
    """Times the variants in alternating rounds; per round, one block time, or one time per unit."""
    times: Dict[str, List[List[float]]] = {name: [] for name in units}
    for n in counts:
        for name, unit in units.items():
            times[name].append([timed(unit, 1, device) for _ in range(n)] if per_unit else [timed(unit, n, device)])
    return times


def throughput(times: List[List[float]], counts: List[int], images_per_unit: int) -> Dict[str, Any]:
    total = sum(map(sum, times))
    images = sum(counts) * images_per_unit
    return {"images_per_s": images / total, "timed_images": images, "timed_s": total,
            "round_images_per_s": [n * images_per_unit / sum(t) for n, t in zip(counts, times)]}


def latency(times: List[List[float]]) -> Dict[str, float]:
    flat = [t * 1000 for r in times for t in r]
    return {"latency_ms_mean": statistics.fmean(flat), "latency_ms_median": statistics.median(flat),
            "latency_ms_min": min(flat)}


def run_variants(builds: Dict[str, Callable[[], Unit]], args: argparse.Namespace, device: torch.device,
                 images_per_unit: int, per_unit: bool = False) -> Tuple[Dict[str, Any], Dict[str, Dict]]:
    """Starts each variant alone (build, warm-up, memory), then times all of them in alternating rounds."""
    units, numbers = {}, {}
    for name, build in builds.items():
        units[name], memory = start(build, args.warmup, device)
        numbers[name] = {"peak_memory_mib": memory}
    counts = split(args.iters, args.rounds)
    for name, times in interleave(units, counts, device, per_unit).items():
        numbers[name].update(throughput(times, counts, images_per_unit))
        if per_unit:
            numbers[name].update(latency(times))
    return units, numbers


def ratios(baseline: Dict[str, Any], ours: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """ours / baseline: above 1 is better for images/s, below 1 is better for latency and memory.

    Also per round: rounds are adjacent in time, so their ratios cancel slow changes of machine load, and
    their median ignores a round that another process disturbed.
    """
    per_round = [o / b for o, b in zip(ours["round_images_per_s"], baseline["round_images_per_s"])]
    out = {"images_per_s": ours["images_per_s"] / baseline["images_per_s"], "round_images_per_s": per_round,
           "median_round_images_per_s": statistics.median(per_round)}
    for key, name in (("latency_ms_mean", "latency_mean"), ("latency_ms_median", "latency_median"),
                      ("peak_memory_mib", "peak_memory")):
        if baseline.get(key):
            out[name] = ours[key] / baseline[key]
    return out


# ------------------------------------------------------------------------------------------- FLOPs, MFU

@functools.lru_cache(maxsize=None)
def forward_flops(name: str, num_classes: int, aux: bool, size: Tuple[int, int]) -> int:
    """FLOPs of one fp32 forward pass of torchvision's model on one image: FlopCounterMode on the meta device
    (no memory, no compute), 2 FLOPs per multiply-add, convolutions and matmuls only."""
    with torch.device("meta"):
        model = TV_BUILDERS[name](weights=None, weights_backbone=None, aux_loss=aux, num_classes=num_classes)
        x = torch.empty(1, 3, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def precision_kind(amp: Optional[torch.dtype]) -> str:
    if amp is not None:
        return "bf16/fp16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


@functools.lru_cache(maxsize=None)
def peak_tflops(device: torch.device, kind: str) -> Tuple[Optional[float], str]:
    """(peak TFLOP/s, where it comes from) for the precision `kind` on `device`; None on the CPU."""
    if device.type != "cuda":
        return None, "n/a (CPU)"
    name = torch.cuda.get_device_name(device)
    peak = datasheet_peak(name, kind)
    if peak is not None:
        return peak, f"datasheet dense {kind} peak of {name}"
    return measure_matmul_tflops(device, kind), f"measured: best of 10 8192^3 {kind} matmuls ({name} not in the table)"


def datasheet_peak(name: str, kind: str) -> Optional[float]:
    """Dense peak TFLOP/s of GPU `name` for "bf16/fp16" or "tf32" from PEAK_TFLOPS; None if not listed."""
    if kind == "fp32" or "NVL" in name:
        return None
    for pattern, half, tf32 in PEAK_TFLOPS:
        if re.search(pattern, name):
            return half if kind == "bf16/fp16" else tf32
    return None


def measure_matmul_tflops(device: torch.device, kind: str, n: int = 8192) -> float:
    """Best TFLOP/s of a large square matmul in the precision `kind`."""
    dtype = torch.bfloat16 if kind == "bf16/fp16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        a @ b  # cuBLAS picks its kernel on the first call
        best = min(timed(lambda: a @ b, 1, device) for _ in range(10))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n ** 3 / best / 1e12


def compute_use(flops_per_image: float, images_per_s: float, device: torch.device,
                amp: Optional[torch.dtype]) -> Dict[str, Any]:
    """FLOPs per image, achieved TFLOP/s and MFU against the dense peak of the precision the variant runs."""
    achieved = flops_per_image * images_per_s / 1e12
    peak, source = peak_tflops(device, precision_kind(amp))
    return {"gflops_per_image": flops_per_image / 1e9, "achieved_tflops": achieved, "peak_tflops": peak,
            "peak_source": source, "mfu": achieved / peak if peak else None}


def add_compute(numbers: Dict[str, Dict], flops: float, device: torch.device, amp: Optional[torch.dtype]) -> None:
    numbers["baseline"].update(compute_use(flops, numbers["baseline"]["images_per_s"], device, None))
    numbers["ours"].update(compute_use(flops, numbers["ours"]["images_per_s"], device, amp))


# --------------------------------------------------------------------------------------------- protocols

def common_protocol(args: argparse.Namespace, setup: Setup, weights: str, flops: str) -> Dict[str, str]:
    unit = UNITS[args.mode]
    return {
        "interleaving": f"{args.iters} timed {unit} per variant in {len(split(args.iters, args.rounds))} rounds, "
                        f"alternating baseline, ours, baseline, ours, ... in one process",
        "warmup": f"{args.warmup} untimed {unit} per variant, run while the other variant waits"
                  + ("; cudnn.benchmark on for both (as both training scripts set it)"
                     if setup.device.type == "cuda" else ""),
        "weights": weights,
        "memory": "CUDA: after its warm-up, torch.cuda.reset_peak_memory_stats, one more unit, then "
                  "max_memory_allocated minus what was allocated before the variant was moved to the device, "
                  "so each number is the variant's own (weights, optimizer state, activations)"
                  if setup.device.type == "cuda" else "n/a (CPU)",
        "flops": flops + "; FlopCounterMode over one fp32 forward of torchvision's model on the meta device, "
                         "2 FLOPs per multiply-add (torchvision's published GFLOPS count multiply-adds: half "
                         "this), the same FLOPs credited to both variants",
        "mfu": "achieved FLOP/s / dense peak of the precision the variant runs (bf16/fp16 under autocast, TF32 "
               "for fp32 with cuDNN's default allow_tf32), from a datasheet table by GPU name or a measured "
               "matmul" if setup.device.type == "cuda" else "n/a (CPU)",
    }


def train_protocol(args: argparse.Namespace, setup: Setup, weights: str) -> Dict[str, str]:
    return {
        "timed": f"training steps, batch {args.batch_size}, {args.size}x{args.size}; each round is one block of "
                 f"wall time with a device synchronize before its first step and after its last, none inside",
        "inputs": "one fixed random batch (smooth random images; blocky random masks with ~5% ignore=255 pixels), "
                  "the same pixels for both, sent from host memory every step (pinned on CUDA)",
        "baseline": f"torchvision.models.segmentation.{args.model}(weights=None, weights_backbone=None, "
                    f"aux_loss=True, num_classes=N), fp32, contiguous; " + squash(TVTrain.__doc__),
        "ours": f"build_model, then {squash(OurTrain.__doc__)} dtype {dtype_name(setup.amp)}, "
                f"{format_name(setup.channels_last)}, compile {setup.compile}",
        **common_protocol(args, setup, weights, "per image: 3 x forward with the aux head (backward = 2 x forward; "
                                                "loss and optimizer not counted)"),
    }


def eval_protocol(args: argparse.Namespace, setup: Setup, weights: str) -> Dict[str, str]:
    sizes = " ".join(f"{h}x{w}" for h, w in args.image_sizes)
    return {
        "timed": f"one pass over {args.num_images} in-memory images (HxW {sizes}, used in turn), inference and "
                 f"confusion matrix, timed as one block with a device synchronize before and after",
        "inputs": "smooth random images and blocky random masks with ~5% ignore pixels, decoded once; no file I/O "
                  "in either variant",
        "baseline": squash(TVEval.__doc__),
        "ours": f"{squash(OurEval.__doc__)} batch {args.batch_size}, dtype {dtype_name(setup.amp)}, "
                f"{format_name(setup.channels_last)}, compile {setup.compile}",
        "check": "one more pass of each in strict fp32 (TF32 off): the two confusion matrices must be equal",
        **common_protocol(args, setup, weights, "per image: forward without the aux head (its output is unused), "
                                                "averaged over the image sizes"),
    }


def infer_protocol(args: argparse.Namespace, setup: Setup, weights: str) -> Dict[str, str]:
    image = f"{args.image} resized to {args.size}x{args.size}" if args.image else \
        f"a synthetic smooth {args.size}x{args.size} image"
    return {
        "timed": "latency of each call (batch 1: host image in, label map on the device out), with a device "
                 "synchronize before and after every call",
        "inputs": image,
        "baseline": squash(TVInfer.__doc__),
        "ours": f"{squash(OurInfer.__doc__)} dtype {dtype_name(setup.amp)}, {format_name(setup.channels_last)}, "
                f"compile {setup.compile}",
        "check": f"fraction of pixels whose argmax equals the baseline's (target >= {AGREEMENT_TARGET:.1%}), as "
                 f"timed and in strict fp32",
        **common_protocol(args, setup, weights, "per image: forward without the aux head (its output is unused)"),
    }


def squash(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------- modes

def bench_train(args: argparse.Namespace, setup: Setup) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    gen = torch.Generator().manual_seed(args.seed)
    size = (args.size, args.size)
    images = smooth_images(args.batch_size, size, gen)
    masks = random_masks(args.batch_size, size, num_classes_of(ours), gen)
    total = 10 * (args.warmup + args.iters + 1)  # schedule length: the lr stays far from 0 during the run
    builds = {"baseline": lambda: TVTrain(baseline, images, masks, setup.device, total),
              "ours": lambda: OurTrain(ours, images, masks, setup, total)}
    units, numbers = run_variants(builds, args, setup.device, args.batch_size)
    add_compute(numbers, 3 * forward_flops(args.model, num_classes_of(ours), has_aux(ours), size), setup.device,
                setup.amp)
    numbers["baseline"].update(units["baseline"].report(), settings=baseline_settings(
        batch_size=args.batch_size, input="float32 normalised on the host, int64 masks"))
    numbers["ours"].update(units["ours"].report(), settings=setup.settings(
        batch_size=args.batch_size, input="uint8 normalised on the device, uint8 masks"))
    return {"protocol": train_protocol(args, setup, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"])}


def eval_data(args: argparse.Namespace, num_classes: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """--num-images uint8 images (3, H, W) and masks (H, W), sizes from --image-sizes in turn."""
    gen = torch.Generator().manual_seed(args.seed)
    sizes = [args.image_sizes[i % len(args.image_sizes)] for i in range(args.num_images)]
    images = [smooth_images(1, s, gen)[0] for s in sizes]
    return images, [random_masks(1, s, num_classes, gen)[0] for s in sizes]


def bench_eval(args: argparse.Namespace, setup: Setup) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    num_classes = num_classes_of(ours)
    images, masks = eval_data(args, num_classes)
    builds = {"baseline": lambda: TVEval(baseline, images, masks, setup.device),
              "ours": lambda: OurEval(ours, images, masks, setup, args.batch_size)}
    units, numbers = run_variants(builds, args, setup.device, len(images))
    flops = statistics.fmean(forward_flops(args.model, num_classes, False, tuple(i.shape[-2:])) for i in images)
    add_compute(numbers, flops, setup.device, setup.amp)
    numbers["baseline"]["settings"] = baseline_settings(batch_size=1, input="float32 normalised on the host")
    numbers["ours"]["settings"] = setup.settings(batch_size=args.batch_size, input="uint8, normalised on the device")
    return {"protocol": eval_protocol(args, setup, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"]),
            "check": eval_check(units["baseline"], units["ours"])}


def bench_infer(args: argparse.Namespace, setup: Setup) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    image = infer_image(args)
    builds = {"baseline": lambda: TVInfer(baseline, image, setup.device),
              "ours": lambda: OurInfer(ours, image, setup)}
    units, numbers = run_variants(builds, args, setup.device, 1, per_unit=True)
    size = (args.size, args.size)
    add_compute(numbers, forward_flops(args.model, num_classes_of(ours), False, size), setup.device, setup.amp)
    numbers["baseline"]["settings"] = baseline_settings(batch_size=1, input="float32 normalised on the host")
    numbers["ours"]["settings"] = setup.settings(batch_size=1, input="uint8, normalised on the device")
    return {"protocol": infer_protocol(args, setup, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"]),
            "check": infer_check(units["baseline"], units["ours"], weights)}


def write_folder_dataset(root: Path, args: argparse.Namespace) -> Path:
    """--num-images VOC-like JPEGs (quality 90) and palette PNG masks in build_dataset's "folder" layout."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    images, masks = eval_data(args, 21)
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "train" / "images" / f"{i:05d}.jpg", quality=90)
        save_mask(mask, root / "train" / "masks" / f"{i:05d}.png")
    return root


def loader_counts(args: argparse.Namespace, workers: int) -> Tuple[int, int]:
    """(warm-up, timed) batches. Workers start together and deliver in bursts of about one batch each, so the
    defaults skip two bursts and time at least ten: the error of a partial burst stays small."""
    warmup = max(5, 2 * workers) if args.warmup is None else args.warmup
    return warmup, args.iters or max(50, 10 * workers)


def loader_rate(dataset: Dataset, workers: int, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Images/s of train.py's training DataLoader with `workers` workers, after its warm-up batches."""
    warmup, iters = loader_counts(args, workers)
    # The files repeat so that the whole run is one epoch, as with a real training set: a short epoch would
    # idle workers at every epoch boundary.
    repeats = math.ceil((warmup + iters) * args.batch_size / len(dataset))
    dataset = ConcatDataset([dataset] * repeats)
    sampler = TrainSampler(len(dataset), args.batch_size, seed=args.seed)
    kwargs = loader_kwargs(argparse.Namespace(workers=workers, seed=args.seed), Runtime(device))
    batches = iter(DataLoader(SeededDataset(dataset), batch_size=args.batch_size, sampler=sampler,
                              drop_last=True, **kwargs))
    for _ in range(warmup):  # includes starting the worker processes
        next(batches)
    seconds = timed(batches.__next__, iters, torch.device("cpu"))
    del batches  # stops the workers
    rate = iters * args.batch_size / seconds
    return {"workers": workers, "warmup_batches": warmup, "timed_batches": iters, "images_per_s": rate,
            "images_per_s_per_worker": rate / max(workers, 1)}


def data_protocol(args: argparse.Namespace, device: torch.device) -> Dict[str, str]:
    sizes = " ".join(f"{h}x{w}" for h, w in args.image_sizes)
    return {
        "timed": f"wall time to draw batches of {args.batch_size} from the training DataLoader (timed_batches per "
                 f"worker count, default max(50, 10 x workers)), after warmup_batches untimed ones (default "
                 f"max(5, 2 x workers); worker start-up falls there), one worker count at a time, one epoch",
        "inputs": f"{args.num_images} JPEGs (quality 90, HxW {sizes} in turn) with palette PNG masks in a temporary "
                  f"folder dataset, read by data_utils.build_dataset('folder')",
        "ours": f"SeededDataset + TrainSampler + collate_fn, SegmentationPresetTrain({args.base_size}, {args.size}), "
                f"train.py's loader settings (builders.loader_kwargs: persistent workers, prefetch 4, pin_memory "
                f"{device.type == 'cuda'})",
        "baseline": "none: this mode measures whether our loader keeps the GPU fed, not a speed-up",
        "gpu": f"loader images/s / --gpu-step-rate, enough when >= {LOADER_HEADROOM}"
               if args.gpu_step_rate else "no --gpu-step-rate given",
    }


def bench_data(args: argparse.Namespace, setup: Setup) -> Dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcn_benchmark_") as tmp:
        root = write_folder_dataset(Path(tmp), args)
        dataset = build_dataset("folder", root, "train", SegmentationPresetTrain(args.base_size, args.size))
        for workers in args.workers:
            row = loader_rate(dataset, workers, args, setup.device)
            gpu = row["images_per_s"] / args.gpu_step_rate if args.gpu_step_rate else None
            rows.append({**row, "gpu_ratio": gpu, "enough_for_gpu": None if gpu is None else gpu >= LOADER_HEADROOM})
    return {"protocol": data_protocol(args, setup.device), "variants": None, "loader": rows,
            "gpu_step_rate": args.gpu_step_rate}


# ----------------------------------------------------------------------------------------------- report

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def environment(device: torch.device) -> Dict[str, Any]:
    env = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_start": os.getloadavg()[0]}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def fmt(value: Any, unit: str = "", na: str = "n/a (CPU)") -> str:
    if value is None:
        return na
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def variant_rows(result: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """(label, baseline, ours, ours/baseline) lines of the results table."""
    b, o, r = result["variants"]["baseline"], result["variants"]["ours"], result["ratio"]
    rows = [("images/s", fmt(b["images_per_s"]), fmt(o["images_per_s"]), fmt(r["images_per_s"], "x")),
            ("  per round", " ".join(f"{v:.3g}" for v in b["round_images_per_s"]),
             " ".join(f"{v:.3g}" for v in o["round_images_per_s"]),
             " ".join(f"{v:.3g}" for v in r["round_images_per_s"])),
            ("  median of the round ratios", "", "", fmt(r["median_round_images_per_s"], "x"))]
    if "latency_ms_mean" in b:
        rows += [("latency mean (ms)", fmt(b["latency_ms_mean"]), fmt(o["latency_ms_mean"]),
                  fmt(r["latency_mean"], "x")),
                 ("latency median (ms)", fmt(b["latency_ms_median"]), fmt(o["latency_ms_median"]),
                  fmt(r["latency_median"], "x"))]
    rows += [("peak CUDA memory (MiB)", fmt(b["peak_memory_mib"]), fmt(o["peak_memory_mib"]),
              fmt(r.get("peak_memory"), "x", na="")),
             ("GFLOP per image", fmt(b["gflops_per_image"]), fmt(o["gflops_per_image"]), ""),
             ("achieved TFLOP/s", fmt(b["achieved_tflops"]), fmt(o["achieved_tflops"]), ""),
             ("peak TFLOP/s", fmt(b["peak_tflops"]), fmt(o["peak_tflops"]), ""),
             ("MFU", fmt(b["mfu"]), fmt(o["mfu"]), ""),
             ("dtype / memory format", f"{b['settings']['dtype']} / {b['settings']['memory_format']}",
              f"{o['settings']['dtype']} / {o['settings']['memory_format']}", "")]
    return rows + [("final loss", fmt(b["final_loss"]), fmt(o["final_loss"]), "")] if "final_loss" in b else rows


def print_variants(result: Dict[str, Any]) -> None:
    rows = [("", "baseline (torchvision)", "ours", "ours/baseline")] + variant_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for v in ("baseline", "ours"):
        if result["variants"][v]["peak_source"] not in (None, "n/a (CPU)"):
            print(f"peak of {v}: {result['variants'][v]['peak_source']}")


def print_check(result: Dict[str, Any]) -> None:
    check = result.get("check")
    if check is None:
        return
    if "argmax_agreement" in check:
        print(f"argmax agreement with the baseline: {check['argmax_agreement']:.4%} as timed "
              f"({'meets' if check['meets_target'] else 'misses'} the {check['target']:.1%} target), "
              f"{check['argmax_agreement_fp32']:.4%} in fp32; weights: {check['weights']}")
        if check["weights"].startswith("random"):
            print("  random weights leave many near-tied logits, so this says little: the target is for trained "
                  "weights (--weights)")
        return
    print(f"confusion matrix in fp32, ours vs baseline: {'EQUAL' if check['fp32_equal'] else 'DIFFERENT'} "
          f"({check['fp32_moved_pixels']} of {check['pixels_counted']} pixels moved; as timed: "
          f"{check['as_timed_moved_pixels']})")
    print("baseline matrix (rows ground truth, columns prediction):")
    for row in check["baseline_matrix"]:
        print("  " + " ".join(f"{v:>7d}" for v in row))
    if not check["fp32_equal"]:
        print("ours (fp32) minus baseline:")
        for a, b in zip(check["ours_fp32_matrix"], check["baseline_matrix"]):
            print("  " + " ".join(f"{x - y:>7d}" for x, y in zip(a, b)))


def print_loader(result: Dict[str, Any]) -> None:
    print(f"{'workers':>7}  {'batches':>7}  {'images/s':>9}  {'per worker':>10}  loader/GPU")
    for row in result["loader"]:
        gpu = "" if row["gpu_ratio"] is None else \
            f"{row['gpu_ratio']:.2f} ({'enough' if row['enough_for_gpu'] else 'too slow'})"
        print(f"{row['workers']:>7}  {row['timed_batches']:>7}  {row['images_per_s']:>9.4g}  "
              f"{row['images_per_s_per_worker']:>10.4g}  {gpu}")


def print_report(result: Dict[str, Any]) -> None:
    env = result["environment"]
    print(f"\n== {result['mode']} | {result['model'] or 'no model'} | {env['device']} ({env['device_name']}) | "
          f"torch {env['torch']} | torchvision {env['torchvision']} | load average {env['load_average_start']:.2f}")
    print("protocol:")
    for key, text in result["protocol"].items():
        print(f"  {key}: {text}")
    if result["variants"] is None:
        print_loader(result)
    else:
        print_variants(result)
        print_check(result)


def write_json(result: Dict[str, Any], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")


def finite(result: Any) -> Any:
    """The result with NaN and infinities (a diverged loss) as None, which JSON can hold."""
    if isinstance(result, dict):
        return {k: finite(v) for k, v in result.items()}
    if isinstance(result, list):
        return [finite(v) for v in result]
    return None if isinstance(result, float) and not math.isfinite(result) else result


def main(args: argparse.Namespace) -> int:
    args = resolve_args(args)
    runtime = resolve_runtime(args)
    device = runtime.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as TV's train.py and ours do; warm-up covers every input shape
    setup = Setup(runtime)
    env = environment(device)
    bench = {"train": bench_train, "eval": bench_eval, "infer": bench_infer, "data": bench_data}[args.mode]
    model = None if args.mode == "data" else args.model
    result = {"mode": args.mode, "model": model, "command": " ".join(sys.argv), "environment": env,
              **bench(args, setup)}
    env["load_average_end"] = os.getloadavg()[0]
    result = finite(result)
    print_report(result)
    if args.json:
        write_json(result, args.json)
    check = result.get("check") or {}
    if check.get("fp32_equal") is False:  # eval's correctness check: the speed-up must not change a pixel
        print("error: the fp32 confusion matrices differ (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
