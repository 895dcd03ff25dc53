"""Train an FCN with DistributedDataParallel on several GPUs or several nodes (launched by torchrun).

    # 8 GPUs on one node (the reference recipe: 4 images per GPU, lr 0.02)
    torchrun --nproc_per_node=8 train_multi_GPU.py --data-path data/VOC --sync-bn

    # 2 nodes x 8 GPUs; run on each node with its own --node_rank (0 and 1), MASTER = node 0's address
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 \\
        train_multi_GPU.py --data-path data/VOC --sync-bn

    # survive a lost worker: restart the group and resume from last.pth automatically
    torchrun --nproc_per_node=8 --max-restarts=3 train_multi_GPU.py --data-path data/VOC

Flags are those of train.py (plus --sync-bn); -b/--batch-size is per process, and the default --lr scales
with the global batch. Without torchrun this runs as a single process. On CPUs the backend is gloo.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from core.cli import run_main
from train_utils.options import get_args_parser, parse_training_args
from train_utils.trainer import run_training


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse_training_args(get_args_parser(__doc__.splitlines()[0], multi_gpu=True), argv)


def main(args: argparse.Namespace) -> int:
    if "WORLD_SIZE" not in os.environ and "SLURM_NTASKS" not in os.environ:
        print("note: not launched by torchrun, running as one process; for N GPUs use\n"
              "  torchrun --nproc_per_node=N train_multi_GPU.py ...", file=sys.stderr)
    return run_training(args)


if __name__ == "__main__":
    run_main(main, parse_args())
