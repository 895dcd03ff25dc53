"""Loss, class weights and the learning-rate schedule."""
import math

import numpy as np
import pytest
import torch

from src import build_model
from train_utils import (IGNORE_INDEX, class_weights_from_counts, create_lr_scheduler, create_optimizer, criterion,
                         get_params_groups)


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
