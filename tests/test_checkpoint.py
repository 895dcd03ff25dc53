"""Training checkpoints (train_utils.checkpoint): random generator states and the training state read back."""
import argparse
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from core.checkpoint import Checkpoint, save_checkpoint
from train_utils import create_lr_scheduler, get_rng_state, set_rng_state


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

    model = nn.Conv2d(3, 3, 1)
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
