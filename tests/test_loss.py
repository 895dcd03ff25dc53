"""Losses, class weights, the optimizers and the learning-rate schedule."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src import build_model
from train_utils import (
    IGNORE_INDEX,
    class_weights_from_counts,
    create_lr_scheduler,
    create_optimizer,
    criterion,
    get_params_groups,
)
from train_utils.loss import LOSSES, LossConfig


def manual_ce(logits: torch.Tensor, target: torch.Tensor, weight=None) -> float:
    """Mean of -w[y] log softmax(x)[y] over non-ignored pixels, normalised by the sum of weights."""
    logp = torch.log_softmax(logits.double(), 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    y = target.reshape(-1)
    keep = y != IGNORE_INDEX
    logp, y = logp[keep], y[keep].long()
    w = torch.ones(logits.shape[1], dtype=torch.float64) if weight is None else weight.double()
    return float(-(w[y] * logp[torch.arange(len(y)), y]).sum() / w[y].sum())


def test_criterion_ignores_255_and_weights_aux():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6), dtype=torch.uint8)
    target[0, :2] = IGNORE_INDEX
    loss = criterion({"out": out, "aux": aux}, target)
    assert loss.item() == pytest.approx(manual_ce(out, target) + 0.5 * manual_ce(aux, target), rel=1e-5)
    only_out = criterion({"out": out}, target)
    assert only_out.item() == pytest.approx(manual_ce(out, target), rel=1e-5)
    assert criterion({"out": out, "aux": aux}, target, aux_weight=0.0).item() == pytest.approx(only_out.item())


def test_criterion_class_weights():
    torch.manual_seed(1)
    out = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    w = torch.tensor([0.2, 1.0, 3.0])
    assert criterion({"out": out}, target, class_weights=w).item() == pytest.approx(manual_ce(out, target, w),
                                                                                     rel=1e-5)


def test_criterion_names_bad_label_values():
    target = torch.tensor([[[0, 1], [7, IGNORE_INDEX]]])
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        criterion({"out": torch.randn(1, 3, 2, 2)}, target)


def test_class_weights_inverse_and_median():
    counts = [600, 300, 0, 100]
    inv = class_weights_from_counts(counts, "inverse")
    # total 1000 over 3 present classes: 1000 / (3 * count)
    np.testing.assert_allclose(inv.numpy(), [1000 / 1800, 1000 / 900, 0.0, 1000 / 300], rtol=1e-6)
    med = class_weights_from_counts(counts, "median")
    # frequencies 0.6, 0.3, 0.1 -> median 0.3
    np.testing.assert_allclose(med.numpy(), [0.5, 1.0, 0.0, 3.0], rtol=1e-6)
    with pytest.raises(ValueError):
        class_weights_from_counts([0, 0], "median")
    with pytest.raises(ValueError, match="unknown class weight mode"):
        class_weights_from_counts([1, 2], "sqrt")


def test_param_groups_resnet_and_vgg():
    model = build_model("fcn_resnet50", num_classes=3)
    groups = get_params_groups(model, lr=0.01, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [0.01, 0.01, 0.1]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    vgg = build_model("fcn8s", num_classes=3)
    groups = get_params_groups(vgg, lr=0.01, weight_decay=5e-4)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.01, 5e-4), (0.02, 0.0)]
    trainable = [p for p in vgg.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) < len(list(vgg.parameters()))


def _factors(num_step, epochs, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = create_lr_scheduler(opt, num_step, epochs, **kw)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(num_step * epochs):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_lr_schedule_warmup_then_poly():
    f = _factors(10, 5, warmup=True, warmup_epochs=1, warmup_factor=1e-3)
    assert f[0] == pytest.approx(1e-3)
    assert f[5] == pytest.approx(1e-3 * 0.5 + 0.5)  # half-way through the warm-up
    assert f[10] == pytest.approx(1.0)  # end of warm-up
    assert f[30] == pytest.approx((1 - 20 / 40) ** 0.9)  # mid-way through the decay
    assert f[50] == 0.0  # last step
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_lr_schedule_without_warmup_and_single_epoch():
    f = _factors(4, 2, warmup=False)
    assert f[0] == 1.0 and f[4] == pytest.approx(0.5 ** 0.9) and f[8] == 0.0
    f = _factors(4, 1, warmup=True)  # warm-up clipped so that the single epoch still decays
    assert f[0] == 1.0 and f[-1] == 0.0


def test_optimizer_is_sgd_with_momentum():
    opt = create_optimizer(build_model("fcn32s", num_classes=2), lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert math.isclose(opt.param_groups[1]["lr"], 0.2)


# ------------------------------------------------------------------ ce, focal, dice, ce+dice against numpy

def _pixels(logits: torch.Tensor, target: torch.Tensor):
    """Softmax probabilities (P, C) and labels (P,) of the labelled pixels, in float64 numpy."""
    x = logits.double().permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).numpy()
    y = target.reshape(-1).numpy().astype(np.int64)
    keep = y != IGNORE_INDEX
    e = np.exp(x - x.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[keep], y[keep]


def np_focal(logits, target, gamma, weight=None):
    """sum_i w[y_i] (1 - p_i)^gamma (-log p_i) / sum_i w[y_i] over labelled pixels i; 0 when there are none."""
    p, y = _pixels(logits, target)
    w = np.ones(logits.shape[1]) if weight is None else weight.double().numpy()
    total = sum(w[c] * (1 - p[i, c]) ** gamma * -math.log(p[i, c]) for i, c in enumerate(y))
    norm = sum(w[c] for c in y)
    return total / norm if norm > 0 else 0.0


def np_dice(logits, target, weight=None, smooth=1.0):
    """1 - weighted mean over classes c of (2 sum_i p_ic [y_i = c] + s) / (sum_i p_ic + #{y_i = c} + s)."""
    p, y = _pixels(logits, target)
    num_classes = logits.shape[1]
    w = np.ones(num_classes) if weight is None else weight.double().numpy()
    losses = []
    for c in range(num_classes):
        inter = p[y == c, c].sum()
        losses.append(1 - (2 * inter + smooth) / (p[:, c].sum() + (y == c).sum() + smooth))
    return float((w * np.array(losses)).sum() / w.sum())


def np_loss(name, logits, target, weight=None, dice_weight=1.0, gamma=2.0):
    if name == "ce":
        return np_focal(logits, target, 0.0, weight)  # (1 - p)^0 = 1: plain weighted cross-entropy
    if name == "focal":
        return np_focal(logits, target, gamma, weight)
    if name == "dice":
        return np_dice(logits, target, weight)
    return np_focal(logits, target, 0.0, weight) + dice_weight * np_dice(logits, target, weight)


def _batch(seed, classes=(0, 1, 2, 3), num_classes=4, ignored=True):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(2, num_classes, 5, 6, generator=g) * 3
    aux = torch.randn(2, num_classes, 5, 6, generator=g)
    target = torch.tensor(classes, dtype=torch.uint8)[torch.randint(0, len(classes), (2, 5, 6), generator=g)]
    if ignored:
        target[0, :2] = IGNORE_INDEX
        target[1, :, :3] = IGNORE_INDEX
    return out, aux, target


def _close(value, expected):
    assert abs(value - expected) <= 1e-6 * max(1.0, abs(expected)), (value, expected)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weights"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_equals_numpy_with_aux_ignore_and_absent_classes(name, weighted):
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0]) if weighted else None
    config = LossConfig(name, dice_weight=0.7, focal_gamma=1.5)
    for seed, classes in ((0, (0, 1, 2, 3)), (1, (0, 2))):  # the second batch lacks classes 1 and 3
        out, aux, target = _batch(seed, classes)
        expected = [np_loss(name, x, target, weight, 0.7, 1.5) for x in (out, aux)]
        loss = criterion({"out": out, "aux": aux}, target, aux_weight=0.4, class_weights=weight, loss=config)
        _close(loss.item(), expected[0] + 0.4 * expected[1])
        _close(criterion({"out": out}, target, class_weights=weight, loss=config).item(), expected[0])


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_ignored_batch_gives_zero_loss_and_zero_gradients(name):
    out, aux, target = _batch(2)
    target.fill_(IGNORE_INDEX)
    out.requires_grad_(True)
    for weight in (None, torch.tensor([0.5, 2.0, 1.0, 3.0])):
        loss = criterion({"out": out, "aux": aux}, target, class_weights=weight, loss=LossConfig(name))
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, out)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_ce_is_f_cross_entropy_and_focal_gamma_0_is_ce():
    out, _, target = _batch(3)
    weight = torch.tensor([0.2, 1.0, 3.0, 0.7])
    for w in (None, weight):
        expected = F.cross_entropy(out, target.long(), weight=w, ignore_index=IGNORE_INDEX).item()
        _close(criterion({"out": out}, target, class_weights=w).item(), expected)
        focal0 = criterion({"out": out}, target, class_weights=w, loss=LossConfig("focal", focal_gamma=0.0))
        _close(focal0.item(), expected)


