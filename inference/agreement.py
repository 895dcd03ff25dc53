"""Two evaluations of the same loader compared: the share of pixels whose predicted label agrees (an int8
model against fp32 torch), and the record line that says what quantisation cost (validation.py)."""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


def chain_hooks(hooks: List[Optional[Callable]]) -> Optional[Callable]:
    """One on_batch hook calling each of `hooks` that is not None (None when none is)."""
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None

    def each(*batch: torch.Tensor) -> None:
        for hook in hooks:
            hook(*batch)
    return each


class PixelAgreement:
    """Share of pixels whose label is the same in two evaluation runs over the same loader (fp32 vs int8):
    run 0 keeps its predicted labels per batch (uint8 on the host), run 1 compares with them."""

    def __init__(self) -> None:
        self.labels: List[torch.Tensor] = []
        self.same = self.pixels = 0
        self.seen = 0

    def hook(self, run: int) -> Callable:
        def record(images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor) -> None:
            if run == 0:
                self.labels.append(preds.to(torch.uint8).cpu())
                return
            self.same += int((self.labels[self.seen] == preds.to(torch.uint8).cpu()).sum())
            self.pixels += preds.numel()
            self.labels[self.seen] = None  # compared: free it
            self.seen += 1
        return record

    def total(self, gather: Callable) -> Tuple[int, int]:
        """(equal pixels, pixels) over all ranks."""
        counts = gather((self.same, self.pixels))
        return sum(c[0] for c in counts), sum(c[1] for c in counts)


def accuracy_lost(results: Dict[str, Any], agreement: Tuple[int, int]) -> str:
    """The int8 lines of the record: mIoU of fp32 torch and int8, the points lost, and the pixel agreement."""
    (fp32_label, fp32), (int8_label, int8) = list(results.items())[:2]
    a, b = fp32.metrics()["mean_iou"] * 100, int8.metrics()["mean_iou"] * 100
    same, pixels = agreement
    return (f"int8 accuracy: mean IoU {a:.1f} ({fp32_label}) -> {b:.1f} ({int8_label}), {b - a:+.1f} points; "
            f"pixel agreement with fp32 {same / max(pixels, 1):.2%} of {pixels} pixels")
