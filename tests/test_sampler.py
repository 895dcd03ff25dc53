"""Samplers (train_utils.sampler): data order and augmentation as a function of (seed, epoch, image), and
evaluation shards that count every image once."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from train_utils import EvalBatchSampler, SeededDataset, TrainSampler


def test_train_sampler_shards_are_disjoint_and_deterministic():
    shards = [list(TrainSampler(23, 2, rank, 3, seed=5)) for rank in range(3)]
    indices = [i for shard in shards for i, _ in shard]
    assert len(indices) == len(set(indices)) == 3 * 2 * 3  # 3 full batches of 2 per rank, rest dropped
    assert shards[0] == list(TrainSampler(23, 2, 0, 3, seed=5))
    other = TrainSampler(23, 2, 0, 3, seed=5)
    other.set_epoch(1)
    assert [i for i, _ in other] != [i for i, _ in shards[0]]


def test_train_sampler_skip_resumes_the_same_order():
    sampler = TrainSampler(20, 4, seed=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, skip_batches=2)
    assert list(sampler) == full[8:] and len(sampler) == len(full) - 8


def test_train_sampler_too_small():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainSampler(3, 2, 0, 2)


class RandomItems(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.rand(3)


def test_seeded_dataset_is_a_function_of_the_seed_and_keeps_global_rng():
    ds = SeededDataset(RandomItems())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(4, 123)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # move the global generator: the item must not change
    assert torch.equal(ds[(4, 123)], a) and not torch.equal(ds[(4, 124)], a)


def test_seeded_items_do_not_depend_on_workers():
    sampler = TrainSampler(10, 2, seed=3)
    loaders = [DataLoader(SeededDataset(RandomItems()), batch_size=2, sampler=sampler, num_workers=w)
               for w in (0, 2)]
    a, b = [torch.cat(list(loader)) for loader in loaders]
    assert torch.equal(a, b)


def test_eval_batch_sampler_counts_every_image_once():
    sizes = [(10, 20), (20, 10), (10, 20), (5, 5), (10, 20), (20, 10), (7, 7)]
    seen = []
    for rank in range(3):
        for batch in EvalBatchSampler(sizes, 2, rank, 3):
            assert len(batch) <= 2 and len({sizes[i] for i in batch}) == 1
            seen += batch
    assert sorted(seen) == list(range(len(sizes)))
