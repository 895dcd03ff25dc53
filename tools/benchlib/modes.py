"""One function per --mode: builds the baseline and ours, times them, checks that they agree."""
import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.transforms.v2 import functional as TF

from core.runtime import Runtime, synchronize
from data_utils import build_dataset, read_image, read_mask
from inference import predict_images, prepare_inference_model, size_batches
from src import build_model, get_spec, model_from_checkpoint
from transforms import SegmentationPresetTrain

from . import protocols
from .backends import agreement as label_agreement
from .backends import backend_models, masks_agreement, scratch
from .baselines import (
    TV_BUILDERS,
    TVEval,
    TVFolderDataset,
    TVInfer,
    TVPresetTrain,
    TVTrain,
    has_aux,
    num_classes_of,
    one_at_a_time,
    tv_loader,
)
from .flops import add_compute, forward_flops
from .inputs import image_set, random_masks, smooth_images, write_folder_dataset, write_photos
from .ours import OurEval, OurInfer, OurTrain, decoded_with, mask_writer, our_folder, training_loader
from .timing import ratios, run_variants, timed

AGREEMENT_TARGET = 0.999
LOADER_HEADROOM = 1.5  # the loader should outrun the GPU by this much to hide its jitter
# Two JPEG decoders may round their inverse DCTs differently; more than this is not rounding.
ROUNDING = 2


def make_models(args: argparse.Namespace) -> Tuple[nn.Module, nn.Module, str]:
    """(baseline, ours) on the CPU with identical weights, and where the weights come from; torchvision's and
    our state dicts have the same keys, so one loads the other's strictly."""
    if args.weights:
        loaded = model_from_checkpoint(args.weights, args.model, args.num_classes)
        if loaded.name not in TV_BUILDERS:
            raise ValueError(f"{args.weights}: holds {loaded.name} weights; the benchmark compares "
                             f"{', '.join(TV_BUILDERS)} with torchvision's, pass a checkpoint of one of them")
        ours, args.model = loaded.model, loaded.name
        baseline = TV_BUILDERS[args.model](weights=None, weights_backbone=None, aux_loss=has_aux(ours),
                                           num_classes=num_classes_of(ours))
        baseline.load_state_dict(ours.state_dict())
        return baseline, ours, f"checkpoint {args.weights}"
    args.model = args.model or "fcn_resnet50"
    torch.manual_seed(args.seed)
    num_classes = args.num_classes or 21
    aux = get_spec(args.model).aux_site is not None  # the aux head when the model has one
    baseline = TV_BUILDERS[args.model](weights=None, weights_backbone=None, aux_loss=aux, num_classes=num_classes)
    ours = build_model(args.model, num_classes, aux=aux)
    ours.load_state_dict(baseline.state_dict())
    return baseline, ours, f"random: torchvision's init after torch.manual_seed({args.seed}), copied into ours"


def baseline_settings(**extra: Any) -> Dict[str, Any]:
    return {"dtype": "float32", "memory_format": "contiguous", "compile": False, **extra}


def our_settings(runtime: Runtime, **extra: Any) -> Dict[str, Any]:
    return {"dtype": runtime.precision, "memory_format": "channels_last" if runtime.channels_last else "contiguous",
            "compile": runtime.compile, **extra}


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off, so that fp32 means fp32 (cuDNN convolutions use TF32 by default on Ampere and newer)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------------------- train, eval, infer

