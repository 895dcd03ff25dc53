"""Evaluate a checkpoint on a validation split and append the result to record_mAP.txt.

    python validation.py --data-path data/VOC --weights runs/fcn_resnet50_voc/best.pth
    # torchvision's COCO-VOC file (a raw state dict: the architecture is read off its tensors)
    python validation.py --data-path data/VOC --weights fcn_resnet50_coco-1167a1af.pth
    # multi-scale + flip test-time augmentation, reported next to the single-scale numbers
    python validation.py --data-path data/VOC --weights best.pth --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip
    # several GPUs (identical numbers: every image is counted exactly once)
    torchrun --nproc_per_node=4 validation.py --data-path data/VOC --weights best.pth

    # pictures: masks, image | ground truth | prediction | errors tiles, confusion.png, per_class_iou.png,
    # and the 10 images with the lowest mean IoU
    python validation.py --data-path data/VOC --weights best.pth --save-dir val_pictures --worst 10

Metrics are computed at the original label resolution. The record (a header line, the confusion-matrix
summary and per-class IoU) is appended to --record, never overwritten; --json writes every metric and the
confusion matrix.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn
from torch.utils.data import DataLoader

from core.cli import ArgumentParser, HelpFormatter, add_config_flags, parse_with_config, positive_int, run_main
from core.outputs import check_distinct, check_output
from core.platform import append_text, atomic_write, check_writable, nan_to_none
from core.rendezvous import add_rendezvous_flag
from core.runtime import add_runtime_flags, resolve_runtime
from data_utils import build_dataset, collate_fn, own_class_file, set_max_image_pixels
from inference import (
    PixelAgreement,
    accuracy_lost,
    add_backend_flags,
    add_inference_flags,
    chain_hooks,
    check_backend_args,
    inferer_from_args,
    load_backend,
    load_inference_model,
    whole_image,
)
from recording.run_files import RECORD_FILE
from src import add_model_flags
from train_utils.distributed import all_gather_objects, cleanup, init_distributed_mode
from train_utils.metrics import ConfusionMatrix
from train_utils.options import add_data_flags
from train_utils.sampler import EvalBatchSampler
from train_utils.train_eval import run_evaluation
from transforms import SegmentationPresetEval
from visualization.val_pictures import (
    ValidationPictures,
    check_save_dir,
    keep_worst_tiles,
    prepare_save_dir,
    save_figures,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_data_flags(parser)
    add_model_flags(parser)
    add_runtime_flags(parser)
    add_rendezvous_flag(parser)
    parser.add_argument("--split", default="val", help="split to evaluate")
    parser.add_argument("--record", default=None,
                        help="record file to append to (default: record_mAP.txt next to the weights)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write all metrics to this JSON file")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=8, help="images per batch (same size)")
    parser.add_argument("--save-dir", default=None, metavar="DIR",
                        help="write masks/<name>.png (the mask predict.py writes with the same flags), "
                             "tiles/<name>.png (image | ground truth | prediction | errors), confusion.png and "
                             "per_class_iou.png (needs matplotlib)")
    parser.add_argument("--worst", type=positive_int, default=None, metavar="K",
                        help="list the K images with the lowest mean IoU (with --save-dir also worst/<rank>_<name>.png)")
    add_inference_flags(parser)
    add_backend_flags(parser)
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
    return Path(args.record) if args.record else Path(args.weights).resolve().parent / RECORD_FILE


def main(args: argparse.Namespace) -> int:
    set_max_image_pixels(args.max_image_pixels)
    # The outputs are checked first: finding them unwritable after the evaluation would waste it, and one
    # that is an input (--json X --weights X) or a file of another kind is refused before it is replaced.
    record_flag = "--record" if args.record else "--record (default: next to --weights)"
    inputs = [args.weights, args.config, own_class_file(args.data_path)]
    check_output(record_flag, record_path(args), "text", inputs)
    check_output("--json", args.json, "json", inputs)
    check_distinct([(record_flag, record_path(args)), ("--json", args.json)])
    check_writable(record_path(args), record_flag, appendable=True)
    if args.json:
        check_writable(Path(args.json), "--json")
    save_dir = Path(args.save_dir) if args.save_dir else None
    if save_dir is not None:  # before any work: a missing matplotlib or an unwritable folder is one line
        prepare_save_dir(save_dir, data=[args.data_path])
    info = init_distributed_mode(args.device, rendezvous_s=args.rendezvous_timeout)
    runtime = resolve_runtime(args, info.local_rank, device=info.device)
    check_backend_args(args, runtime)
    loaded, model = load_inference_model(args, runtime)
    backend = load_backend(args, loaded, model)
    dataset = load_val_set(args, loaded.num_classes)
    if save_dir is not None:
        check_save_dir(save_dir, dataset.pairs, [p[0].stem for p in dataset.pairs])
    class_names = list(loaded.class_names or dataset.class_names)
    sampler = EvalBatchSampler(dataset.image_sizes(), args.batch_size, info.rank, info.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate_fn,
                        pin_memory=runtime.pin_memory)
    # The pictures come from the last mode evaluated: the one predict.py runs with the same flags.
    pics = ValidationPictures(save_dir, [p[0].stem for p in dataset.pairs], sampler.batches, loaded.num_classes,
                              loaded.palette or dataset.palette, class_names, loaded.epoch) \
        if save_dir is not None or args.worst else None
    modes = evaluation_modes(args, model, backend)
    agreement = PixelAgreement() if getattr(backend, "int8", False) else None
    results = {}
    for i, (label, net, infer) in enumerate(modes):
        hooks = [pics if i == len(modes) - 1 else None, agreement.hook(i) if agreement and i < 2 else None]
        results[label] = run_evaluation(net, loader, runtime, loaded.num_classes, class_names, infer, desc=label,
                                        on_batch=chain_hooks(hooks)).confusion
    worst = pics.worst(args.worst or 0, gather=all_gather_objects) if pics is not None else []
    if info.is_main:
        report(args, loaded.name, len(dataset), results, class_names, worst,
               agreement.total(all_gather_objects) if agreement else None)
        if save_dir is not None:
            save_pictures(save_dir, results[modes[-1][0]], class_names, worst)
    cleanup()
    return 0


def evaluation_modes(args: argparse.Namespace, model: nn.Module, backend: nn.Module) -> List[Tuple[str, nn.Module, Any]]:
    """(label, model, inferer) of each column: single scale and the flags' TTA, of the --backend; an int8 model
    is scored next to the fp32 torch model (the first column), so the record says what quantisation cost."""
    tta = inferer_from_args(args)
    if getattr(backend, "int8", False):
        modes = [("fp32 torch", model, whole_image), (f"int8 {args.backend}", backend, whole_image)]
        return modes + ([(f"int8 {tta.name}", backend, tta)] if tta is not None else [])
    return [("single-scale", backend, whole_image)] + ([(tta.name, backend, tta)] if tta is not None else [])


def save_pictures(save_dir: Path, cm: ConfusionMatrix, class_names: List[str], worst: List[Tuple[str, float]]) -> None:
    save_figures(save_dir, cm, class_names)
    if worst:
        keep_worst_tiles(save_dir, worst)
    print(f"pictures in {save_dir}: masks/, tiles/, confusion.png, per_class_iou.png"
          f"{', worst/' if worst else ''}", file=sys.stderr)


def report(args: argparse.Namespace, name: str, num_images: int, results: Dict[str, ConfusionMatrix],
           class_names: List[str], worst: List[Tuple[str, float]], agreement: Optional[Tuple[int, int]] = None) -> None:
    first = next(iter(results.values()))
    text = header(args, name, num_images) + (f" | backend: {args.backend}" if args.backend != "torch" else "") + \
        "\n" + str(first) + "\n"
    if len(results) > 1:
        text += comparison(results, class_names) + "\n"
    if agreement is not None:
        text += accuracy_lost(results, agreement) + "\n"
    if worst:
        text += f"worst {len(worst)} images by mean IoU ({list(results)[-1]}):\n" + \
            "".join(f"  {iou * 100:5.1f}  {stem}\n" for stem, iou in worst)
    print(text)
    record = record_path(args)
    append_text(record, text + "\n")
    print(f"appended to {record}", file=sys.stderr)
    if args.json:
        # "confusion": rows ground truth, columns prediction, pixel counts (255 skipped)
        data = {"weights": args.weights, "model": name, "split": args.split, "images": num_images,
                **{label: {**cm.metrics(), "confusion": cm.matrix.tolist()} for label, cm in results.items()}}
        if agreement is not None:
            data["int8_pixel_agreement"] = agreement[0] / max(agreement[1], 1)
        if worst:
            data["worst"] = [{"image": stem, "mean_iou": iou} for stem, iou in worst]
        atomic_write(Path(args.json), lambda f: f.write(json.dumps(nan_to_none(data), indent=2).encode()))


if __name__ == "__main__":
    run_main(main, parse_args())
