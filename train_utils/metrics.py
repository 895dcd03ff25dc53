"""Segmentation metrics from one confusion matrix accumulated over the whole dataset.

Rows are ground truth, columns are predictions. Per-image averages are never taken: every pixel weighs the
same, as in all the reference implementations.

NaN convention: a class that appears neither in the ground truth nor in the predictions has IoU (and Dice)
0/0 = NaN, and a class absent from the ground truth has accuracy NaN. NaN entries are left out of the means
(nanmean), so a dataset that lacks some classes is not penalised for them. A class that is predicted but
never present gets IoU 0 and does count.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .distributed import all_reduce_sum


class ConfusionMatrix:
    """Accumulates an int64 (num_classes, num_classes) matrix on the device of the first update.

    Args:
        num_classes: number of classes; labels outside [0, num_classes) (255 included) are skipped.
        class_names: optional names used by `__str__` and `metrics()`.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 device: Optional[torch.device] = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.mat: Optional[torch.Tensor] = None
        if device is not None:
            self._allocate(device)

    def _allocate(self, device: torch.device) -> None:
        # Two bins past the end: skipped pixels, and labelled pixels whose prediction is no class. Binning
        # them needs no boolean indexing or range check on the host (each a sync on CUDA); torch.bincount
        # would also sync to size its output. The second bin is checked when the matrix is read.
        self.mat = torch.zeros(self.num_classes ** 2 + 2, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Adds the pixels of `target` (labels) and `pred` (class indices), tensors of the same shape.

        A prediction outside [0, num_classes) for a labelled pixel is an error (raised when the matrix is
        read): it would otherwise be counted in another class's cell.
        """
        if target.shape != pred.shape:
            raise ValueError(f"ConfusionMatrix.update: target {tuple(target.shape)} and prediction "
                             f"{tuple(pred.shape)} differ in shape")
        n = self.num_classes
        if self.mat is None:
            self._allocate(target.device)
        target = target.reshape(-1).to(self.mat.device).long()
        pred = pred.reshape(-1).to(self.mat.device).long()
        valid = (target >= 0) & (target < n)
        in_range = (pred >= 0) & (pred < n)
        index = torch.where(valid, torch.where(in_range, target * n + pred, n * n + 1), n * n)
        self.mat.index_add_(0, index, torch.ones_like(index))

    def reset(self) -> None:
        if self.mat is not None:
            self.mat.zero_()

    @property
    def matrix(self) -> torch.Tensor:
        """The (num_classes, num_classes) counts, rows ground truth, columns prediction."""
        n = self.num_classes
        if self.mat is None:
            return torch.zeros(n, n, dtype=torch.int64)
        bad = int(self.mat[n * n + 1])
        if bad:
            raise ValueError(f"{bad} labelled pixels were predicted as classes outside 0..{n - 1}: the "
                             f"predictions are not of a {n}-class model (check --num-classes against the model)")
        return self.mat[: n * n].reshape(n, n)

    def reduce_from_all_processes(self) -> None:
        """Sums the matrix over all ranks in place (a no-op in a single process)."""
        if self.mat is None:
            raise RuntimeError("reduce_from_all_processes() needs a matrix on every rank: pass device= to "
                               "the constructor so that a rank without images still takes part")
        all_reduce_sum(self.mat)

    def compute(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(global pixel accuracy, per-class accuracy, per-class IoU) as float64 tensors in [0, 1]."""
        h = self.matrix.double().cpu()
        diag = torch.diag(h)
        acc_global = diag.sum() / h.sum()
        acc = diag / h.sum(1)
        iu = diag / (h.sum(1) + h.sum(0) - diag)
        return acc_global, acc, iu

    def metrics(self) -> Dict[str, object]:
        """pixel_acc, mean_acc, mean_iou, fw_iou, mean_dice (nanmeans) and per-class iou, acc, dice lists."""
        h = self.matrix.double().cpu()
        acc_global, acc, iu = self.compute()
        diag, gt, pred = torch.diag(h), h.sum(1), h.sum(0)
        dice = 2 * diag / (gt + pred)
        freq = gt / h.sum()
        present = freq > 0
        return {
            "pixel_acc": acc_global.item(),
            "mean_acc": _nanmean(acc),
            "mean_iou": _nanmean(iu),
            "fw_iou": (freq[present] * iu[present]).sum().item() if bool(present.any()) else math.nan,
            "mean_dice": _nanmean(dice),
            "iou": iu.tolist(),
            "acc": acc.tolist(),
            "dice": dice.tolist(),
            "class_names": self.class_names,
            "num_pixels": int(h.sum().item()),
        }

    def __str__(self) -> str:
        acc_global, acc, iu = self.compute()
        lines = [
            f"global correct: {acc_global.item() * 100:.1f}",
            f"average row correct: {_pct_list(acc)}",
            f"IoU: {_pct_list(iu)}",
            f"mean IoU: {_nanmean(iu) * 100:.1f}",
        ]
        if self.class_names is not None:
            m = self.metrics()
            width = max(len(n) for n in self.class_names)
            lines.append(f"{'class':<{width}}    IoU    acc   dice")
            for name, i, a, d in zip(self.class_names, m["iou"], m["acc"], m["dice"]):
                lines.append(f"{name:<{width}}  {_pct(i):>5}  {_pct(a):>5}  {_pct(d):>5}")
        return "\n".join(lines)


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.mean().item() if finite.numel() else math.nan


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value * 100:.1f}"


def _pct_list(values: torch.Tensor) -> List[str]:
    return [_pct(v) for v in values.tolist()]
