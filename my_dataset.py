"""Segmentation data: Pascal VOC and folder datasets, mask I/O in the VOC palette, batch collation, a
synthetic demo dataset and a data checker. The code lives in data_utils/ (one module per job, importing
only core/); this file re-exports its public names and is the command line.

    python my_dataset.py check --data-path /data/VOC --dataset voc --split train
    python my_dataset.py demo --out data/demo

Items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)). Nothing is normalised or turned
into floats here: uint8 moves 4x fewer bytes through the loader, and normalisation happens on the device.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from core.cli import USER_ERRORS, ArgumentParser, non_negative_int, one_line, seed
from core.palette import (VOC_CLASSES_FILE, VOC_PALETTE, ClassNames, PathLike, load_class_names,
                          resolve_class_names)
from core.platform import check_writable
from data_utils import (DATASETS, DEMO_CLASSES, IMAGE_EXTENSIONS, DatasetSpec, Pair, Sample, SegmentationDataset,
                        SegmentationFolder, Transforms, VOCSegmentation, boundary_band, build_dataset, check_split,
                        check_mask_values, class_pixel_counts, collate_fn, dataset_spec, folder_pairs, image_size,
                        label_counts, make_demo_dataset, make_demo_sample, make_label_map, missing_files,
                        print_report, read_image, read_mask, read_split_ids, save_mask, scan_split, voc_dir,
                        voc_pairs)

__all__ = [
    "DATASETS", "DEMO_CLASSES", "IMAGE_EXTENSIONS", "VOC_CLASSES_FILE", "VOC_PALETTE", "ClassNames", "DatasetSpec",
    "Pair", "PathLike", "Sample", "SegmentationDataset", "SegmentationFolder", "Transforms", "VOCSegmentation",
    "boundary_band", "build_dataset", "check_mask_values", "check_split", "class_pixel_counts", "collate_fn",
    "dataset_spec", "folder_pairs", "image_size", "label_counts", "load_class_names", "main",
    "make_demo_dataset", "make_demo_sample", "make_label_map", "missing_files", "parse_args", "print_report",
    "read_image", "read_mask", "read_split_ids", "resolve_class_names", "run_check", "run_demo", "save_mask",
    "scan_split", "voc_dir", "voc_pairs",
]


def run_check(args: argparse.Namespace) -> int:
    """The `check` command: 0 if the split is clean, 1 if any file has a problem."""
    if args.save_counts:
        check_writable(args.save_counts, "--save-counts")  # before the scan, not after it
    return check_split(args.dataset, args.data_path, args.split, args.workers, args.save_counts)


def run_demo(args: argparse.Namespace) -> int:
    """The `demo` command: writes the synthetic dataset."""
    root = make_demo_dataset(args.out, args.num_train, args.num_val, args.size, args.seed)
    print(f"demo dataset ({args.num_train} train, {args.num_val} val, {args.size}x{args.size}, classes: "
          f"{', '.join(DEMO_CLASSES)}) written to {root}; use --dataset voc --data-path {root}")
    return 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Check a segmentation dataset or write the demo dataset.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="scan a split: pixel counts per class and every bad file")
    check.add_argument("--data-path", required=True, help="dataset root (for voc: the folder containing VOCdevkit)")
    check.add_argument("--dataset", default="voc", choices=tuple(DATASETS),
                       help="dataset layout (default: voc): " +
                            "; ".join(f"{name}: {spec.description}" for name, spec in DATASETS.items()))
    check.add_argument("--split", default="train", help="split to scan (default: train)")
    check.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                       help="loader processes decoding files (default: min(4, CPU count))")
    check.add_argument("--save-counts", default=None,
                       help="also write the per-class pixel counts to this JSON file (for class-weighted losses)")
    demo = commands.add_parser("demo", help="write the synthetic demo dataset (VOC layout, 5 classes)")
    demo.add_argument("--out", required=True, help="output folder (becomes the --data-path of a voc dataset)")
    demo.add_argument("--num-train", type=int, default=80, help="training images (default: 80)")
    demo.add_argument("--num-val", type=int, default=20, help="validation images (default: 20)")
    demo.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    demo.add_argument("--seed", type=seed, default=0, help="random seed; same seed, same files (default: 0)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    command = run_check if args.command == "check" else run_demo
    try:
        return command(args)
    except (*USER_ERRORS, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(parse_args()))
