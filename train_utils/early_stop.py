"""--early-stop PATIENCE: stop a run whose validation mIoU has stopped improving."""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass
class EarlyStopping:
    """Counts evaluations without an improvement of mIoU by more than `min_delta`.

    The counters travel in the checkpoint, so a resumed run keeps counting where it stopped; `patience` and
    `min_delta` are always the current run's flags.

    Args:
        patience: evaluations in a row without improvement before stopping (None: never stop, only count).
        min_delta: the margin (mIoU as a fraction) an evaluation must beat the best by to count as improving.
    """

    patience: Optional[int] = None
    min_delta: float = 0.0
    best: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    # True when the stop ended a run before the last epoch of its schedule; a stop that fires on the last
    # epoch is a finished run, which a larger --epochs continues.
    stopped: bool = False

    def update(self, miou: float, epoch: int) -> bool:
        """Counts the evaluation of `epoch`; True when training should stop. NaN never improves."""
        if miou > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_evals = miou, epoch, 0
        else:
            self.bad_evals += 1
        return self.should_stop

    def stopped_early(self, epoch: int, epochs: int) -> bool:
        """Records whether the stop after `epoch` cut a schedule of `epochs` short; returns that."""
        self.stopped = self.should_stop and epoch + 1 < epochs
        return self.stopped

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def reason(self) -> str:
        return (f"mIoU has not improved by more than {self.min_delta:g} for {self.bad_evals} evaluations "
                f"(--early-stop {self.patience}); best {self.best * 100:.1f} at epoch {self.best_epoch}")

    def state_dict(self) -> Dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "best": self.best,
                "best_epoch": self.best_epoch, "bad_evals": self.bad_evals, "stopped": self.stopped}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores the counters (a checkpoint without them starts counting afresh)."""
        self.best = float(state.get("best", -math.inf))
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_evals = int(state.get("bad_evals", 0))
        self.stopped = bool(state.get("stopped", True))  # older checkpoints: every stop counted as early
