"""Samplers that make data order and augmentation a pure function of (seed, epoch, index).

Training: every rank draws the same permutation for an epoch and takes its own shard; each sample comes with
its own augmentation seed, so the random crop and flip of an image do not depend on which worker loads it,
on the number of workers, or on where a resumed run restarted. That is what makes resume exact.

Evaluation: each rank takes a disjoint shard with no padding (every image counted exactly once, unlike
DistributedSampler, which repeats images to even out the shards) and batches images of equal size together,
so no padding changes the predictions near the borders.
"""
from collections import defaultdict
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed for each (run seed, epoch, dataset index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class TrainSampler(Sampler):
    """Shuffled shard of the dataset for one rank, yielding (index, augmentation seed) pairs.

    Args:
        num_samples: dataset length.
        batch_size: per-rank batch size; each rank gets the same number of full batches (the remainder
            of the permutation is dropped, as with drop_last).
        rank, world_size: this rank's shard.
        seed: run seed; call `set_epoch` before each epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.skip_batches = 0, 0
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_samples} training images are fewer than one global batch "
                             f"({batch_size} x {world_size} processes); lower --batch-size")

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Selects the epoch's permutation; `skip_batches` resumes after that many batches."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def _shard(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used][self.rank::self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        shard = self._shard()[self.skip_batches * self.batch_size:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in shard])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


class SeededDataset(Dataset):
    """Wraps a dataset so that item (index, seed) is loaded with torch's CPU generator seeded by `seed`.

    The caller's generator state is restored afterwards, so loading in the main process (no workers)
    leaves the training RNG (dropout) untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)


class EvalBatchSampler(Sampler):
    """This rank's disjoint shard (indices rank, rank + W, ...) in batches of equal-size images.

    Args:
        sizes: (height, width) of every image, e.g. `dataset.image_sizes()`.
        batch_size: at most this many images per batch.
        rank, world_size: this rank's shard; ranks may get different numbers of batches.
    """

    def __init__(self, sizes: Sequence[Tuple[int, int]], batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for i in range(rank, len(sizes), world_size):
            groups[tuple(sizes[i])].append(i)
        self.batches = [idx[k:k + batch_size] for _, idx in sorted(groups.items())
                        for k in range(0, len(idx), batch_size)]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
