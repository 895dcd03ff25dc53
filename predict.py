"""Predict segmentation masks for one image or a folder of images.

    python predict.py --weights runs/fcn_resnet50_voc/best.pth --image photo.jpg --overlay
    python predict.py --weights best.pth --image photos/ --output masks/ --overlay --probs
    # large photos: sliding window; test-time augmentation: --scales 0.75 1.0 1.25 --flip
    python predict.py --weights best.pth --image aerial.tif --mode slide --window 512 --stride 341

Each mask is a VOC-palette PNG of class indices at the image's original size. --overlay also writes the
photo blended with the colours (opacity --alpha) and a legend of the classes present; --probs writes the per-class
probabilities as float16 .npy (C, H, W). The mean and median inference time (after a warm-up pass,
synchronised on CUDA) are printed at the end.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from core.cli import (ArgumentParser, HelpFormatter, add_config_flags, non_negative_int, parse_with_config,
                      positive_int, run_main)
from core.palette import VOC_PALETTE, class_name, default_class_names
from core.runtime import Runtime, add_runtime_flags, resolve_runtime, synchronize
from data_utils import IMAGE_EXTENSIONS, read_image, save_mask
from src import add_model_flags
from train_utils.inference import add_inference_flags, inferer_from_args, load_inference_model
from train_utils.pictures import overlay
from train_utils.train_eval import prepare_images, whole_image


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_model_flags(parser)
    add_runtime_flags(parser)
    parser.add_argument("--image", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", default=None,
                        help="output PNG for one image, or output folder (default: predictions/)")
    parser.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=False,
                        help="also write <name>_overlay.png: the photo blended with the mask, with a legend")
    parser.add_argument("--alpha", type=opacity, default=0.5,
                        help="opacity of the class colours in the overlay, 0 (photo only) to 1 (colours only)")
    parser.add_argument("--probs", action=argparse.BooleanOptionalAction, default=False,
                        help="also write <name>_probs.npy: float16 class probabilities (C, H, W)")
    parser.add_argument("--runs", type=positive_int, default=1, help="timed passes per image (after warm-up)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed passes on the first image")
    add_inference_flags(parser)
    return parse_with_config(parser, argv)


def opacity(text: str) -> float:
    """An --alpha value: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text}")
    return value


def list_images(path: Path) -> List[Path]:
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise FileNotFoundError(f"--image {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return images
    if not path.is_file():
        raise FileNotFoundError(f"--image {path}: no such file or folder")
    return [path]


def output_path(args: argparse.Namespace, image: Path, single: bool) -> Path:
    if single and args.output and Path(args.output).suffix.lower() == ".png":
        return Path(args.output)
    return Path(args.output or "predictions") / f"{image.stem}.png"


@torch.inference_mode()
def predict(model: torch.nn.Module, image: torch.Tensor, runtime: Runtime, infer) -> torch.Tensor:
    """(3, H, W) uint8 -> scores (C, H, W) at the image's size (logits, or probabilities under TTA)."""
    x = prepare_images(image[None], runtime.device, runtime.channels_last)
    with runtime.autocast():
        return infer(model, x)[0].float()


def timed_predict(model, image, runtime: Runtime, infer, runs: int) -> Tuple[torch.Tensor, List[float]]:
    times = []
    for _ in range(runs):
        synchronize(runtime.device)
        start = time.perf_counter()
        scores = predict(model, image, runtime, infer)
        synchronize(runtime.device)
        times.append(time.perf_counter() - start)
    return scores, times


def main(args: argparse.Namespace) -> int:
    images = list_images(Path(args.image))
    runtime = resolve_runtime(args)
    loaded, model = load_inference_model(args, runtime)
    names = loaded.class_names or default_class_names(loaded.num_classes)
    palette = loaded.palette or VOC_PALETTE
    infer = inferer_from_args(args) or whole_image
    if args.warmup:
        first = read_image(images[0])
        for _ in range(args.warmup):
            predict(model, first, runtime, infer)
    all_times = []
    for path in tqdm(images, desc="predict", unit="img", disable=len(images) == 1):
        image = read_image(path)
        scores, times = timed_predict(model, image, runtime, infer, args.runs)
        all_times += times
        mask = scores.argmax(0).to(torch.uint8).cpu().numpy()
        out = output_path(args, path, len(images) == 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_mask(mask, out, palette)
        if args.overlay:
            overlay(image.permute(1, 2, 0).numpy(), mask, names, args.alpha, palette).save(
                out.with_name(out.stem + "_overlay.png"))
        if args.probs:
            probs = scores if getattr(infer, "returns_probabilities", False) else scores.softmax(0)
            np.save(out.with_name(out.stem + "_probs.npy"), probs.cpu().numpy().astype(np.float16))
        if len(images) == 1:
            present = ", ".join(class_name(names, int(c)) for c in np.unique(mask))
            print(f"{path} -> {out} ({mask.shape[1]}x{mask.shape[0]}; classes: {present})")
    mean, median = statistics.mean(all_times) * 1000, statistics.median(all_times) * 1000
    print(f"inference time ({runtime.precision}) over {len(all_times)} passes on {runtime.device}: mean {mean:.1f} ms, "
          f"median {median:.1f} ms", file=sys.stderr)
    if len(images) > 1:
        print(f"wrote {len(images)} masks to {Path(args.output or 'predictions')}")
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
