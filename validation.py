"""Evaluate a checkpoint on a validation split and append the result to record_mAP.txt.

    python validation.py --data-path data/VOC --weights runs/fcn_resnet50_voc/best.pth
    # torchvision's COCO-VOC file (a raw state dict: the architecture is read off its tensors)
    python validation.py --data-path data/VOC --weights fcn_resnet50_coco-1167a1af.pth
    # multi-scale + flip test-time augmentation, reported next to the single-scale numbers
    python validation.py --data-path data/VOC --weights best.pth --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip
    # several GPUs (identical numbers: every image is counted exactly once)
    torchrun --nproc_per_node=4 validation.py --data-path data/VOC --weights best.pth

Metrics are computed at the original label resolution. The record (a header line, the confusion-matrix
summary and per-class IoU) is appended to --record, never overwritten; --json writes every metric.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torch.utils.data import DataLoader

from core.cli import ArgumentParser, HelpFormatter, add_config_flags, parse_with_config, positive_int, run_main
from core.platform import append_text, atomic_write, check_writable, nan_to_none
from core.runtime import add_runtime_flags, resolve_runtime
from data_utils import build_dataset, collate_fn
from src import add_model_flags
from train_utils.distributed import cleanup, init_distributed_mode
from train_utils.inference import add_inference_flags, inferer_from_args, load_inference_model
from train_utils.metrics import ConfusionMatrix
from train_utils.options import add_data_flags
from train_utils.sampler import EvalBatchSampler
from train_utils.train_eval import evaluate, whole_image
from transforms import SegmentationPresetEval


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_data_flags(parser)
    add_model_flags(parser)
    add_runtime_flags(parser)
    parser.add_argument("--split", default="val", help="split to evaluate")
    parser.add_argument("--record", default=None,
                        help="record file to append to (default: record_mAP.txt next to the weights)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write all metrics to this JSON file")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=8, help="images per batch (same size)")
    add_inference_flags(parser)
    return parse_with_config(parser, argv)


def load_val_set(args: argparse.Namespace, num_classes: int):
    dataset = build_dataset(args.dataset, args.data_path, args.split,
                            SegmentationPresetEval(args.eval_size, args.eval_resize_masks))
    if dataset.num_classes != num_classes:
        raise ValueError(f"{args.weights}: {num_classes} classes, but the dataset at {args.data_path} has "
                         f"{dataset.num_classes}; evaluate on the data the model was trained for")
    return dataset


def header(args: argparse.Namespace, name: str, num_images: int) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (f"[{now}] weights: {args.weights} | model: {name} | dataset: {args.dataset} ({args.data_path}) | "
            f"split: {args.split} | images: {num_images}")


def comparison(results: Dict[str, ConfusionMatrix], class_names: List[str]) -> str:
    """Per-class IoU and the summary metrics, one column per inference mode."""
    metrics = [cm.metrics() for cm in results.values()]
    width = max(len(n) for n in class_names + ["mean IoU", "pixel acc"])
    cols = [max(len(label), 6) for label in results]

    def row(title: str, values: List[float]) -> str:
        cells = ("nan" if v != v else f"{v * 100:.1f}" for v in values)
        return f"{title:<{width}}  " + "  ".join(f"{cell:>{c}}" for cell, c in zip(cells, cols))

    lines = [f"{'':<{width}}  " + "  ".join(f"{label:>{c}}" for label, c in zip(results, cols))]
    lines += [row(name, [m["iou"][i] for m in metrics]) for i, name in enumerate(class_names)]
    for key, title in (("mean_iou", "mean IoU"), ("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"),
                       ("fw_iou", "fw IoU")):
        lines.append(row(title, [m[key] for m in metrics]))
    return "\n".join(lines)


def record_path(args: argparse.Namespace) -> Path:
    return Path(args.record) if args.record else Path(args.weights).resolve().parent / "record_mAP.txt"


def main(args: argparse.Namespace) -> int:
    # The outputs are checked first: finding them unwritable after the evaluation would waste it.
    check_writable(record_path(args), "--record" if args.record else "--record (default: next to --weights)")
    if args.json:
        check_writable(Path(args.json), "--json")
    info = init_distributed_mode(args.device)
    runtime = resolve_runtime(args, device=info.device)
    loaded, model = load_inference_model(args, runtime)
    dataset = load_val_set(args, loaded.num_classes)
    class_names = list(loaded.class_names or dataset.class_names)
    sampler = EvalBatchSampler(dataset.image_sizes(), args.batch_size, info.rank, info.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate_fn,
                        pin_memory=runtime.device.type == "cuda")
    results = {"single-scale": evaluate(model, loader, runtime.device, loaded.num_classes, class_names,
                                        runtime.amp_dtype, runtime.channels_last, whole_image, desc="single-scale")}
    tta = inferer_from_args(args)
    if tta is not None:
        results[tta.name] = evaluate(model, loader, runtime.device, loaded.num_classes, class_names,
                                     runtime.amp_dtype, runtime.channels_last, tta, desc=tta.name)
    if info.is_main:
        report(args, loaded.name, len(dataset), results, class_names)
    cleanup()
    return 0


def report(args: argparse.Namespace, name: str, num_images: int, results: Dict[str, ConfusionMatrix],
           class_names: List[str]) -> None:
    first = next(iter(results.values()))
    text = header(args, name, num_images) + "\n" + str(first) + "\n"
    if len(results) > 1:
        text += comparison(results, class_names) + "\n"
    print(text)
    record = record_path(args)
    append_text(record, text + "\n")
    print(f"appended to {record}", file=sys.stderr)
    if args.json:
        data = {"weights": args.weights, "model": name, "split": args.split, "images": num_images,
                **{label: cm.metrics() for label, cm in results.items()}}
        atomic_write(Path(args.json), lambda f: f.write(json.dumps(nan_to_none(data), indent=2).encode()))


if __name__ == "__main__":
    run_main(main, parse_args())