def bench_train(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    gen = torch.Generator().manual_seed(args.seed)
    size = (args.size, args.size)
    images = smooth_images(args.batch_size, size, gen)
    masks = random_masks(args.batch_size, size, num_classes_of(ours), gen)
    total = 10 * (args.warmup + args.iters + 1)  # schedule length: the lr stays far from 0 during the run
    builds = {"baseline": lambda: TVTrain(baseline, images, masks, runtime.device, total),
              "ours": lambda: OurTrain(ours, images, masks, runtime, total)}
    units, numbers = run_variants(builds, args.warmup, args.iters, args.rounds, runtime.device, args.batch_size)
    flops = 3 * forward_flops(args.model, num_classes_of(ours), has_aux(ours), size)
    add_compute(numbers, flops, runtime.device, runtime.amp_dtype)
    numbers["baseline"].update(units["baseline"].report(), settings=baseline_settings(
        batch_size=args.batch_size, input="float32 normalised on the host, int64 masks"))
    numbers["ours"].update(units["ours"].report(), settings=our_settings(
        runtime, batch_size=args.batch_size, input="uint8 normalised on the device, uint8 masks"))
    return {"protocol": protocols.train(args, runtime, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"])}


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
        ours.amp = ours.runtime.amp_dtype
    a, b = baseline.matrix(), ours.matrix()
    return {"fp32_equal": bool(torch.equal(a, b)), "fp32_moved_pixels": moved_pixels(a, b),
            "as_timed_moved_pixels": amp_moved, "pixels_counted": int(a.sum()),
            "baseline_matrix": a.tolist(), "ours_fp32_matrix": b.tolist()}


def bench_eval(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    num_classes = num_classes_of(ours)
    images, masks = image_set(args.num_images, args.image_sizes, num_classes, args.seed)
    builds = {"baseline": lambda: TVEval(baseline, images, masks, runtime.device),
              "ours": lambda: OurEval(ours, images, masks, runtime, args.batch_size)}
    units, numbers = run_variants(builds, args.warmup, args.iters, args.rounds, runtime.device, len(images))
    flops = statistics.fmean(forward_flops(args.model, num_classes, False, tuple(i.shape[-2:])) for i in images)
    add_compute(numbers, flops, runtime.device, runtime.amp_dtype)
    numbers["baseline"]["settings"] = baseline_settings(batch_size=1, input="float32 normalised on the host")
    numbers["ours"]["settings"] = our_settings(runtime, batch_size=args.batch_size,
                                               input="uint8, normalised on the device")
    return {"protocol": protocols.evaluation(args, runtime, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"]),
            "check": eval_check(units["baseline"], units["ours"])}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def infer_check(baseline: TVInfer, ours: OurInfer, weights: str) -> Dict[str, Any]:
    """Fraction of pixels whose class agrees with the baseline: ours as timed, and ours in strict fp32."""
    as_timed = agreement(baseline.labels, ours.labels)
    timed_runtime = ours.runtime
    with strict_fp32():
        baseline()
        ours.runtime = dataclasses.replace(timed_runtime, amp_dtype=None)
        ours()
        ours.runtime = timed_runtime
    return {"argmax_agreement": as_timed, "argmax_agreement_fp32": agreement(baseline.labels, ours.labels),
            "target": AGREEMENT_TARGET, "meets_target": as_timed >= AGREEMENT_TARGET, "weights": weights}


def infer_image(args: argparse.Namespace) -> torch.Tensor:
    """uint8 (3, size, size): --image resized, or a synthetic smooth image."""
    if args.image is None:
        return smooth_images(1, (args.size, args.size), torch.Generator().manual_seed(args.seed))[0]
    return TF.resize(read_image(args.image), [args.size, args.size], antialias=True)


def backend_results(numbers: Dict[str, Dict], names: List[str], agreements: Dict[str, float]) -> Dict[str, Any]:
    """Per extra variant (--backends, --int8): its ratios to the baseline, its pixel agreement with fp32 torch
    (ours in fp32) and its peak host memory."""
    return {name: {"ratio": ratios(numbers["baseline"], numbers[name]), "agreement_with_fp32_torch": agreements[name],
                   "peak_rss_mib": numbers[name].get("peak_rss_mib")} for name in names}


def bench_infer(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    baseline, ours, weights = make_models(args)
    image = infer_image(args)
    with scratch() as tmp:
        extras = backend_models(args, ours, Path(tmp))
        builds = {"baseline": lambda: TVInfer(baseline, image, runtime.device),
                  "ours": lambda: OurInfer(ours, image, runtime),
                  **{name: (lambda m=m: OurInfer(m, image, runtime)) for name, m in extras.items()}}
        units, numbers = run_variants(builds, args.warmup, args.iters, args.rounds, runtime.device, 1, per_unit=True)
    flops = forward_flops(args.model, num_classes_of(ours), False, (args.size, args.size))
    add_compute(numbers, flops, runtime.device, runtime.amp_dtype)
    numbers["baseline"]["settings"] = baseline_settings(batch_size=1, input="float32 normalised on the host")
    numbers["ours"]["settings"] = our_settings(runtime, batch_size=1, input="uint8, normalised on the device")
    check = infer_check(units["baseline"], units["ours"], weights)  # ends with ours' labels in fp32
    agreements = {name: label_agreement(units["ours"].labels, units[name].labels) for name in extras}
    return {"protocol": protocols.infer(args, runtime, weights), "variants": numbers,
            "ratio": ratios(numbers["baseline"], numbers["ours"]), "check": check,
            "backends": backend_results(numbers, list(extras), agreements)}


# ------------------------------------------------------------------------------------------------------ data

def loader_counts(args: argparse.Namespace, workers: int) -> Tuple[int, int]:
    """(warm-up, timed) batches. Workers start together and deliver in bursts of about one batch each, so the
    defaults skip two bursts and time at least ten: the error of a partial burst stays small."""
    warmup = max(5, 2 * workers) if args.warmup is None else args.warmup
    return warmup, args.iters or max(50, 10 * workers)


def loader_rate(loader: DataLoader, warmup: int, iters: int, batch_size: int) -> float:
    """Images/s of `loader` after `warmup` batches (worker start-up falls there); the workers stop after."""
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    seconds = timed(batches.__next__, iters, torch.device("cpu"))
    del batches
    return iters * batch_size / seconds


def data_loaders(args: argparse.Namespace, root: Path, runtime: Runtime) -> Dict[str, Callable[[int, int], DataLoader]]:
    """Per pipeline, loader(workers, batches): torchvision's reference, ours decoding with PIL, ours decoding
    with torchvision.io (what train.py uses)."""
    train_tf = SegmentationPresetTrain(args.base_size, args.size)
    pil = decoded_with(build_dataset("folder", root, "train", train_tf), "pil")
    ours = build_dataset("folder", root, "train", train_tf)
    reference = TVFolderDataset(ours.pairs, TVPresetTrain(args.base_size, args.size))

    def tv(workers: int, batches: int) -> DataLoader:
        repeats = -(-batches * args.batch_size // len(reference))
        return tv_loader(ConcatDataset([reference] * repeats), args.batch_size, workers, args.seed)

    return {"baseline": tv,
            "pil": lambda w, n: training_loader(pil, w, args.batch_size, n, args.seed, runtime),
            "ours": lambda w, n: training_loader(ours, w, args.batch_size, n, args.seed, runtime)}


def decode_check(root: Path, loaders: Dict[str, Callable[[int, int], DataLoader]]) -> Dict[str, Any]:
    """Every file decoded both ways (images within rounding, masks identical), and the first training batch
    of the two decoders with the same seeds."""
    images = sorted((root / "train" / "images").iterdir())
    masks = sorted((root / "train" / "masks").iterdir())
    diffs = [(read_image(p).int() - read_image(p, decoder="pil").int()).abs() for p in images]
    masks_equal = all(np.array_equal(read_mask(p), read_mask(p, decoder="pil")) for p in masks)
    (pil_images, pil_masks), (our_images, our_masks) = (next(iter(loaders[name](0, 1))) for name in ("pil", "ours"))
    largest = max(int(d.max()) for d in diffs)
    return {"files": len(images) + len(masks), "images_max_abs_diff": largest,
            "images_differing_values": sum(int((d > 0).sum()) for d in diffs),
            "images_within_rounding": largest <= ROUNDING, "masks_equal": masks_equal,
            "batch_masks_equal": torch.equal(pil_masks, our_masks),
            "batch_images_max_abs_diff": int((pil_images.int() - our_images.int()).abs().max())}


def bench_data(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcn_benchmark_") as tmp:
        images, masks = image_set(args.num_images, args.image_sizes, 21, args.seed)
        root = write_folder_dataset(Path(tmp), images, masks)
        loaders = data_loaders(args, root, runtime)
        check = decode_check(root, loaders)
        for workers in args.workers:
            warmup, iters = loader_counts(args, workers)
            rates: Dict[str, List[float]] = {name: [] for name in loaders}
            for r in range(args.rounds):  # alternating order, so that a drift of the machine hits all alike
                for name in (list(loaders) if r % 2 == 0 else list(reversed(loaders))):
                    rates[name].append(loader_rate(loaders[name](workers, warmup + iters), warmup, iters,
                                                   args.batch_size))
            rows.append(loader_row(args, workers, warmup, iters, rates))
    return {"protocol": protocols.data(args, runtime), "variants": None, "loader": rows, "check": check,
            "gpu_step_rate": args.gpu_step_rate}


def loader_row(args: argparse.Namespace, workers: int, warmup: int, iters: int,
               rates: Dict[str, List[float]]) -> Dict[str, Any]:
    """One worker count: the median images/s over the rounds of each pipeline, and the ratios."""
    variants = {name: {"images_per_s": statistics.median(r), "round_images_per_s": r,
                       "images_per_s_per_worker": statistics.median(r) / max(workers, 1)} for name, r in rates.items()}
    ours = variants["ours"]["images_per_s"]
    gpu = ours / args.gpu_step_rate if args.gpu_step_rate else None
    # Per round too: a round's three measurements are adjacent in time, so their ratio cancels slow load changes.
    per_round = {other: [o / b for o, b in zip(rates["ours"], rates[other])] for other in ("baseline", "pil")}
    return {"workers": workers, "warmup_batches": warmup, "timed_batches": iters, "variants": variants,
            "ratio": {"ours_vs_baseline": ours / variants["baseline"]["images_per_s"],
                      "ours_vs_pil": ours / variants["pil"]["images_per_s"],
                      "round_ours_vs_baseline": per_round["baseline"], "round_ours_vs_pil": per_round["pil"],
                      "median_round_ours_vs_baseline": statistics.median(per_round["baseline"]),
                      "median_round_ours_vs_pil": statistics.median(per_round["pil"])},
            "gpu_ratio": gpu, "enough_for_gpu": None if gpu is None else gpu >= LOADER_HEADROOM}


# --------------------------------------------------------------------------------------------------- predict

def warm_shapes(model: nn.Module, runtime: Runtime, shapes: set, warmup: int) -> None:
    """`warmup` passes per input shape, so that no autotuning (cudnn.benchmark) falls into the timing."""
    for n, height, width in sorted(shapes):
        images = torch.zeros(n, 3, height, width, dtype=torch.uint8)
        for _ in range(warmup):
            predict_images(model, images, runtime)
    synchronize(runtime.device)


def mask_check(a: List[Path], b: List[Path]) -> Dict[str, Any]:
    differ = total = 0
    for x, y in zip(a, b):
        mx, my = np.array(Image.open(x)), np.array(Image.open(y))
        differ, total = differ + int((mx != my).sum()), total + mx.size
    return {"masks_equal": differ == 0, "differing_pixels": differ, "pixels": total, "files": len(a)}


def bench_predict(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    _, ours, weights = make_models(args)
    model = prepare_inference_model(ours, runtime)
    workers = args.workers[0]
    with tempfile.TemporaryDirectory(prefix="fcn_benchmark_") as tmp:
        extras = backend_models(args, model, Path(tmp))
        images, _ = image_set(args.num_images, args.image_sizes, 1, args.seed)
        paths = write_photos(Path(tmp) / "photos", images)
        sizes = {tuple(i.shape[-2:]) for i in images}
        shapes = {(1, *s) for s in sizes} | {(len(b), *images[b[0]].shape[-2:])
                                             for b in size_batches(paths, args.batch_size)}
        for net in (model, *extras.values()):  # OpenVINO, too, compiles per new input shape
            warm_shapes(net, runtime, shapes, args.warmup)
        seconds: Dict[str, List[float]] = {name: [] for name in ("baseline", "ours", *extras)}
        outputs: Dict[str, List[Path]] = {}
        for r in range(args.rounds):
            for name in seconds:
                outputs[name] = [Path(tmp) / f"{name}_{r}" / f"{p.stem}.png" for p in paths]
                write = mask_writer(outputs[name])
                synchronize(runtime.device)
                start = time.perf_counter()
                if name == "baseline":
                    one_at_a_time(model, paths, runtime, write)
                else:
                    our_folder(extras.get(name, model), paths, runtime, write, args.batch_size, workers)
                synchronize(runtime.device)
                seconds[name].append(time.perf_counter() - start)
        check = mask_check(outputs["baseline"], outputs["ours"])
        agreements = {name: masks_agreement(outputs["baseline"], outputs[name]) for name in extras}
    numbers = {name: {"images_per_s": len(paths) * len(s) / sum(s), "timed_images": len(paths) * len(s),
                      "timed_s": sum(s), "round_images_per_s": [len(paths) / t for t in s]}
               for name, s in seconds.items()}
    numbers["baseline"]["settings"] = our_settings(runtime, batch_size=1, workers=0, writer="in the loop")
    numbers["ours"]["settings"] = our_settings(runtime, batch_size=args.batch_size, workers=workers,
                                               writer="background threads")
    return {"protocol": protocols.predict(args, runtime, weights, workers), "variants": numbers,
            "baseline_label": "baseline (one at a time)", "ratio": ratios(numbers["baseline"], numbers["ours"]),
            "check": check, "backends": backend_results(numbers, list(extras), agreements)}


MODES = {"train": bench_train, "eval": bench_eval, "infer": bench_infer, "data": bench_data,
         "predict": bench_predict}
