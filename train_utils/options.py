"""The flags of train.py and train_multi_GPU.py, defined once so that the two scripts cannot drift."""
import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.cli import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    add_config_flags,
    given_on_command_line,
    non_negative_float,
    non_negative_int,
    parse_with_config,
    positive_float,
    positive_int,
    seed,
)
from core.platform import usable_cpu_count
from core.rendezvous import add_rendezvous_flag
from core.runtime import Runtime, add_runtime_flags
from data_utils import DATASETS, add_max_image_pixels_flag
from recording.run_dir import run_files
from src import add_model_flags, get_spec
from transforms import Augmentation

from .loss import LOSSES, LossConfig
from .lr import OPTIMIZERS

# The reference recipe: lr 0.02 for a global batch of 32 (4 images x 8 GPUs); scaled linearly otherwise.
REFERENCE_LR, REFERENCE_BATCH = 0.02, 32
# AdamW's step size does not grow with the batch the way SGD's does: one rate, the usual one for fine-tuning.
ADAMW_LR = 1e-4
WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 1e-2}


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Dataset flags shared with validation.py."""
    parser.add_argument("--data-path", default="data/VOC",
                        help="dataset root: the folder holding VOCdevkit (voc, voc-aug), train2017/ and "
                             "annotations/ (coco), leftImg8bit/ and gtFine/ (cityscapes), ADEChallengeData2016/ "
                             "(ade20k), or the folder dataset's splits")
    parser.add_argument("--dataset", default="voc", choices=tuple(DATASETS),
                        help="; ".join(f"{name}: {spec.description}" for name, spec in DATASETS.items()))
    parser.add_argument("--eval-size", type=positive_int, default=None,
                        help="resize validation images to this short side (default: original size); metrics "
                             "are still computed at the original label resolution")
    parser.add_argument("--eval-resize-masks", action=argparse.BooleanOptionalAction, default=False,
                        help="with --eval-size, also resize the masks (nearest), as the older reference "
                             "evaluation at short side 520 did")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=min(4, usable_cpu_count()),
                        help="data loading workers per process (default: 4, or the CPUs this process may use "
                             "when fewer)")
    add_max_image_pixels_flag(parser)


def get_args_parser(description: str, multi_gpu: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_data_flags(parser)
    add_model_flags(parser, training=True)
    add_runtime_flags(parser)
    add_rendezvous_flag(parser)
    p = parser.add_argument
    p("--aux", action=argparse.BooleanOptionalAction, default=None,
      help="auxiliary head (default: on for the models that have one: the ResNet FCNs, DeepLabV3 and PSPNet on "
           "layer3, DeepLabV3-MobileNetV3 on its C2 stage; the VGG FCNs, LR-ASPP and U-Net have none)")
    p("--aux-weight", type=non_negative_float, default=0.5, help="weight of the auxiliary loss")
    p("--class-weights", default="none", choices=("none", "inverse", "median"),
      help="per-class loss weights computed from the training set's label histogram")
    p("--epochs", type=positive_int, default=30, help="number of epochs")
    p("-b", "--batch-size", type=positive_int, default=4, help="images per process and step")
    p("--lr", type=positive_float, default=None,
      help=f"initial learning rate (default for sgd: {REFERENCE_LR} x global batch / {REFERENCE_BATCH}, the "
           f"reference recipe scaled linearly; for adamw: {ADAMW_LR:g}); use about 1e-4 to fine-tune from "
           f"COCO-VOC weights")
    p("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    p("--wd", "--weight-decay", dest="weight_decay", type=non_negative_float, default=None,
      help="weight decay (default: " + ", ".join(f"{v:g} for {k}" for k, v in WEIGHT_DECAY.items()) + ")")
    p("--warmup-epochs", type=non_negative_int, default=1, help="epochs of linear learning-rate warm-up (0: none)")
    p("--clip-grad-norm", type=positive_float, default=None, help="clip the gradient norm to this value")
    p("--base-size", type=positive_int, default=520, help="training short side before random scaling")
    p("--crop-size", type=positive_int, default=480, help="training crop size (its height, with --crop-width)")
    p("--crop-width", type=positive_int, default=None,
      help="width of a non-square training crop (default: --crop-size), e.g. 1024 for Cityscapes' 512x1024")
    p("--scale-range", type=positive_float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
      help="random scale range of the training short side, relative to --base-size")
    p("--deterministic", action=argparse.BooleanOptionalAction, default=False,
      help="deterministic algorithms, for bit-exact reruns (slower on GPU)")
    add_recipe_flags(parser)
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
    p("--tensorboard", action=argparse.BooleanOptionalAction, default=False,
      help="also log to <output-dir>/tensorboard/ (scalars, confusion matrix, validation images); needs "
           "pip install tensorboard")
    p("--vis-every", type=non_negative_int, default=None, metavar="N",
      help="save <output-dir>/vis/epoch_<E>.png (image | ground truth | prediction of a few fixed validation "
           "images) every N epochs and after the last (default: at every evaluation; 0: never)")
    return parser


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """Optimizer, loss, backbone freezing, early stopping and augmentation beyond the reference recipe."""
    g = parser.add_argument_group("recipe (the defaults are the reference recipe)")
    g.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS,
                   help="sgd: SGD with momentum (the reference); adamw: torch's AdamW (fused on CUDA); both keep "
                        "the parameter groups and the warm-up + poly schedule")
    g.add_argument("--betas", type=non_negative_float, nargs=2, default=[0.9, 0.999], metavar=("B1", "B2"),
                   help="AdamW's moment decay rates")
    g.add_argument("--loss", default="ce", choices=tuple(LOSSES),
                   help="ce: cross-entropy; focal: focal loss; dice: soft Dice over the batch; ce+dice: their sum "
                        "(all ignore 255; the aux head gets the same loss times --aux-weight)")
    g.add_argument("--dice-weight", type=non_negative_float, default=None,
                   help="weight of the Dice term with --loss ce+dice (default: 1)")
    g.add_argument("--focal-gamma", type=non_negative_float, default=None,
                   help="focusing exponent with --loss focal (default: 2; 0 is cross-entropy)")
    g.add_argument("--freeze-backbone", type=non_negative_int, default=0, metavar="N",
                   help="keep the pretrained backbone fixed (no gradients, BatchNorm statistics kept) for the first "
                        "N epochs while the heads learn, then train it at the scheduled lr")
    g.add_argument("--early-stop", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop when mIoU has not improved for PATIENCE evaluations in a row (best.pth keeps the "
                        "best epoch)")
    g.add_argument("--early-stop-min-delta", type=non_negative_float, default=None, metavar="D",
                   help="with --early-stop, an improvement must exceed D, in mIoU as a fraction as in "
                        "metrics.jsonl (0.005 = half a point; default: 0)")
    g.add_argument("--color-jitter", type=non_negative_float, nargs=4, default=[0.0, 0.0, 0.0, 0.0],
                   metavar=("B", "C", "S", "H"),
                   help="random brightness, contrast, saturation and hue (e.g. 0.4 0.4 0.4 0.1; 0 0 0 0: off)")
    g.add_argument("--rotate", type=non_negative_float, default=0.0, metavar="DEG",
                   help="random rotation in [-DEG, DEG] degrees (mask nearest, corners ignored as 255; 0: off)")
    g.add_argument("--vflip", type=non_negative_float, default=0.0, metavar="P", help="vertical flip probability")
    g.add_argument("--gaussian-blur", type=non_negative_float, default=0.0, metavar="P",
                   help="probability of a Gaussian blur (sigma in [0.1, 2])")


def parse_training_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """train.py's and train_multi_GPU.py's flags, --config applied. A resume takes its weights from the
    checkpoint, so a --weights that the config file set (configs/voc.yaml sets one) gives way to --resume with
    a note; one typed on the command line stays, and check_args refuses it."""
    args = parse_with_config(parser, argv)
    if not (args.resume and args.weights) or "weights" in given_on_command_line(parser, argv):
        return args
    out = Path(default_output_dir(args))
    if args.resume == "auto" and not run_files(out):
        args.resume = None  # nothing to continue: --resume auto starts a new run, from the config's weights
        return args
    if os.environ.get("RANK", "0") == "0":  # one note per run, not one per process
        print(f"note: --resume restores the weights from the checkpoint; the config's weights: {args.weights} "
              f"is not used", file=sys.stderr)
    args.weights = None
    return args


def default_output_dir(args: argparse.Namespace) -> str:
    """--output-dir, by default runs/<model>_<dataset>."""
    return args.output_dir or f"runs/{args.model}_{args.dataset}"


def augmentation(args: argparse.Namespace) -> Augmentation:
    return Augmentation(tuple(args.color_jitter), args.rotate, args.vflip, args.gaussian_blur)


def loss_config(args: argparse.Namespace) -> LossConfig:
    given = {"dice_weight": args.dice_weight, "focal_gamma": args.focal_gamma}
    return LossConfig(args.loss, **{k: v for k, v in given.items() if v is not None})


def check_recipe(args: argparse.Namespace) -> None:
    """Rejects recipe flags that would do nothing or cannot work."""
    if args.dice_weight is not None and args.loss != "ce+dice":
        raise UsageError(f"--dice-weight weights the Dice term of --loss ce+dice, but --loss is {args.loss}")
    if args.focal_gamma is not None and args.loss != "focal":
        raise UsageError(f"--focal-gamma is the exponent of --loss focal, but --loss is {args.loss}")
    if args.early_stop_min_delta is not None and args.early_stop is None:
        raise UsageError("--early-stop-min-delta needs --early-stop PATIENCE")
    try:
        augmentation(args).check()
    except ValueError as e:
        raise UsageError(str(e)) from None
    spec = get_spec(args.model)
    if args.aux and spec.aux_site is None:
        raise UsageError(f"--aux: {args.model} has no auxiliary head; drop --aux (or pass --no-aux over a config)")
    if args.freeze_backbone and spec.backbone is None:
        raise UsageError(f"--freeze-backbone {args.freeze_backbone}: {args.model} trains from scratch, it has no "
                         f"pretrained backbone to freeze; drop --freeze-backbone")
    # With one image per batch, BatchNorm on a 1x1 map (a small crop at the model's output stride, or a
    # global-pooling branch) sees a single value per channel and cannot normalise it.
    problem = spec.batch_of_one_problem(args.crop_size) if args.batch_size == 1 else None
    if problem:
        raise UsageError(f"-b 1 with --crop-size {args.crop_size} cannot train {args.model}: {problem}; or use -b 2")


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
    check_recipe(args)


def default_lr(batch_size: int, world_size: int, optimizer: str = "sgd") -> float:
    if optimizer == "adamw":
        return ADAMW_LR
    return REFERENCE_LR * batch_size * world_size / REFERENCE_BATCH


def resolve_args(args: argparse.Namespace, world_size: int, runtime: Runtime,
                 class_names: Sequence[str]) -> argparse.Namespace:
    """The arguments the run uses: a copy of the parsed ones with every default that depends on other flags,
    the machine or the data filled in (device, memory format, output directory, lr, weight decay, loss
    parameters, number of classes). Built once, then only read: config.yaml and the checkpoints record it.

    Args:
        world_size: processes of the run (the default lr scales with the global batch).
        runtime: the resolved runtime flags.
        class_names: the training set's classes (--num-classes must agree with them).
    """
    if args.num_classes is not None and args.num_classes != len(class_names):
        raise UsageError(f"--num-classes {args.num_classes} but the dataset at {args.data_path} declares "
                         f"{len(class_names)} classes; drop --num-classes or fix the dataset's class list")
    resolved = argparse.Namespace(**vars(args))
    resolved.device, resolved.channels_last = str(runtime.device), runtime.channels_last
    resolved.output_dir = default_output_dir(args)
    resolved.num_classes = len(class_names)
    if args.lr is None:
        resolved.lr = ADAMW_LR if args.optimizer == "adamw" else REFERENCE_LR * args.batch_size * world_size / \
            REFERENCE_BATCH
    if args.weight_decay is None:
        resolved.weight_decay = WEIGHT_DECAY[args.optimizer]
    if args.loss == "ce+dice" and args.dice_weight is None:
        resolved.dice_weight = LossConfig().dice_weight
    if args.loss == "focal" and args.focal_gamma is None:
        resolved.focal_gamma = LossConfig().focal_gamma
    if args.early_stop is not None and args.early_stop_min_delta is None:
        resolved.early_stop_min_delta = 0.0
    return resolved
