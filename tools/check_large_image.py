"""Measures time and peak memory of predicting one large photo on the CPU, e.g. whole image vs sliding window.

    python tools/check_large_image.py --model fcn_resnet50 --mode slide        # 3000x4000, windows 512/341
    python tools/check_large_image.py --model fcn_resnet50 --mode whole        # the same in one forward pass

Random weights and a random image: time and memory do not depend on the values. The model runs in fp32 as
built (no BatchNorm folding, no channels-last), the memory-hungriest form of predict.py's path. The peak is
the growth of the resident set over the prediction: on Linux the kernel's peak mark is reset just before it
(VmHWM), elsewhere the process's maximum (ru_maxrss) is used, so run one mode per process there.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src and train_utils live at the repository root
from core.cli import ArgumentParser, add_config_flags, parse_with_config, positive_int, run_main  # noqa: E402
from inference.modes import add_inference_flags, inferer_from_args, make_inferer, window_starts  # noqa: E402
from src import add_model_flags, build_model, load_model_weights  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_flags(parser, training=True)  # --weights: a checkpoint's weights instead of random ones
    parser.add_argument("--height", type=positive_int, default=3000, help="image height in pixels")
    parser.add_argument("--width", type=positive_int, default=4000, help="image width in pixels")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_inference_flags(parser)
    add_config_flags(parser)
    return parse_with_config(parser, argv)


def _maxrss_mb() -> float:
    """ru_maxrss where the resource module exists (POSIX); Windows has neither it nor /proc: nan."""
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def start_peak_rss() -> float:
    """Resets the kernel's peak-RSS mark (Linux), so that the peak read later is this prediction's, not that
    of building the model; returns the RSS now in MB. Elsewhere ru_maxrss, which may be an earlier peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return _maxrss_mb()


def peak_rss_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except OSError:
        return _maxrss_mb()


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: the kernel's MemAvailable, lowered to what a cgroup v2 limit
    (a container's, a SLURM job's) leaves; None where neither can be read (not Linux)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(args: argparse.Namespace, result_bytes: int) -> None:
    """Refuses, before anything is allocated, a size whose input and float32 result alone (a lower bound:
    the forward pass needs more) exceed the memory available."""
    need = 3 * args.height * args.width * 4 + result_bytes
    free = available_memory()
    if free is not None and need > free:
        raise ValueError(f"a {args.height}x{args.width} image needs at least {need / 2**30:.1f} GiB (the float32 "
                         f"input and result alone), but only {max(free, 0) / 2**30:.1f} GiB is available; "
                         f"choose a smaller --height/--width")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    infer = inferer_from_args(args) or make_inferer()  # None means the plain whole-image forward
    args.num_classes = args.num_classes or 21
    result_bytes = args.num_classes * args.height * args.width * 4
    check_fits(args, result_bytes)
    model = build_model(args.model, num_classes=args.num_classes, aux=False).eval()
    if args.weights:
        print(f"weights from {args.weights}: {load_model_weights(model, args.weights)}")
    images = torch.randn(1, 3, args.height, args.width)
    windows = ""
    if args.mode == "slide":
        count = len(window_starts(args.height, args.window, args.stride)) * \
            len(window_starts(args.width, args.window, args.stride))
        windows = f", {count} windows of {args.window}px in chunks of {args.chunk}"
    result_mb = result_bytes / 2**20
    print(f"{args.model}, {infer.name}, 1x3x{args.height}x{args.width}{windows}; "
          f"the float32 result alone is {result_mb:.0f} MB")
    before, start = start_peak_rss(), time.perf_counter()
    with torch.inference_mode():
        out = infer(model, images)
    elapsed, grown = time.perf_counter() - start, peak_rss_mb() - before
    print(f"output {tuple(out.shape)} in {elapsed:.1f} s; peak RSS grew by {grown:.0f} MB "
          f"({grown - result_mb:.0f} MB beyond the result)")
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
