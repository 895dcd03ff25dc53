"""The protocol of each mode in words, printed with the numbers and written to the JSON file."""
import argparse
from typing import Dict

from core.runtime import Runtime
from src import get_spec

from .baselines import TVEval, TVInfer, TVPresetTrain, TVTrain
from .ours import OurEval, OurInfer, OurTrain, our_folder, training_loader

UNITS = {"train": "steps", "eval": "passes over the images", "infer": "calls", "data": "batches",
         "predict": "passes over the folder"}


def squash(text: str) -> str:
    return " ".join(text.split())


def ours_runtime(runtime: Runtime) -> str:
    return f"runtime {runtime.describe()} (core.runtime, the flags of every script)"


def common(args: argparse.Namespace, runtime: Runtime, weights: str, flops: str) -> Dict[str, str]:
    unit, cuda = UNITS[args.mode], runtime.device.type == "cuda"
    return {
        "interleaving": f"{args.iters} timed {unit} per variant in {min(args.rounds, args.iters)} rounds, "
                        f"alternating baseline, ours, baseline, ours, ... in one process",
        "warmup": f"{args.warmup} untimed {unit} per variant, run while the other variant waits"
                  + ("; cudnn.benchmark on for both (as both training scripts set it)" if cuda else ""),
        "weights": weights,
        "memory": "CUDA: after its warm-up, torch.cuda.reset_peak_memory_stats, one more unit, then "
                  "max_memory_allocated minus what was allocated before the variant was moved to the device, "
                  "so each number is the variant's own (weights, optimizer state, activations)"
                  if cuda else "n/a (CPU)",
        "flops": flops + "; FlopCounterMode over one fp32 forward of torchvision's model on the meta device, "
                         "2 FLOPs per multiply-add (torchvision's published GFLOPS count multiply-adds: half "
                         "this), the same FLOPs credited to both variants",
        "mfu": "achieved FLOP/s / dense peak of the precision the variant runs (bf16/fp16 under autocast, TF32 "
               "for fp32 with cuDNN's default allow_tf32), from a datasheet table by GPU name or a measured "
               "matmul" if cuda else "n/a (CPU)",
    }


def train(args: argparse.Namespace, runtime: Runtime, weights: str) -> Dict[str, str]:
    return {
        "timed": f"training steps, batch {args.batch_size}, {args.size}x{args.size}; each round is one block of "
                 f"wall time with a device synchronize before its first step and after its last, none inside",
        "inputs": "one fixed random batch (smooth random images; blocky random masks with ~5% ignore=255 pixels), "
                  "the same pixels for both, sent from host memory every step (pinned on CUDA)",
        "baseline": f"torchvision.models.segmentation.{args.model}(weights=None, weights_backbone=None, "
                    f"aux_loss={get_spec(args.model).aux_site is not None}, num_classes=N), fp32, contiguous; "
                    + squash(TVTrain.__doc__),
        "ours": f"build_model, then {squash(OurTrain.__doc__)} {ours_runtime(runtime)}",
        **common(args, runtime, weights, "per image: 3 x forward with the aux head (backward = 2 x forward; "
                                         "loss and optimizer not counted)"),
    }


def evaluation(args: argparse.Namespace, runtime: Runtime, weights: str) -> Dict[str, str]:
    sizes = " ".join(f"{h}x{w}" for h, w in args.image_sizes)
    return {
        "timed": f"one pass over {args.num_images} in-memory images (HxW {sizes}, used in turn), inference and "
                 f"confusion matrix, timed as one block with a device synchronize before and after",
        "inputs": "smooth random images and blocky random masks with ~5% ignore pixels, decoded once; no file I/O "
                  "in either variant",
        "baseline": squash(TVEval.__doc__),
        "ours": f"{squash(OurEval.__doc__)} batch {args.batch_size}, {ours_runtime(runtime)}",
        "check": "one more pass of each in strict fp32 (TF32 off): the two confusion matrices must be equal",
        **common(args, runtime, weights, "per image: forward without the aux head (its output is unused), "
                                         "averaged over the image sizes"),
    }


