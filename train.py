"""Train an FCN on one GPU or on the CPU.

    # one GPU (or the CPU when there is none), Pascal VOC 2012 in data/VOC/VOCdevkit
    python train.py --data-path data/VOC --model fcn_resnet50 --pretrained-backbone resnet50-0676ba61.pth

    # fine-tune the COCO-VOC checkpoint at the low rate that keeps its accuracy
    python train.py --data-path data/VOC --weights fcn_resnet50_coco-1167a1af.pth --lr 1e-4 --epochs 10

    # continue an interrupted run
    python train.py --data-path data/VOC --output-dir runs/fcn_resnet50_voc --resume auto

    # also log to TensorBoard (pip install tensorboard): tensorboard --logdir runs/
    python train.py --data-path data/VOC --pretrained-backbone resnet50-0676ba61.pth --tensorboard

For several GPUs or several nodes use train_multi_GPU.py (same flags). Every run writes config.yaml,
train.log, results.txt, metrics.jsonl, steps.jsonl, last.pth and best.pth into --output-dir, and the
pictures curves.png (with matplotlib) and vis/epoch_<E>.png.
"""
import argparse
from typing import Optional, Sequence

from core.cli import run_main
from train_utils.options import get_args_parser, parse_training_args
from train_utils.trainer import run_training


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse_training_args(get_args_parser(__doc__.splitlines()[0]), argv)


def main(args: argparse.Namespace) -> int:
    return run_training(args)


if __name__ == "__main__":
    run_main(main, parse_args())
