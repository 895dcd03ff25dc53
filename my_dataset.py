"""Segmentation data: Pascal VOC, COCO, Cityscapes, ADE20K and folder datasets, mask I/O, batch collation, a
synthetic demo dataset, a data checker and converters. The code lives in data_utils/ (one module per job,
importing only core/); this file re-exports its public names and is the command line.

    python my_dataset.py check --data-path /data/VOC --dataset voc --split train
    python my_dataset.py demo --out data/demo
    python my_dataset.py import-labelme annotations/ --out data/mine --classes classes.json --val-fraction 0.2
    python my_dataset.py convert-colors color_masks/ --colors colors.json --out data/mine/train/masks

Items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)). Nothing is normalised or turned
into floats here: uint8 moves 4x fewer bytes through the loader, and normalisation happens on the device.
"""
import argparse
import sys
from typing import Optional, Sequence

from core.cli import USER_ERRORS, ArgumentParser, non_negative_float, non_negative_int, one_line, seed
from core.outputs import check_output
from core.palette import VOC_CLASSES_FILE, VOC_PALETTE, ClassNames, PathLike, load_class_names, resolve_class_names
from core.platform import check_writable, usable_cpu_count
from data_utils import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_VOC_CATEGORIES,
    DATASETS,
    DEMO_CLASSES,
    DEMO_NUM_TRAIN,
    DEMO_NUM_VAL,
    DEMO_SIZE,
    IMAGE_EXTENSIONS,
    COCOSegmentation,
    DatasetSpec,
    Pair,
    Sample,
    SegmentationDataset,
    SegmentationFolder,
    Transforms,
    VOCSegmentation,
    add_max_image_pixels_flag,
    boundary_band,
    build_dataset,
    check_mask_values,
    check_split,
    class_pixel_counts,
    collate_fn,
    convert_colors,
    dataset_spec,
    folder_pairs,
    image_size,
    import_labelme,
    label_counts,
    make_demo_dataset,
    make_demo_sample,
    make_label_map,
    missing_files,
    own_class_file,
    print_report,
    read_image,
    read_mask,
    read_split_ids,
    save_mask,
    scan_split,
    set_max_image_pixels,
    voc_dir,
    voc_pairs,
)

__all__ = [
    "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "COCO_VOC_CATEGORIES", "COCOSegmentation", "convert_colors",
    "import_labelme", "run_convert_colors", "run_import_labelme",
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
    if args.save_counts:  # before the scan, not after it; never over the dataset's own class file
        check_output("--save-counts", args.save_counts, "json", [own_class_file(args.data_path)])
        check_writable(args.save_counts, "--save-counts")
    return check_split(args.dataset, args.data_path, args.split, args.workers, args.save_counts)


def run_demo(args: argparse.Namespace) -> int:
    """The `demo` command: writes the synthetic dataset."""
    root = make_demo_dataset(args.out, args.num_train, args.num_val, args.size, args.seed, args.overwrite)
    print(f"demo dataset ({args.num_train} train, {args.num_val} val, {args.size}x{args.size}, classes: "
          f"{', '.join(DEMO_CLASSES)}) written to {root}; use --dataset demo --data-path {root}")
    return 0


def run_import_labelme(args: argparse.Namespace) -> int:
    """The `import-labelme` command: labelme JSON files -> the folder layout."""
    counts = import_labelme(args.src_dir, args.out, args.classes, args.val_fraction, args.seed)
    print(f"{counts['train']} train and {counts['val']} val images with index masks written to {args.out}; "
          f"train with --dataset folder --data-path {args.out}")
    if counts["val"] == 0:  # train.py validates on val/: say so now, not after the model is built
        why = "--val-fraction 0" if args.val_fraction == 0 else "one file cannot be split"
        print(f"note: no val split ({why}), and train.py needs {args.out}/val; label more images and import again "
              f"with --val-fraction 0.2, or validate on the training images: cp -r {args.out}/train {args.out}/val",
              file=sys.stderr)
    return 0


def run_convert_colors(args: argparse.Namespace) -> int:
    """The `convert-colors` command: colour masks -> index masks."""
    count = convert_colors(args.mask_dir, args.colors, args.out)
    print(f"{count} index masks (and classes.json) written to {args.out}")
    return 0


COMMANDS = {"check": run_check, "demo": run_demo, "import-labelme": run_import_labelme,
            "convert-colors": run_convert_colors}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Check a segmentation dataset, write the demo dataset, or convert "
                                        "labelme files or colour masks into index masks.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="scan a split: pixel counts per class and every bad file")
    check.add_argument("--data-path", required=True, help="dataset root, as train.py's --data-path")
    check.add_argument("--dataset", default="voc", choices=tuple(DATASETS),
                       help="dataset layout (default: voc): " +
                            "; ".join(f"{name}: {spec.description}" for name, spec in DATASETS.items()))
    check.add_argument("--split", default="train", help="split to scan (default: train)")
    check.add_argument("--workers", type=non_negative_int, default=min(4, usable_cpu_count()),
                       help="loader processes decoding files (default: min(4, CPU count))")
    check.add_argument("--save-counts", default=None,
                       help="also write the per-class pixel counts to this JSON file (for class-weighted losses)")
    demo = commands.add_parser("demo", help="write the synthetic demo dataset (VOC layout, 5 classes)")
    demo.add_argument("--out", required=True, help="output folder (becomes the --data-path of --dataset demo)")
    demo.add_argument("--num-train", type=int, default=DEMO_NUM_TRAIN,
                      help=f"training images (default: {DEMO_NUM_TRAIN}, what make demo trains on)")
    demo.add_argument("--num-val", type=int, default=DEMO_NUM_VAL, help=f"validation images (default: {DEMO_NUM_VAL})")
    demo.add_argument("--size", type=int, default=DEMO_SIZE, help=f"image side in pixels (default: {DEMO_SIZE})")
    demo.add_argument("--seed", type=seed, default=0, help="random seed; same seed, same files (default: 0)")
    demo.add_argument("--overwrite", action="store_true",
                      help="write into a folder that already holds files (same-named files are replaced)")
    labelme = commands.add_parser("import-labelme", help="labelme JSON files -> folder dataset with index masks")
    labelme.add_argument("src_dir", metavar="SRC_DIR", help="folder of labelme .json files")
    labelme.add_argument("--out", required=True, help="new folder for the dataset (--dataset folder --data-path)")
    labelme.add_argument("--classes", required=True,
                         help='class file {"background": 0, "cat": 1, ...}; 0 is what no shape covers')
    labelme.add_argument("--val-fraction", type=non_negative_float, default=0.2,
                         help="share of the files put in val (default: 0.2)")
    labelme.add_argument("--seed", type=seed, default=0, help="seed of the train/val shuffle (default: 0)")
    colors = commands.add_parser("convert-colors", help="RGB colour masks -> index masks")
    colors.add_argument("mask_dir", metavar="MASK_DIR", help="folder of colour masks")
    colors.add_argument("--colors", required=True,
                        help='class name -> colour JSON in class order: {"background": [0, 0, 0], "road": '
                             '[128, 64, 128], "__ignore__": [255, 255, 255]}')
    colors.add_argument("--out", required=True, help="new folder for the index masks (and classes.json)")
    for command in (check, labelme, colors):
        add_max_image_pixels_flag(command)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    command = COMMANDS[args.command]
    try:
        set_max_image_pixels(getattr(args, "max_image_pixels", None))
        return command(args)
    except (*USER_ERRORS, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(parse_args()))
