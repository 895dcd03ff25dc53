"""The engine: loss, metrics, LR schedule, the train/eval loop (1 or N processes), recorders, run state."""
from core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

from .checkpoint import RunState, Training, get_rng_state, set_rng_state
from .distributed import (DistInfo, all_reduce_sum, barrier, get_rank, get_world_size, init_distributed_mode,
                          is_dist_avail_and_initialized, is_main_process)
from .loss import check_target, class_weights_from_counts, criterion
from .lr import WarmupPoly, create_lr_scheduler, create_optimizer, get_params_groups
from .metrics import ConfusionMatrix
from .recorders import EpochRecord, Recorder, StepRecord
from .sampler import EvalBatchSampler, SeededDataset, TrainSampler
from .train_eval import (Evaluation, NonFiniteLossError, TrainOptions, evaluate, normalize, run_evaluation,
                         train_one_epoch, train_step)

__all__ = [
    "ConfusionMatrix", "DistInfo", "EpochRecord", "EvalBatchSampler", "Evaluation", "IGNORE_INDEX",
    "IMAGENET_MEAN", "IMAGENET_STD", "NonFiniteLossError", "Recorder", "RunState", "SeededDataset", "StepRecord", "TrainOptions",
    "TrainSampler", "Training", "WarmupPoly", "all_reduce_sum", "barrier", "check_target",
    "class_weights_from_counts", "create_lr_scheduler", "create_optimizer", "criterion", "evaluate",
    "get_params_groups", "get_rank", "get_rng_state", "get_world_size", "init_distributed_mode",
    "is_dist_avail_and_initialized", "is_main_process", "normalize", "run_evaluation", "set_rng_state",
    "train_one_epoch", "train_step",
]