def test_losses_follow_the_prediction():
    """Every loss is lower for logits that put the mass on the right class."""
    _, _, target = _batch(4)
    good = F.one_hot(torch.where(target == IGNORE_INDEX, 0, target).long(), 4).permute(0, 3, 1, 2).float() * 8
    for name in LOSSES:
        config = LossConfig(name)
        assert criterion({"out": good}, target, loss=config) < criterion({"out": -good}, target, loss=config)


def test_adamw_keeps_the_parameter_groups_and_the_schedule():
    with torch.device("meta"):  # no memory: only the grouping matters
        model, vgg = build_model("fcn_resnet50", num_classes=3), build_model("fcn32s", num_classes=2)
    sgd = create_optimizer(model, lr=0.01, weight_decay=1e-4)
    adamw = create_optimizer(model, lr=0.01, weight_decay=0.05, name="adamw", betas=(0.8, 0.99))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)
    assert [g["lr"] for g in adamw.param_groups] == [0.01, 0.01, 0.1]  # the aux head at 10x, as with SGD
    assert [[id(p) for p in g["params"]] for g in adamw.param_groups] == \
        [[id(p) for p in g["params"]] for g in sgd.param_groups]
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.05}
    sched = create_lr_scheduler(adamw, 4, 2, warmup=False)
    for _ in range(4):
        adamw.step()
        sched.step()
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([0.01 * 0.5 ** 0.9, 0.01 * 0.5 ** 0.9,
                                                                   0.1 * 0.5 ** 0.9])
    vgg_opt = create_optimizer(vgg, lr=0.1, weight_decay=1e-2, name="adamw")
    assert [(g["lr"], g["weight_decay"]) for g in vgg_opt.param_groups] == [(0.1, 1e-2), (0.2, 0.0)]
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        create_optimizer(model, lr=0.1, name="adam")
