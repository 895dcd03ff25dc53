"""The flags of train.py and train_multi_GPU.py, defined once so that the two scripts cannot drift."""
import argparse
from typing import Optional

from core.cli import (ArgumentParser, HelpFormatter, UsageError, add_config_flags, non_negative_float,
                      non_negative_int, positive_float, positive_int, seed)
from core.runtime import add_runtime_flags
from data_utils import DATASETS
from src import add_model_flags
# The reference recipe: lr 0.02 for a global batch of 32 (4 images x 8 GPUs); scaled linearly otherwise.
REFERENCE_LR, REFERENCE_BATCH = 0.02, 32


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Dataset flags shared with validation.py."""
    parser.add_argument("--data-path", default="data/VOC",
                        help="folder that contains VOCdevkit (voc, voc-aug), or the folder dataset's root")
    parser.add_argument("--dataset", default="voc", choices=tuple(DATASETS),
                        help="; ".join(f"{name}: {spec.description}" for name, spec in DATASETS.items()))
    parser.add_argument("--eval-size", type=positive_int, default=None,
                        help="resize validation images to this short side (default: original size); metrics "
                             "are still computed at the original label resolution")
    parser.add_argument("--eval-resize-masks", action=argparse.BooleanOptionalAction, default=False,
                        help="with --eval-size, also resize the masks (nearest), as the older reference "
                             "evaluation at short side 520 did")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=4, help="data loading workers per process")


def get_args_parser(description: str, multi_gpu: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_data_flags(parser)
    add_model_flags(parser, training=True)
    add_runtime_flags(parser)
    p = parser.add_argument
    p("--aux", action=argparse.BooleanOptionalAction, default=None,
      help="auxiliary head on layer3 (default: on for the ResNet FCNs; the VGG FCNs have none)")
    p("--aux-weight", type=non_negative_float, default=0.5, help="weight of the auxiliary loss")
    p("--class-weights", default="none", choices=("none", "inverse", "median"),
      help="per-class loss weights computed from the training set's label histogram")
    p("--epochs", type=positive_int, default=30, help="number of epochs")
    p("-b", "--batch-size", type=positive_int, default=4, help="images per process and step")
    p("--lr", type=positive_float, default=None,
      help=f"initial learning rate (default: {REFERENCE_LR} x global batch / {REFERENCE_BATCH}, the reference "
           f"recipe scaled linearly); use about 1e-4 to fine-tune from COCO-VOC weights")
    p("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    p("--wd", "--weight-decay", dest="weight_decay", type=non_negative_float, default=1e-4, help="weight decay")
    p("--warmup-epochs", type=non_negative_int, default=1, help="epochs of linear learning-rate warm-up (0: none)")
    p("--clip-grad-norm", type=positive_float, default=None, help="clip the gradient norm to this value")
    p("--base-size", type=positive_int, default=520, help="training short side before random scaling")
    p("--crop-size", type=positive_int, default=480, help="training crop size")
    p("--scale-range", type=positive_float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
      help="random scale range of the training short side, relative to --base-size")
    p("--deterministic", action=argparse.BooleanOptionalAction, default=False,
      help="deterministic algorithms, for bit-exact reruns (slower on GPU)")
    if multi_gpu:
        p("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
          help="synchronise BatchNorm statistics across processes")
    p("--pretrained-backbone", default="auto", metavar="PATH|auto|none",
      help="ImageNet weights for the backbone: a local torchvision .pth file, auto (torchvision's cache or "
           "download), or none")
    p("--resume", default=None, metavar="PATH|auto",
      help="resume a run from a checkpoint; auto = last.pth in --output-dir (a new run if the folder holds no checkpoint; "
           "refused if it holds best.pth but no last.pth)")
    p("--overwrite", action="store_true",
      help="start a new run in an --output-dir that already holds one (its checkpoints get replaced)")
    p("--stop-after-epochs", type=positive_int, default=None,
      help="exit (resumable, with --resume auto) after this many epochs of this invocation: for job time limits")
    p("--output-dir", default=None, help="run directory (default: runs/<model>_<dataset>)")
    p("--seed", type=seed, default=0, help="random seed")
    p("--print-freq", type=positive_int, default=10, help="iterations between loss prints (and host syncs)")
    p("--eval-every", type=non_negative_int, default=1, help="evaluate every N epochs (0: only at the end)")
    p("--eval-batch-size", type=positive_int, default=8,
      help="validation images per batch (images of equal size are batched, never padded)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Rejects combinations of flags that cannot work, before any data or model is loaded."""
    lo, hi = args.scale_range
    if lo > hi:
        raise UsageError(f"--scale-range {lo} {hi}: MIN must not exceed MAX")
    if args.crop_size > args.base_size:
        raise UsageError(f"--crop-size {args.crop_size} is larger than --base-size {args.base_size}: most crops "
                         f"would be padding; lower --crop-size or raise --base-size")
    if args.eval_resize_masks and args.eval_size is None:
        raise UsageError("--eval-resize-masks needs --eval-size")
    if args.resume and args.weights:
        raise UsageError("--resume and --weights together: --resume restores the weights already; drop --weights")


def default_lr(batch_size: int, world_size: int) -> float:
    return REFERENCE_LR * batch_size * world_size / REFERENCE_BATCH


def resolve_output_dir(args: argparse.Namespace) -> Optional[str]:
    return args.output_dir or f"runs/{args.model}_{args.dataset}"
