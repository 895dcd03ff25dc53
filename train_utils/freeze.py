"""--freeze-backbone N: the pretrained backbone stays fixed for the first N epochs while the heads learn.

Freezing means no gradients (so the optimizer, weight decay included, leaves the weights alone) and eval mode
for the backbone's BatchNorm layers (so their running statistics stay those of the pretrained weights). The
parameters stay in their optimizer group all along: at the unfreeze they simply start receiving gradients,
at whatever learning rate the schedule has reached by then.
"""
from typing import List, Sequence

from torch import nn

from src import backbone_modules


class BackboneFreeze:
    """Which parameters train in a given epoch.

    Args:
        model: the unwrapped model (after any SyncBatchNorm conversion).
        epochs: the backbone is frozen in epochs 0 .. epochs - 1 (0: never).
    """

    def __init__(self, model: nn.Module, epochs: int = 0) -> None:
        self.epochs = epochs
        self.modules: List[nn.Module] = backbone_modules(model) if epochs > 0 else []
        # Only what trains at all: the VGG FCNs' fixed bilinear upsampling never does.
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.frozen = False

    def set_epoch(self, epoch: int) -> bool:
        """Freezes or unfreezes the backbone for `epoch`; True when that changed which parameters train
        (a DistributedDataParallel wrapper must then be rebuilt: it only reduces what trained when it was made)."""
        frozen = epoch < self.epochs
        changed, self.frozen = frozen != self.frozen, frozen
        for p in self.params:
            p.requires_grad_(not frozen)
        return changed

    @property
    def eval_modules(self) -> Sequence[nn.Module]:
        """Modules the training loop keeps in eval mode (BatchNorm statistics fixed) in the current epoch."""
        return tuple(self.modules) if self.frozen else ()

    def describe(self, epoch: int) -> str:
        if self.frozen:
            return (f"backbone frozen from epoch {epoch} to the end of epoch {self.epochs - 1} (BatchNorm statistics "
                    f"kept): the heads train")
        return f"backbone trains from epoch {epoch} on, at the scheduled learning rate"
