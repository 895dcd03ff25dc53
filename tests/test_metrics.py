"""ConfusionMatrix against an independent NumPy computation, pixel by pixel."""
import math

import numpy as np
import pytest
import torch

from train_utils import IGNORE_INDEX, ConfusionMatrix


def numpy_reference(gt: np.ndarray, pred: np.ndarray, n: int) -> dict:
    """Loops over classes with boolean masks: no confusion matrix, no bincount."""
    keep = gt != IGNORE_INDEX
    gt, pred = gt[keep], pred[keep]
    iou, acc, dice, freq = [], [], [], []
    for c in range(n):
        g, p = gt == c, pred == c
        inter, union = np.sum(g & p), np.sum(g | p)
        iou.append(inter / union if union else math.nan)
        acc.append(inter / g.sum() if g.sum() else math.nan)
        dice.append(2 * inter / (g.sum() + p.sum()) if g.sum() + p.sum() else math.nan)
        freq.append(g.sum() / gt.size)
    iou, freq = np.array(iou), np.array(freq)
    return {
        "pixel_acc": np.mean(gt == pred),
        "iou": iou,
        "acc": np.array(acc),
        "dice": np.array(dice),
        "mean_iou": np.nanmean(iou),
        "mean_acc": np.nanmean(acc),
        "mean_dice": np.nanmean(dice),
        "fw_iou": np.sum(freq[freq > 0] * iou[freq > 0]),
    }


def random_labels(rng: np.random.Generator, shape, n: int, absent=(), never_predicted=()):
    gt = rng.integers(0, n, size=shape)
    gt[rng.random(shape) < 0.1] = IGNORE_INDEX
    for c in absent:
        gt[gt == c] = 0
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, n, size=shape))
    pred[pred == IGNORE_INDEX] = 1
    for c in never_predicted:
        pred[pred == c] = 2
    return gt, pred


def test_metrics_equal_numpy_reference():
    rng = np.random.default_rng(0)
    n = 7
    cm = ConfusionMatrix(n)
    gts, preds = [], []
    for _ in range(3):  # several updates with different shapes
        shape = tuple(rng.integers(5, 40, size=2))
        # class 5 absent from GT and never predicted (NaN IoU); class 6 absent from GT but predicted (IoU 0)
        gt, pred = random_labels(rng, shape, n, absent=(5, 6), never_predicted=(5,))
        cm.update(torch.from_numpy(gt).to(torch.uint8), torch.from_numpy(pred))
        gts.append(gt.ravel())
        preds.append(pred.ravel())
    ref = numpy_reference(np.concatenate(gts), np.concatenate(preds), n)
    m = cm.metrics()
    for key in ("pixel_acc", "mean_iou", "mean_acc", "mean_dice", "fw_iou"):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    for key in ("iou", "acc", "dice"):
        np.testing.assert_allclose(np.array(m[key]), ref[key], atol=1e-12, equal_nan=True)
    assert math.isnan(m["iou"][5]) and m["iou"][6] == 0.0
    assert math.isnan(m["acc"][6])
    acc_global, acc, iu = cm.compute()
    assert acc_global.item() == pytest.approx(ref["pixel_acc"])
    np.testing.assert_allclose(iu.numpy(), ref["iou"], equal_nan=True)


def test_matrix_layout_rows_are_ground_truth():
    cm = ConfusionMatrix(3)
    gt = torch.tensor([0, 0, 1, 2, 2, 2, IGNORE_INDEX])
    pred = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    cm.update(gt, pred)
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(cm.matrix, expected)


def test_labels_outside_range_are_skipped():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 2, 7, IGNORE_INDEX, -1]), torch.tensor([0, 1, 0, 1, 0, 1]))
    assert cm.matrix.sum().item() == 2


def test_string_matches_reference_format_and_names():
    cm = ConfusionMatrix(3, class_names=["background", "cat", "dog"])
    cm.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
    text = str(cm)
    lines = text.splitlines()
    assert lines[0] == "global correct: 75.0"
    assert lines[1] == "average row correct: ['66.7', '100.0', 'nan']"
    assert lines[2] == "IoU: ['66.7', '50.0', 'nan']"
    assert lines[3] == "mean IoU: 58.3"
    assert any(line.split()[:2] == ["dog", "nan"] for line in lines)


def test_mismatched_class_names():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ConfusionMatrix(3, class_names=["a", "b"])


def test_reset_and_empty():
    cm = ConfusionMatrix(2, device=torch.device("cpu"))
    assert math.isnan(cm.metrics()["mean_iou"])
    cm.update(torch.tensor([1]), torch.tensor([1]))
    cm.reset()
    assert cm.matrix.sum() == 0


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_predictions_outside_the_classes_are_an_error_not_another_cell(bad):
    """A 3-class matrix fed a prediction `bad` for a labelled pixel: counting it as bad mod 3 or in class 2's
    cell would silently change the metrics. Predictions on ignored pixels do not matter."""
    gt = torch.tensor([0, 1, 2, 1, IGNORE_INDEX])
    cm = ConfusionMatrix(3)
    cm.update(gt, torch.tensor([0, 1, 2, 2, bad]))  # the bad value on an ignored pixel: fine
    expected = np.zeros((3, 3), dtype=np.int64)
    for g, p in [(0, 0), (1, 1), (2, 2), (1, 2)]:
        expected[g, p] += 1
    assert np.array_equal(cm.matrix.numpy(), expected)
    cm.update(gt, torch.tensor([0, bad, 2, 1, 0]))
    with pytest.raises(ValueError, match="1 labelled pixels were predicted as classes outside 0..2"):
        cm.metrics()


def test_update_refuses_target_and_prediction_of_different_shapes():
    with pytest.raises(ValueError, match=r"target \(2, 3\) and prediction \(3, 2\)"):
        ConfusionMatrix(3).update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
