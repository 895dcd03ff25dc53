"""Samplers, checkpoints and records, the training loop, and 1- vs 2-process evaluation."""
import argparse
import math
import random
import re

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.checkpoint import Checkpoint, save_checkpoint
from core.platform import append_jsonl, append_text, atomic_copy, atomic_write, nan_to_none
from src import build_model
from train_utils import (ConfusionMatrix, EvalBatchSampler, NonFiniteLossError, SeededDataset, TrainOptions,
                         TrainSampler, create_lr_scheduler, evaluate, get_rng_state, normalize, set_rng_state,
                         train_one_epoch)
from train_utils.distributed import choose_backend
from train_utils.freeze import BackboneFreeze


# ------------------------------------------------------------------------------------------------ samplers

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


# -------------------------------------------------------------------------------------- checkpoints, records

def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_write(path, lambda f: torch.save({"w": torch.ones(3)}, f))

    def crash(f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind


def test_append_text_and_jsonl(tmp_path):
    record = tmp_path / "sub" / "record.txt"
    append_text(record, "first\n")
    append_text(record, "second\n")
    assert record.read_text() == "first\nsecond\n"
    metrics = tmp_path / "metrics.jsonl"
    append_jsonl(metrics, {"epoch": 0, "iou": [0.5, math.nan]})
    append_jsonl(metrics, {"epoch": 1})
    import json

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert lines == [{"epoch": 0, "iou": [0.5, None]}, {"epoch": 1}]
    assert nan_to_none({"a": (math.nan, 1.0)}) == {"a": [None, 1.0]}


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = get_rng_state()
    path = tmp_path / "rng.pth"
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, training={"rng": state}), path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    set_rng_state(torch.load(path, weights_only=True)["training"]["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --------------------------------------------------------------------------------------------------- loops

class TinySegNet(nn.Module):
    """Two convolutions: enough to learn, fast on a CPU."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return {"out": self.body(x)}


class SizedImages(Dataset):
    """Deterministic uint8 images of a few sizes with masks containing the ignore label."""

    def __init__(self, n: int, num_classes: int = 3) -> None:
        gen = torch.Generator().manual_seed(0)
        shapes = [(12, 16), (16, 12), (9, 9)]
        self.items = []
        for i in range(n):
            h, w = shapes[i % 3]
            image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
            mask = torch.randint(0, num_classes, (h, w), dtype=torch.uint8, generator=gen)
            mask[0] = 255
            self.items.append((image, mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def image_sizes(self):
        return [tuple(img.shape[-2:]) for img, _ in self.items]


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def _eval_loader(dataset, rank=0, world=1, batch=2):
    return DataLoader(dataset, batch_sampler=EvalBatchSampler(dataset.image_sizes(), batch, rank, world),
                      collate_fn=_collate)


def test_evaluate_batched_equals_one_image_at_a_time():
    torch.manual_seed(0)
    model, dataset = TinySegNet(), SizedImages(11)
    batched = evaluate(model, _eval_loader(dataset, batch=4), torch.device("cpu"), 3)
    single = evaluate(model, _eval_loader(dataset, batch=1), torch.device("cpu"), 3)
    assert torch.equal(batched.matrix, single.matrix)
    assert batched.matrix.sum() == sum(int((m != 255).sum()) for _, m in dataset.items)


def _dist_eval_worker(rank: int, world: int, store_file: str, out_path: str, state: dict) -> None:
    import torch.distributed as dist

    # A file store: no port to pick, so no race with other processes for one.
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    model = TinySegNet()
    model.load_state_dict(state)
    cm = evaluate(model, _eval_loader(SizedImages(11), rank, world), torch.device("cpu"), 3)
    if rank == 0:
        torch.save(cm.matrix.clone(), out_path)
    dist.destroy_process_group()


def test_two_process_evaluation_equals_single_process(tmp_path):
    torch.manual_seed(0)
    model = TinySegNet()
    single = evaluate(model, _eval_loader(SizedImages(11)), torch.device("cpu"), 3).matrix
    out = tmp_path / "matrix.pth"
    mp.spawn(_dist_eval_worker, args=(2, str(tmp_path / "store"), str(out), model.state_dict()), nprocs=2)
    assert torch.equal(torch.load(out, weights_only=True), single)


def _train(model, dataset, epochs_range, opt_state=None, lr=0.1, **opts):
    sampler = TrainSampler(len(dataset), 3, seed=0)
    loader = DataLoader(SeededDataset(dataset), batch_size=3, sampler=sampler, drop_last=True, collate_fn=_collate)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = create_lr_scheduler(opt, len(loader), 4)
    if opt_state:
        opt.load_state_dict(opt_state["opt"])
        sched.load_state_dict(opt_state["sched"])
    losses = []
    for epoch in epochs_range:
        sampler.set_epoch(epoch)
        result = train_one_epoch(model, opt, loader, torch.device("cpu"), epoch, sched,
                                 TrainOptions(num_classes=3, print_freq=2, **opts))
        losses.append(result.loss)
    return losses, {"opt": opt.state_dict(), "sched": sched.state_dict()}


class SameSizeImages(SizedImages):
    def __init__(self, n):
        super().__init__(n)
        self.items = [(img[:, :9, :9].clone(), m[:9, :9].clone()) for img, m in self.items]


def test_train_one_epoch_learns_and_resumes_exactly():
    torch.manual_seed(0)
    dataset = SameSizeImages(12)
    straight = TinySegNet()
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    losses, _ = _train(straight, dataset, range(2))
    resumed = TinySegNet()
    resumed.load_state_dict(start)
    first, state = _train(resumed, dataset, range(1))
    second, _ = _train(resumed, dataset, range(1, 2), opt_state=state)
    assert first + second == losses
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_nan_loss_names_epoch_and_iteration():
    model = TinySegNet()
    with torch.no_grad():
        model.body[2].bias.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="epoch 0, iteration 0"):
        _train(model, SameSizeImages(6), range(1))


def test_stop_request_interrupts_at_print_interval():
    dataset = SameSizeImages(12)
    sampler = TrainSampler(len(dataset), 2, seed=0)
    loader = DataLoader(SeededDataset(dataset), batch_size=2, sampler=sampler, drop_last=True, collate_fn=_collate)
    model = TinySegNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = create_lr_scheduler(opt, len(loader), 1)
    result = train_one_epoch(model, opt, loader, torch.device("cpu"), 0, sched,
                             TrainOptions(num_classes=3, print_freq=2, should_stop=lambda: True))
    assert result.interrupted and result.steps == 2


def test_confusion_matrix_device_allocation_for_empty_rank():
    cm = ConfusionMatrix(3, device=torch.device("cpu"))
    cm.reduce_from_all_processes()
    assert cm.matrix.sum() == 0


def test_atomic_copy_survives_replacing_the_source(tmp_path):
    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, epoch=1), last)
    atomic_copy(last, best)
    save_checkpoint(Checkpoint({"w": torch.zeros(1)}, epoch=2), last)  # replaced, not modified: best keeps epoch 1
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


def test_evaluate_refuses_a_model_with_other_output_channels():
    """A 4-class model scored as 3 classes: its argmax 3 would land in another cell (or be dropped)."""
    with pytest.raises(ValueError, match="the model outputs 4 classes, but the evaluation is of 3"):
        evaluate(TinySegNet(num_classes=4), _eval_loader(SizedImages(3)), torch.device("cpu"), 3)


@pytest.mark.parametrize("field, value, needle", [
    ("next_epoch", "3", "'next_epoch' is '3', expected int >= 0"),
    ("next_step", -2, "'next_step' is -2"),
    ("best_miou", "high", "'best_miou' is 'high'"),
    ("best_epoch", True, "'best_epoch' is True"),
    ("partial_loss", ["a", 1], "'partial_loss' is ['a', 1]"),
    ("rng", [{"python": 5}], "cannot resume from it"),
])
def test_resume_refuses_training_state_of_the_wrong_type(tmp_path, field, value, needle):
    """The training part of a checkpoint, edited or damaged: one line naming the field, before training."""
    import logging

    from core.cli import UsageError
    from train_utils.checkpoint import Training, load_resume
    from train_utils.distributed import DistInfo

    model = TinySegNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = create_lr_scheduler(opt, 5, 3)
    args = argparse.Namespace(model="tiny", num_classes=3, dataset="folder")
    training = Training(args, DistInfo(), model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), [])
    state = training.checkpoint().training
    state[field] = value
    save_checkpoint(Checkpoint(model.state_dict(), model_name="tiny", num_classes=3, training=state),
                    tmp_path / "x.pth")
    with pytest.raises(UsageError, match=re.escape(needle)):
        load_resume(training, tmp_path / "x.pth", logging.getLogger("test"))


def test_launcher_variables_that_are_not_integers_are_named(monkeypatch):
    from train_utils.distributed import elastic_restart_count, init_distributed_mode

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "one")
    with pytest.raises(ValueError, match="TORCHELASTIC_RESTART_COUNT='one' is not an integer"):
        elastic_restart_count()
    monkeypatch.setenv("WORLD_SIZE", "2x")
    with pytest.raises(ValueError, match="WORLD_SIZE='2x'"):
        init_distributed_mode("cpu")


def test_a_run_directory_whose_name_is_not_utf8_is_logged(tmp_path):
    """Undecodable bytes in a path (a file name from another system) reach the log escaped, not as a
    "--- Logging error ---" traceback on the console."""
    from train_utils.run_dir import setup_logging

    out = tmp_path / "run\udcff"  # the byte 0xff, as Python decodes it from a file name
    out.mkdir()
    log = setup_logging(out, True)
    log.info(f"run directory {out}")
    for handler in log.handlers:
        handler.flush()
    assert "run\\udcff" in (out / "train.log").read_text(encoding="utf-8")
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()


def test_batches_without_labels_add_zero_loss_and_are_counted():
    dataset = SameSizeImages(12)
    for index in (1, 4, 5, 7, 8, 10):  # half the masks are all 255
        dataset.items[index][1].fill_(255)
    sampler = TrainSampler(len(dataset), 2, seed=0)
    loader = DataLoader(SeededDataset(dataset), batch_size=2, sampler=sampler, drop_last=True, collate_fn=_collate)
    torch.manual_seed(0)
    model = TinySegNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays as it is: each batch's loss is known
    result = train_one_epoch(model, opt, loader, torch.device("cpu"), 0, create_lr_scheduler(opt, len(loader), 1),
                             TrainOptions(num_classes=3, print_freq=2))
    losses, empty = [], 0
    with torch.no_grad():
        for images, masks in loader:
            if (masks == 255).all():
                empty, loss = empty + 1, 0.0
            else:
                loss = F.cross_entropy(model(normalize(images))["out"], masks.long(), ignore_index=255).item()
            losses.append(loss)
    assert empty > 0 and result.empty_batches == empty
    assert result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_freeze_backbone_holds_the_pretrained_layers_only():
    with torch.device("meta"):  # the layout is all that matters here
        resnet, vgg = build_model("fcn_resnet50", 3), build_model("fcn8s", 3)
    trains = lambda model: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    freeze = BackboneFreeze(resnet, 2)
    assert freeze.set_epoch(0) and not freeze.set_epoch(1)
    assert trains(resnet) == {n for n, _ in resnet.named_parameters() if not n.startswith("backbone.")}
    assert freeze.eval_modules == (resnet.backbone,)
    assert freeze.set_epoch(2) and trains(resnet) == {n for n, _ in resnet.named_parameters()}
    assert freeze.eval_modules == ()
    freeze = BackboneFreeze(vgg, 1)
    freeze.set_epoch(0)
    assert trains(vgg) == {f"{layer}.{kind}" for layer in ("score_fr", "score_pool4", "score_pool3")
                           for kind in ("weight", "bias")}
    freeze.set_epoch(1)  # the fixed bilinear upsampling layers stay fixed
    assert trains(vgg) == {n for n, _ in vgg.named_parameters() if not n.startswith("upscore")}


# ------------------------------------------------------------------------------------------- distributed

def test_backend_is_gloo_when_processes_share_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert choose_backend(cuda, 1) == "nccl"
    assert choose_backend(cuda, 2) == "gloo"  # NCCL refuses two ranks on one GPU
    assert choose_backend(torch.device("cpu"), 1) == "gloo"


def test_nan_to_none_maps_infinities_too():
    data = {"loss": math.inf, "low": -math.inf, "ok": [1.5, math.nan]}
    assert nan_to_none(data) == {"loss": None, "low": None, "ok": [1.5, None]}