def infer(args: argparse.Namespace, runtime: Runtime, weights: str) -> Dict[str, str]:
    image = f"{args.image} resized to {args.size}x{args.size}" if args.image else \
        f"a synthetic smooth {args.size}x{args.size} image"
    return {
        "timed": "latency of each call (batch 1: host image in, label map on the device out), with a device "
                 "synchronize before and after every call",
        "inputs": image,
        "baseline": squash(TVInfer.__doc__),
        "ours": f"{squash(OurInfer.__doc__)} {ours_runtime(runtime)}",
        "check": "fraction of pixels whose argmax equals the baseline's (target >= 99.9%), as timed and in "
                 "strict fp32",
        **common(args, runtime, weights, "per image: forward without the aux head (its output is unused)"),
        **({"pt2e_int8": f"ours quantized in torch (inference.pt2e: torch.export at 1x3x{args.size}x{args.size}, "
                         f"torchao's X86InductorQuantizer with its default static config, calibrated on the "
                         f"int8 variants' synthetic images, TorchInductor with freezing); compile time not timed"}
           if getattr(args, "pt2e_int8", False) else {}),
    }


def data(args: argparse.Namespace, runtime: Runtime) -> Dict[str, str]:
    sizes = " ".join(f"{h}x{w}" for h, w in args.image_sizes)
    return {
        "timed": f"wall time to draw batches of {args.batch_size} (timed_batches per worker count, default "
                 f"max(50, 10 x workers)) after warmup_batches untimed ones (default max(5, 2 x workers); worker "
                 f"start-up falls there), a fresh loader per measurement, one epoch; {args.rounds} rounds per "
                 f"worker count in alternating order, the median reported",
        "inputs": f"{args.num_images} JPEGs (quality 90, HxW {sizes} in turn) with palette PNG masks in a "
                  f"temporary folder dataset",
        "baseline": f"torchvision's reference pipeline: {squash(TVPresetTrain.__doc__)} PIL decode as "
                    f"torchvision.datasets.VOCSegmentation does, its collate_fn and loader settings",
        "pil": f"ours decoding with PIL (decoder='pil'): {squash(training_loader.__doc__)}",
        "ours": f"what train.py runs: the same loader decoding JPEGs and 8-bit PNG masks with torchvision.io "
                f"(decode_jpeg with EXIF orientation, decode_png), uint8 until the device, "
                f"SegmentationPresetTrain({args.base_size}, {args.size}), pin_memory {runtime.device.type == 'cuda'}",
        "check": "every file decoded both ways (images: max |difference|; masks: identical), and the first batch "
                 "of the two decoders with the same seeds compared",
        "gpu": "ours images/s / --gpu-step-rate, enough when >= 1.5" if args.gpu_step_rate
               else "no --gpu-step-rate given",
    }


def predict(args: argparse.Namespace, runtime: Runtime, weights: str, workers: int) -> Dict[str, str]:
    sizes = " ".join(f"{h}x{w}" for h, w in args.image_sizes)
    return {
        "timed": f"wall time of a whole folder, from the first file read to the last mask written, with a device "
                 f"synchronize before and after; {args.rounds} rounds alternating baseline, ours",
        "inputs": f"{args.num_images} JPEGs (quality 90, HxW {sizes} in turn), masks written as palette PNGs",
        "baseline": "one at a time, as predict.py did before: read_image, predict_images (batch 1), argmax, write "
                    "the mask, then the next photo, all in one thread",
        "ours": f"{squash(our_folder.__doc__)} -b {args.batch_size}, {workers} workers, {ours_runtime(runtime)}",
        "model": f"{args.model} prepared as predict.py does (prepare_inference_model), the same for both; "
                 f"{args.warmup} untimed passes per input shape before the first round",
        "weights": weights,
        "check": "every mask of ours compared with the baseline's, pixel by pixel",
    }
