"""Our side of each comparison: the library's own code paths, called (never copied), with the runtime
policy of the CLIs (core.runtime). A change to any of these functions changes what the benchmark times."""
import argparse
import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

import predict
from core.palette import VOC_PALETTE
from core.runtime import Runtime, compile_model
from data_utils import SegmentationDataset, collate_fn
from inference import FolderResult, Prediction, photo_loader, predict_folder, predict_images, prepare_inference_model
from train_utils.builders import loader_kwargs
from train_utils.lr import create_lr_scheduler, create_optimizer
from train_utils.sampler import EvalBatchSampler, SeededDataset, TrainSampler
from train_utils.train_eval import TrainOptions, evaluate, train_batch

from .baselines import LR, num_classes_of, pinned


class OurTrain:
    """One step of train.py: the model on the device in the runtime's memory format (builders), torch.compile
    with --compile (compile_model), create_optimizer (fused SGD on CUDA), the poly schedule, and per step
    train_eval.train_batch (check_target, the uint8 batch normalised on the device, train_step with autocast
    and a GradScaler for fp16, scheduler step), the loss summed on the device as train_one_epoch does."""

    def __init__(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, runtime: Runtime,
                 total_steps: int) -> None:
        self.device = runtime.device
        model = model.to(runtime.device, memory_format=runtime.memory_format).train()
        self.optimizer = create_optimizer(model, LR, 0.9, 1e-4, fused=runtime.fused_optimizer)
        # The baseline's schedule (poly over the timed run, no warm-up), so that the final losses compare.
        self.scheduler = create_lr_scheduler(self.optimizer, num_step=total_steps, epochs=1, warmup=False)
        self.opts = TrainOptions(num_classes_of(model), runtime, scaler=runtime.grad_scaler())
        self.model = compile_model(model, runtime)
        self.images, self.masks = pinned(images, runtime.device), pinned(masks, runtime.device)
        self.loss_sum = torch.zeros((), device=runtime.device)
        self.loss = torch.zeros(())

    def __call__(self) -> None:
        self.loss = train_batch(self.model, self.optimizer, self.images, self.masks, self.scheduler, self.opts)
        self.loss_sum += self.loss

    def report(self) -> dict:
        return {"final_loss": float(self.loss)}


class OurEval:
    """validation.py's path: prepare_inference_model (eval, aux head dropped, BN not folded, the runtime's
    device and memory format, compiled with --compile), equal-size images batched by EvalBatchSampler, uint8
    pinned batches, train_eval.evaluate (normalised on the device, autocast, the device ConfusionMatrix)."""

    def __init__(self, model: nn.Module, images: List[torch.Tensor], masks: List[torch.Tensor], runtime: Runtime,
                 batch_size: int) -> None:
        self.model = prepare_inference_model(model, runtime)
        self.runtime = runtime
        self.num_classes = num_classes_of(model)
        sampler = EvalBatchSampler([tuple(i.shape[-2:]) for i in images], batch_size)
        batches = [collate_fn([(images[i], masks[i]) for i in idx]) for idx in sampler]
        self.batches = [(pinned(x, runtime.device), pinned(y, runtime.device)) for x, y in batches]
        self.cm = None

    def __call__(self) -> None:
        self.cm = evaluate(self.model, self.batches, self.runtime, self.num_classes, desc="ours")

    def matrix(self) -> torch.Tensor:
        return self.cm.matrix.cpu()


class OurInfer:
    """predict.py's path for one photo: prepare_inference_model, then prediction.predict_images (the uint8
    photo normalised on the device, autocast) and the argmax on the device."""

    def __init__(self, model: nn.Module, image: torch.Tensor, runtime: Runtime) -> None:
        self.model = prepare_inference_model(model, runtime)
        self.runtime, self.image = runtime, image[None]
        self.labels: Optional[torch.Tensor] = None

    def __call__(self) -> None:
        self.labels = predict_images(self.model, self.image, self.runtime).argmax(1)


def training_loader(dataset: Dataset, workers: int, batch_size: int, batches: int, seed: int,
                    runtime: Runtime) -> DataLoader:
    """train.py's training DataLoader (SeededDataset, TrainSampler, collate_fn, builders.loader_kwargs) over
    `dataset` repeated until one epoch holds `batches` batches: a short epoch would idle the workers at every
    epoch boundary."""
    repeats = math.ceil(batches * batch_size / len(dataset))
    dataset = ConcatDataset([dataset] * repeats)
    sampler = TrainSampler(len(dataset), batch_size, seed=seed)
    kwargs = loader_kwargs(argparse.Namespace(workers=workers, seed=seed), runtime)
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)


def decoded_with(dataset: SegmentationDataset, decoder: str) -> SegmentationDataset:
    """`dataset` reading its files with `decoder` ("torchvision" or "pil", see data_utils.io.read_image)."""
    dataset.decoder = decoder
    return dataset


def mask_writer(outputs: Sequence[Path]) -> Callable[[Prediction], None]:
    """predict.py's save_outputs for masks only (atomic palette PNGs), the writer of both prediction variants."""
    args = argparse.Namespace(overlay=False, probs=False)
    return lambda p: predict.save_outputs(p, list(outputs), args, [], VOC_PALETTE)


def our_folder(model: nn.Module, paths: Sequence[Path], runtime: Runtime, write: Callable[[Prediction], None],
               batch_size: int, workers: int) -> FolderResult:
    """predict.py --image FOLDER: photo_loader (decoding in workers, equal sizes batched) and predict_folder
    (the model fed while writer threads save the masks)."""
    loader = photo_loader(paths, batch_size, workers, pin_memory=runtime.pin_memory)
    return predict_folder(model, loader, runtime, write, progress=False)
