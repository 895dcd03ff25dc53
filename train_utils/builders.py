"""What a training run is built from: datasets, loaders, the model, its wrapping, the class weights."""
import argparse
import logging
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.platform import ignore_signals_in_worker
from core.runtime import Runtime, compile_model
from data_utils import SegmentationDataset, build_dataset, class_pixel_counts, collate_fn
from src import build_model, load_model_weights
from transforms import SegmentationPresetEval, SegmentationPresetTrain

from .distributed import DistInfo, all_reduce_sum
from .loss import class_weights_from_counts
from .options import augmentation
from .sampler import EvalBatchSampler, SeededDataset, TrainSampler


def build_datasets(args: argparse.Namespace) -> Tuple[SegmentationDataset, SegmentationDataset]:
    train_tf = SegmentationPresetTrain(args.base_size, args.crop_size, scale_range=tuple(args.scale_range),
                                       crop_width=args.crop_width, augment=augmentation(args))
    eval_tf = SegmentationPresetEval(args.eval_size, args.eval_resize_masks)
    train_set = build_dataset(args.dataset, args.data_path, "train", train_tf)
    val_set = build_dataset(args.dataset, args.data_path, "val", eval_tf)
    return train_set, val_set


def loader_kwargs(args: argparse.Namespace, runtime: Runtime) -> Dict[str, Any]:
    # A private generator for the workers' base seed: drawing it from the global generator would make the
    # dropout stream depend on when loaders are (re)created, and break exact resume.
    kwargs = {"num_workers": args.workers, "collate_fn": collate_fn, "pin_memory": runtime.pin_memory,
              "generator": torch.Generator().manual_seed(args.seed)}
    if args.workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_signals_in_worker)
    return kwargs


def build_loaders(args: argparse.Namespace, info: DistInfo, runtime: Runtime, train_set: SegmentationDataset,
                  val_set: SegmentationDataset) -> Tuple[DataLoader, DataLoader]:
    sampler = TrainSampler(len(train_set), args.batch_size, info.rank, info.world_size, args.seed)
    kwargs = loader_kwargs(args, runtime)
    train_loader = DataLoader(SeededDataset(train_set), batch_size=args.batch_size, sampler=sampler,
                              drop_last=True, **kwargs)
    val_sampler = EvalBatchSampler(val_set.image_sizes(), args.eval_batch_size, info.rank, info.world_size)
    val_loader = DataLoader(val_set, batch_sampler=val_sampler, **kwargs)
    return train_loader, val_loader


def build_model_for_training(args: argparse.Namespace, info: DistInfo, runtime: Runtime,
                             log: logging.Logger) -> nn.Module:
    model = build_model(args.model, args.num_classes, args.aux, args.pretrained_backbone)
    if args.weights:
        report = load_model_weights(model, args.weights)
        log.info(f"weights from {args.weights}: {report}")
    model.to(runtime.device, memory_format=runtime.memory_format)
    if getattr(args, "sync_bn", False) and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model: nn.Module, info: DistInfo, runtime: Runtime, log: logging.Logger) -> nn.Module:
    """DDP when there are several processes, then torch.compile when asked (falling back with a message)."""
    if info.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return compile_model(model, runtime, log.warning)


def compute_class_weights(args: argparse.Namespace, train_set: SegmentationDataset, info: DistInfo,
                          runtime: Runtime, log: logging.Logger) -> Optional[torch.Tensor]:
    """Loss weights from the training masks' pixel counts; each rank counts its share of the masks, on the
    device (gathered once, not per step)."""
    if args.class_weights == "none":
        return None
    shard = range(info.rank, len(train_set), info.world_size)
    counts = class_pixel_counts(train_set, shard, args.workers, progress=info.is_main)
    counts = all_reduce_sum(torch.from_numpy(counts).to(runtime.device)).cpu().numpy()
    weights = class_weights_from_counts(counts[:args.num_classes], args.class_weights)
    log.info(f"class weights ({args.class_weights}): {[round(w, 3) for w in weights.tolist()]}")
    return weights.to(runtime.device)
