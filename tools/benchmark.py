"""Times what users run, training, evaluation, inference, data loading and folder prediction, against a baseline.

    python tools/benchmark.py --mode train --device cuda --amp --batch-size 8 --size 480 --json train.json
    python tools/benchmark.py --mode eval --device cuda --amp --batch-size 8 --json eval.json
    python tools/benchmark.py --mode infer --device cuda --amp --size 520 --iters 200 --json infer.json
    python tools/benchmark.py --mode data --batch-size 8 --workers 1 2 4 8 16 --gpu-step-rate 150
    python tools/benchmark.py --mode predict --device cuda --amp --batch-size 8 --workers 4 --num-images 200
    # CPU runtimes side by side: torchvision eager, ours, ONNX Runtime, OpenVINO, and both in int8
    python tools/benchmark.py --mode infer --device cpu --backends onnxruntime openvino --int8
    # int8 in torch itself (PT2E, x86 quantizer, TorchInductor; needs torchao), next to torchvision eager
    python tools/benchmark.py --mode infer --device cpu --pt2e-int8

train, eval and infer run our code path and torchvision's reference recipe ("the baseline") in one process, in
alternating rounds (baseline, ours, baseline, ours, ...) so that clock changes and other load hit both alike,
and report images/s, the ratio ours / baseline, peak CUDA memory, FLOPs per image and MFU. data times three
training input pipelines side by side: torchvision's (PIL decode and transforms), ours decoding with PIL, and
ours as train.py runs it (torchvision.io decoding). predict times predict.py on a folder against one-at-a-time
prediction. Ours is always the library's own code (tools/benchlib/ours.py calls it, it does not copy it) with
the runtime flags of every script (core.runtime); the baselines are written out in tools/benchlib/baselines.py.
The protocol is printed with the numbers and written to --json (see docs/BENCHMARKS.md).
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages live at the repository root
from core.cli import (  # noqa: E402
    ArgumentParser,
    UsageError,
    add_config_flags,
    non_negative_int,
    parse_with_config,
    positive_float,
    positive_int,
    run_main,
)
from core.outputs import check_output  # noqa: E402
from core.runtime import add_runtime_flags, resolve_runtime  # noqa: E402
from src import add_model_flags  # noqa: E402
from tools.benchlib.backends import check_args as check_backend_args  # noqa: E402
from tools.benchlib.baselines import TV_BUILDERS  # noqa: E402
from tools.benchlib.inputs import VOC_SIZES  # noqa: E402
from tools.benchlib.modes import MODES  # noqa: E402
from tools.benchlib.report import environment, print_report, write_json  # noqa: E402

# Per mode: the defaults of --warmup, --iters, --rounds, --size, --num-images, --workers.
DEFAULT_WARMUP = {"train": 5, "eval": 1, "infer": 5, "predict": 1}
DEFAULT_ITERS = {"train": 50, "eval": 5, "infer": 50}
DEFAULT_ROUNDS = {"train": 5, "eval": 5, "infer": 5, "data": 2, "predict": 1}
DEFAULT_SIZE = {"train": 480, "infer": 520, "data": 480}
DEFAULT_NUM_IMAGES = {"eval": 48, "data": 64, "predict": 200}
DEFAULT_WORKERS = {"data": [1, 2, 4, 8, 16], "predict": [2]}
# Flags that only some modes take.
APPLIES = {"--size": ("train", "infer", "data"), "--image": ("infer",), "--iters": ("train", "eval", "infer", "data"),
           "--image-sizes": ("eval", "data", "predict"), "--num-images": ("eval", "data", "predict"),
           "--workers": ("data", "predict"), "--gpu-step-rate": ("data",), "--base-size": ("data",),
           "--weights": ("train", "eval", "infer", "predict"), "--num-classes": ("train", "eval", "infer", "predict"),
           "--model": ("train", "eval", "infer", "predict"), "--channels-last": ("train", "eval", "infer", "predict"),
           "--backends": ("infer", "predict"), "--int8-model": ("infer", "predict")}


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
    parser.add_argument("--mode", choices=tuple(MODES), default="train", help="what to time")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=8,
                        help="images per training step, eval batch of ours (the baseline evaluates one at a "
                             "time), loader batch, and predict batch of ours; infer always uses 1")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="side of the square input: train crop (default 480), infer image (520), data crop (480)")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help="untimed units per variant: train steps (default 5), eval passes (1), infer calls (5), "
                             "data batches (max(5, 2 x workers)), predict passes per input shape (1)")
    parser.add_argument("--iters", type=positive_int, default=None,
                        help="timed units per variant: train steps (default 50), eval passes (5), infer calls "
                             "(50), data batches (max(50, 10 x workers))")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="alternating rounds: the timed units are split into this many (default 5); data and "
                             "predict repeat the whole measurement (default 2 and 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--image", default=None, metavar="PATH",
                        help="infer: a photo, resized to --size (default: a synthetic smooth image)")
    parser.add_argument("--image-sizes", type=image_size, nargs="+", default=None, metavar="HxW",
                        help="eval, data, predict: image sizes, used in turn (default: 375x500 333x500 500x375, VOC's)")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="eval: images held in memory (default 48); data: JPEGs written (64); predict: JPEGs "
                             "in the folder (200)")
    parser.add_argument("--base-size", type=positive_int, default=None,
                        help="data: base size of the train preset (default 520)")
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=None,
                        help="data: loader worker counts to time (default 1 2 4 8 16); predict: predict.py's -j (2)")
    parser.add_argument("--gpu-step-rate", type=positive_float, default=None, metavar="IMGS",
                        help="data: GPU training images/s (from --mode train) that the loader has to keep up with")
    parser.add_argument("--backends", nargs="+", choices=("onnxruntime", "openvino"), default=None,
                        help="infer, predict: also time our model exported to ONNX (BN folded) in these runtimes, "
                             "side by side (CPU; predict.py --backend)")
    parser.add_argument("--int8", action="store_true",
                        help="infer, predict: also time the int8 model (quantized here on 4 synthetic images; "
                             "--int8-model for one of tools/quantize.py) in each of --backends (default onnxruntime)")
    parser.add_argument("--pt2e-int8", action="store_true",
                        help="infer: also time our model quantized to int8 in torch (PT2E with torchao's x86 "
                             "quantizer, calibrated on the same synthetic images, compiled by TorchInductor for "
                             "the --size input; needs torchao)")
    parser.add_argument("--int8-model", default=None, metavar="FILE",
                        help="infer, predict: the int8 ONNX model of --weights made by tools/quantize.py")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the protocol and all numbers to this file")
    # The model and runtime flags of every script. Ours runs with the runtime flags; the baseline is always
    # torchvision's fp32, contiguous, eager recipe. --weights loads one checkpoint into both models.
    add_model_flags(parser, training=True)
    parser.set_defaults(model=None)  # with --weights, the checkpoint's model; else fcn_resnet50
    add_runtime_flags(parser)
    add_config_flags(parser)
    return parse_with_config(parser, argv)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills in the defaults that depend on --mode and rejects flags that do not apply to it."""
    mode = args.mode
    for flag, modes in APPLIES.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None and mode not in modes:
            raise UsageError(f"{flag} does not apply to --mode {mode} (only to {', '.join(modes)}); drop it")
    for flag in ("amp", "compile"):
        if getattr(args, flag) and mode == "data":
            raise UsageError(f"--{flag} does not apply to --mode data (only to train, eval, infer, predict); drop it")
    if args.model is not None and args.model not in TV_BUILDERS:
        raise UsageError(f"--model {args.model}: the benchmark compares {', '.join(TV_BUILDERS)} with "
                         f"torchvision's models of the same name; choose one of them")
    args.size = args.size or DEFAULT_SIZE.get(mode)
    args.base_size = args.base_size or 520
    if mode not in ("data",):  # data's defaults depend on the worker count (see modes.loader_counts)
        args.warmup = DEFAULT_WARMUP[mode] if args.warmup is None else args.warmup
        args.iters = args.iters or DEFAULT_ITERS.get(mode)
    args.rounds = args.rounds or DEFAULT_ROUNDS[mode]
    args.image_sizes = [tuple(s) for s in (args.image_sizes or VOC_SIZES)]
    args.num_images = args.num_images or DEFAULT_NUM_IMAGES.get(mode)
    args.workers = args.workers or DEFAULT_WORKERS.get(mode)
    if mode == "data" and args.num_images < args.batch_size:
        raise UsageError(f"--num-images {args.num_images} is less than one batch (--batch-size {args.batch_size}); "
                         f"raise --num-images")
    if args.int8 and mode not in ("infer", "predict"):
        raise UsageError(f"--int8 does not apply to --mode {mode} (only to infer, predict); drop it")
    if args.pt2e_int8 and mode != "infer":
        raise UsageError(f"--pt2e-int8 does not apply to --mode {mode} (only to infer: it is compiled for one "
                         f"input shape); drop it")
    if args.int8_model and not args.weights:
        raise UsageError("--int8-model is the int8 model of a checkpoint: pass that checkpoint as --weights")
    if mode == "predict" and len(args.workers) != 1:
        raise UsageError(f"--mode predict takes one --workers count (predict.py's -j), got {args.workers}")
    return args


def main(args: argparse.Namespace) -> int:
    args = resolve_args(args)
    check_output("--json", args.json, "json", [getattr(args, "weights", None), getattr(args, "config", None)])
    runtime = resolve_runtime(args)
    check_backend_args(args, runtime)
    runtime.set_backend_flags()  # cudnn.benchmark on CUDA, as train.py and TV's train.py; warm-up covers every shape
    env = environment(runtime)
    result = {"mode": args.mode, "model": None, "command": " ".join(sys.argv), "environment": env,
              **MODES[args.mode](args, runtime)}
    result["model"] = args.model  # filled in from --weights or the default by the mode (None for data)
    env["load_average_end"] = os.getloadavg()[0]
    print_report(result)
    if args.json:
        write_json(result, args.json)
    check = result.get("check") or {}
    # Correctness checks: the speed-up must not change a label (eval in fp32, predict, the data decoders).
    failed = [name for name in ("fp32_equal", "masks_equal", "batch_masks_equal", "images_within_rounding")
              if check.get(name) is False]
    if failed:
        print(f"error: the check failed ({', '.join(failed)}; see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
