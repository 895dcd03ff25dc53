"""Loading a checkpoint for inference, the same way in validation.py, predict.py and tools/benchmark.py."""
import argparse
from typing import Tuple

from torch import nn

from core.runtime import Runtime, compile_model
from src import CheckpointModel, model_from_checkpoint
from src.fuse import prepare_for_inference


def load_inference_model(args: argparse.Namespace, runtime: Runtime) -> Tuple[CheckpointModel, nn.Module]:
    """The checkpoint of --weights rebuilt (--model/--num-classes for raw state dicts), prepared for inference
    the same way in validation.py and predict.py: eval mode, no aux head, BN folded with --fold-bn, on the
    runtime's device and memory format, compiled with --compile."""
    loaded = model_from_checkpoint(args.weights, args.model, args.num_classes)
    return loaded, prepare_inference_model(loaded.model, runtime, args.fold_bn)


def prepare_inference_model(model: nn.Module, runtime: Runtime, fold_bn: bool = False) -> nn.Module:
    """What load_inference_model does to the rebuilt model (and tools/benchmark.py to its own): eval mode, no
    aux head, BN folded if `fold_bn`, on the runtime's device and memory format, compiled if it says so."""
    model = prepare_for_inference(model, runtime.device, runtime.channels_last, fold=fold_bn)
    return compile_model(model, runtime)

