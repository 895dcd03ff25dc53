"""Predict segmentation masks for one image or a folder of images.

    python predict.py --weights runs/fcn_resnet50_voc/best.pth --image photo.jpg --overlay
    python predict.py --weights best.pth --image photos/ --output masks/ --overlay --probs
    # a folder on a GPU: 8 photos of one size per forward pass, decoded by 4 loader workers
    python predict.py --weights best.pth --image photos/ --output masks/ -b 8 -j 4
    # large photos: sliding window; test-time augmentation: --scales 0.75 1.0 1.25 --flip
    python predict.py --weights best.pth --image aerial.tif --mode slide --window 512 --stride 341

Each mask is a VOC-palette PNG of class indices at the image's original size. --overlay also writes the
photo blended with the colours and a legend of the classes present; --probs writes the per-class
probabilities as float16 .npy (C, H, W). A folder is read by DataLoader workers, photos of equal size are
batched (-b), and the files are written by background threads while the model runs; the masks are those of
one-at-a-time prediction. An unreadable photo in a folder is skipped: the others are predicted, the skipped
files are listed at the end and the exit status is 1. Photos sharing a stem (a.jpg, a.png) get a_jpg.png and
a_png.png; an output that would replace an input photo stops the run before anything is written. The mean
and median time of a model pass (after a warm-up pass, synchronised on CUDA) are printed at the end.
"""
import argparse
import sys
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from core.cli import (
    ArgumentParser,
    HelpFormatter,
    add_config_flags,
    non_negative_int,
    parse_with_config,
    positive_int,
    run_main,
)
from core.palette import VOC_PALETTE, Palette, class_name, default_class_names
from core.platform import atomic_write
from core.runtime import add_runtime_flags, resolve_runtime
from data_utils import IMAGE_EXTENSIONS, add_max_image_pixels_flag, save_mask, set_max_image_pixels
from inference import (
    Prediction,
    add_backend_flags,
    add_inference_flags,
    check_backend_args,
    check_output_files,
    inferer_from_args,
    load_backend,
    load_inference_model,
    output_stems,
    output_target,
    photo_loader,
    predict_folder,
    refuse_overwriting_inputs,
    whole_image,
)
from src import add_model_flags
from visualization.pictures import overlay


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
    parser.add_argument("-b", "--batch-size", type=positive_int, default=1,
                        help="photos of equal size per forward pass (8 suits a GPU; mind the memory of large "
                             "photos)")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=2,
                        help="DataLoader processes decoding a folder's photos (0: in the main process)")
    parser.add_argument("--runs", type=positive_int, default=1, help="timed passes per batch (after warm-up)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed passes on the first batch")
    add_inference_flags(parser)
    add_max_image_pixels_flag(parser)
    add_backend_flags(parser)
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


def endings(args: argparse.Namespace) -> List[str]:
    """How the names of a photo's output files end: the mask, and as asked for the overlay and probabilities."""
    return [".png"] + [ending for ending, wanted in (("_overlay.png", args.overlay), ("_probs.npy", args.probs))
                       if wanted]


def output_paths(args: argparse.Namespace, images: List[Path], single: bool) -> List[Path]:
    """The mask file of each photo: --output itself for one photo and a .png --output, else <folder>/<stem>.png
    with a distinct stem per photo (see output_stems)."""
    mask, folder = output_target(args.output, single)
    if mask is not None:
        return [mask]
    return [folder / f"{stem}.png" for stem in output_stems(images, endings(args))]


def companions(mask: Path, args: argparse.Namespace) -> List[Path]:
    """Every file written for the photo whose mask is `mask`."""
    return [mask.with_name(mask.stem + ending) for ending in endings(args)]


def save_outputs(prediction: Prediction, outputs: List[Path], args: argparse.Namespace, names: List[str],
                 palette: Palette) -> None:
    """Writes one photo's mask (and overlay, probabilities), each file atomically (runs on a writer thread)."""
    out = outputs[prediction.index]
    out.parent.mkdir(parents=True, exist_ok=True)  # here, so that a run that predicts nothing writes nothing
    atomic_write(out, lambda f: save_mask(prediction.mask, f, palette))
    if args.overlay:
        picture = overlay(prediction.image.permute(1, 2, 0).numpy(), prediction.mask, names, args.alpha, palette)
        atomic_write(out.with_name(out.stem + "_overlay.png"), lambda f: picture.save(f, format="PNG"))
    if args.probs:
        atomic_write(out.with_name(out.stem + "_probs.npy"), lambda f: np.save(f, prediction.probs))


def main(args: argparse.Namespace) -> int:
    set_max_image_pixels(args.max_image_pixels)
    images = list_images(Path(args.image))
    single = Path(args.image).is_file()
    outputs = output_paths(args, images, single)
    refuse_overwriting_inputs(images, [f for out in outputs for f in companions(out, args)])
    check_output_files([f for out in outputs for f in companions(out, args)], [args.weights, args.config])
    runtime = resolve_runtime(args)
    check_backend_args(args, runtime)
    loaded, model = load_inference_model(args, runtime)
    model = load_backend(args, loaded, model)
    names = loaded.class_names or default_class_names(loaded.num_classes)
    palette = loaded.palette or VOC_PALETTE
    loader = photo_loader(images, args.batch_size, 0 if single else args.workers, pin_memory=runtime.pin_memory)
    write = partial(save_outputs, outputs=outputs, args=args, names=names, palette=palette)
    result = predict_folder(model, loader, runtime, write, inferer_from_args(args) or whole_image,
                            with_probs=args.probs, warmup=args.warmup, runs=args.runs, progress=not single)
    if single and result.skipped:
        raise ValueError(result.skipped[0][1])
    if single:
        mask = np.array(Image.open(outputs[0]))
        present = ", ".join(class_name(names, int(c)) for c in np.unique(mask))
        print(f"{images[0]} -> {outputs[0]} ({mask.shape[1]}x{mask.shape[0]}; classes: {present})")
    if result.pass_seconds:
        mean, median = result.pass_ms()
        print(f"inference time ({args.backend}, {runtime.precision}, batches of up to {args.batch_size}) over "
              f"{len(result.pass_seconds)} passes on {runtime.device}: mean {mean:.1f} ms, median {median:.1f} ms",
              file=sys.stderr)
    if single:
        return 0
    print(f"wrote {result.done} masks to {outputs[0].parent} in {result.seconds:.1f} s "
          f"({result.images_per_s:.2f} images/s)")
    if result.skipped:
        print(f"skipped {len(result.skipped)} of {len(images)} images that could not be read:", file=sys.stderr)
        for _, problem in result.skipped:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
