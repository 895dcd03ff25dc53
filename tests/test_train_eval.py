"""The training and evaluation loops (train_utils.train_eval): learning, exact resume, NaN and stop requests,
batches without labels, the validation loss, and 1- vs 2-process evaluation."""
import functools
import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.runtime import Runtime
from train_utils import (
    ConfusionMatrix,
    EvalBatchSampler,
    NonFiniteLossError,
    SeededDataset,
    TrainOptions,
    TrainSampler,
    create_lr_scheduler,
    evaluate,
    normalize,
    train_one_epoch,
)
from train_utils.loss import criterion
from train_utils.train_eval import run_evaluation

from independent import cross_entropy_terms, normalised

CPU = Runtime(torch.device("cpu"))

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
        result = train_one_epoch(model, opt, loader, epoch, sched,
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
    result = train_one_epoch(model, opt, loader, 0, sched,
                             TrainOptions(num_classes=3, print_freq=2, should_stop=lambda: True))
    assert result.interrupted and result.steps == 2


def test_confusion_matrix_device_allocation_for_empty_rank():
    cm = ConfusionMatrix(3, device=torch.device("cpu"))
    cm.reduce_from_all_processes()
    assert cm.matrix.sum() == 0


def test_evaluate_refuses_a_model_with_other_output_channels():
    """A 4-class model scored as 3 classes: its argmax 3 would land in another cell (or be dropped)."""
    with pytest.raises(ValueError, match="the model outputs 4 classes, but the evaluation is of 3"):
        evaluate(TinySegNet(num_classes=4), _eval_loader(SizedImages(3)), torch.device("cpu"), 3)


def test_batches_without_labels_add_zero_loss_and_are_counted():
    dataset = SameSizeImages(12)
    for index in (1, 4, 5, 7, 8, 10):  # half the masks are all 255
        dataset.items[index][1].fill_(255)
    sampler = TrainSampler(len(dataset), 2, seed=0)
    loader = DataLoader(SeededDataset(dataset), batch_size=2, sampler=sampler, drop_last=True, collate_fn=_collate)
    torch.manual_seed(0)
    model = TinySegNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays as it is: each batch's loss is known
    result = train_one_epoch(model, opt, loader, 0, create_lr_scheduler(opt, len(loader), 1),
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


# ------------------------------------------------------------------------------------------ validation loss

class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))

    def forward(self, x):
        return {"out": self.body(x), "aux": self.body(x) * 0}  # an aux head the validation loss must ignore


def tiny_items(n: int = 7):
    gen = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        h, w = [(10, 12), (12, 10)][i % 2]
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        mask = torch.randint(0, 3, (h, w), dtype=torch.uint8, generator=gen)
        mask[: i % 3] = 255
        if i == 4:
            mask[:] = 255  # an image without labelled pixels adds nothing (and no NaN)
        items.append((image, mask))
    return items


def tiny_loader(items, batch: int):
    sampler = EvalBatchSampler([tuple(m.shape) for _, m in items], batch)
    return DataLoader(items, batch_sampler=sampler, collate_fn=lambda b: tuple(map(torch.stack, zip(*b))))


def test_validation_loss_equals_an_independent_cross_entropy_and_changes_no_metric():
    torch.manual_seed(0)
    model, items = TinyNet().eval(), tiny_items()
    loss_fn = functools.partial(criterion, validate=False)
    results = [run_evaluation(model, tiny_loader(items, b), CPU, 3, criterion=loss_fn)
               for b in (1, 3)]
    total, pixels = 0.0, 0
    with torch.no_grad():
        for image, mask in items:
            s, n = cross_entropy_terms(model.body(normalised(image.permute(1, 2, 0).numpy())), mask.numpy())
            total, pixels = total + s, pixels + n
    for result in results:  # the mean over every labelled pixel, whatever the batching
        assert result.loss == pytest.approx(total / pixels, rel=1e-5)
    plain = evaluate(model, tiny_loader(items, 3), torch.device("cpu"), 3)
    assert torch.equal(results[1].confusion.matrix, plain.matrix)


def test_evaluation_reads_the_device_a_fixed_number_of_times(monkeypatch):
    """The loss is summed on the device: the host reads it once per evaluation, not once per batch."""
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    model, items = TinyNet().eval(), tiny_items(8)
    counts = []
    for batch in (8, 1):  # 2 batches, then 8
        reads["n"] = 0
        run_evaluation(model, tiny_loader(items, batch), CPU, 3,
                       criterion=functools.partial(criterion, validate=False))
        counts.append(reads["n"])
    assert counts[0] == counts[1] > 0


def test_the_resolved_arguments_are_a_copy_and_size_the_disk_check_by_the_run_s_classes(monkeypatch):
    import train
    from train_utils import trainer
    from train_utils.options import resolve_args

    args = train.parse_args(["--data-path", "x", "--model", "fcn32s", "-b", "2", "--device", "cpu"])
    before = dict(vars(args))
    resolved = resolve_args(args, 1, Runtime(torch.device("cpu")), ["background", "cat", "dog"])
    assert vars(args) == before  # the parsed flags are read, never written back
    assert resolved.num_classes == 3 and resolved.lr == pytest.approx(0.02 * 2 / 32)
    seen = []
    monkeypatch.setattr(trainer, "build_model", lambda name, classes, aux: seen.append(classes) or nn.Conv2d(1, 1, 1))
    trainer.checkpoint_bytes(resolved)
    assert seen == [3]
