"""The engine: losses, metrics, the LR schedule and optimizers, the train/eval loop (1 or N processes), the
trainer, checkpoints of the training state, backbone freezing, early stopping and the training flags.

    train_utils.loss         cross-entropy, focal, Dice (255 ignored), class weights
    train_utils.metrics      ConfusionMatrix: one matrix over the whole dataset
    train_utils.lr           SGD / AdamW, parameter groups, warm-up + poly
    train_utils.sampler      data order and augmentation as a function of (seed, epoch, image)
    train_utils.train_eval   train_one_epoch, evaluate
    train_utils.trainer      run_training: set-up, the epoch loop, checkpoints and records
    train_utils.checkpoint   what a training checkpoint saves and restores
    train_utils.distributed  process groups and collectives
    train_utils.builders     datasets, loaders, the model, class weights of a run
    train_utils.options      the flags of train.py and train_multi_GPU.py
    train_utils.freeze, train_utils.early_stop

Running a model lives in inference/, pictures in visualization/, the run directory and its records in
recording/; the modules that moved there are still importable from here for one release (train_utils._moved).
"""
from core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from recording.recorders import EpochRecord, Recorder, StepRecord

from . import _moved
from .checkpoint import RunState, Training, get_rng_state, set_rng_state
from .distributed import (
                          DistInfo,
                          all_reduce_sum,
                          barrier,
                          get_rank,
                          get_world_size,
                          init_distributed_mode,
                          is_dist_avail_and_initialized,
                          is_main_process,
)
from .loss import check_target, class_weights_from_counts, criterion
from .lr import WarmupPoly, create_lr_scheduler, create_optimizer, get_params_groups
from .metrics import ConfusionMatrix
from .sampler import EvalBatchSampler, SeededDataset, TrainSampler
from .train_eval import (
                          Evaluation,
                          NonFiniteLossError,
                          TrainOptions,
                          evaluate,
                          normalize,
                          run_evaluation,
                          train_one_epoch,
                          train_step,
)

_moved.install(__name__)

__all__ = [
    "ConfusionMatrix", "DistInfo", "EpochRecord", "EvalBatchSampler", "Evaluation", "IGNORE_INDEX",
    "IMAGENET_MEAN", "IMAGENET_STD", "NonFiniteLossError", "Recorder", "RunState", "SeededDataset", "StepRecord",
    "TrainOptions", "TrainSampler", "Training", "WarmupPoly", "all_reduce_sum", "barrier", "check_target",
    "class_weights_from_counts", "create_lr_scheduler", "create_optimizer", "criterion", "evaluate",
    "get_params_groups", "get_rank", "get_rng_state", "get_world_size", "init_distributed_mode",
    "is_dist_avail_and_initialized", "is_main_process", "normalize", "run_evaluation", "set_rng_state",
    "train_one_epoch", "train_step",
]
