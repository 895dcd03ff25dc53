"""Process groups (train_utils.distributed): the launcher's variables and the backend choice."""

import pytest
import torch

from train_utils.distributed import choose_backend


def test_launcher_variables_that_are_not_integers_are_named(monkeypatch):
    from train_utils.distributed import elastic_restart_count, init_distributed_mode

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "one")
    with pytest.raises(ValueError, match="TORCHELASTIC_RESTART_COUNT='one' is not an integer"):
        elastic_restart_count()
    monkeypatch.setenv("WORLD_SIZE", "2x")
    with pytest.raises(ValueError, match="WORLD_SIZE='2x'"):
        init_distributed_mode("cpu")


def test_backend_is_gloo_when_processes_share_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert choose_backend(cuda, 1) == "nccl"
    assert choose_backend(cuda, 2) == "gloo"  # NCCL refuses two ranks on one GPU
    assert choose_backend(torch.device("cpu"), 1) == "gloo"
