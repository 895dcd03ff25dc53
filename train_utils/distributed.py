"""Process-group helpers. One code path: a single process is world size 1, not a separate branch."""
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from core.rendezvous import connect, join_ranks, rendezvous_timeout
from core.runtime import resolve_device


@dataclass
class DistInfo:
    """Where this process stands: its rank, the world size, its local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                raise ValueError(f"environment variable {name}={os.environ[name]!r:.40} is not an integer; launch "
                                 f"with torchrun (or srun), which set it, or unset it") from None
    return None


def elastic_restart_count() -> int:
    """How many times torchrun has restarted the group (TORCHELASTIC_RESTART_COUNT; 0 on the first attempt
    and without torchrun)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT") or 0


def init_distributed_mode(device: Optional[str] = None, timeout_s: int = 1800,
                          rendezvous_s: Optional[float] = None) -> DistInfo:
    """Joins the process group described by torchrun's (or SLURM's) environment, if any.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; under srun, SLURM_PROCID,
    SLURM_NTASKS and SLURM_LOCALID stand in for the first three and MASTER_ADDR/MASTER_PORT must be exported.
    Every process waits at most `rendezvous_s` seconds (--rendezvous-timeout; core.rendezvous) for the others
    to join, then stops naming the missing ranks; `timeout_s` bounds each later collective.
    Without any of them this is one process. The backend is NCCL on CUDA and Gloo elsewhere: on the CPU, on
    Apple GPUs, on Windows, whose PyTorch builds have no NCCL, and for several processes on one GPU.
    """
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    dev = resolve_device(device, local_rank)
    info = DistInfo(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"{var} is not set: launch with torchrun, or export MASTER_ADDR/MASTER_PORT "
                                 f"for srun")
        backend = choose_backend(dev, _env_int("LOCAL_WORLD_SIZE") or 1)
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        wait_s = rendezvous_timeout(rendezvous_s)
        store = _attempt_store(rank, world_size, wait_s, timeout_s)
        join_ranks(store, rank, world_size, wait_s)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return info


def choose_backend(device: torch.device, local_world_size: int = 1) -> str:
    """NCCL for CUDA devices, Gloo elsewhere, and Gloo also when this node runs more processes than it has
    GPUs: NCCL refuses two ranks on one GPU, Gloo shares it (to check multi-process runs on a 1-GPU machine)."""
    if device.type != "cuda" or not dist.is_nccl_available():
        return "gloo"
    return "nccl" if local_world_size <= torch.cuda.device_count() else "gloo"


def _attempt_store(rank: int, world_size: int, wait_s: float, timeout_s: int) -> dist.Store:
    """The rendezvous key-value store, with keys private to this (re)start of the group.

    After an elastic restart torchrun's store still holds the keys of the previous attempt, among them the
    addresses of its dead processes; a new process that read one would fail with "connection refused". A
    prefix per restart count keeps each attempt to its own keys.
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the server
    store = connect(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT"), world_size, rank == 0 and not agent, rank,
                    wait_s, timeout_s)
    return dist.PrefixStore(f"fcn/attempt_{elastic_restart_count()}", store)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over all ranks in place and returns it (unchanged in a single process)."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flags: List[bool], device: torch.device) -> List[bool]:
    """For each flag, True on every rank if it is true on any rank: all ranks then stop at the same step
    (a rank that stopped alone would leave the others waiting in a collective)."""
    if not is_dist_avail_and_initialized():
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather_objects(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank.

    Each rank's last training step updates its BN statistics from its own batch, so without this the ranks
    would evaluate slightly different models, none of them exactly the checkpoint that rank 0 saves.
    """
    if is_dist_avail_and_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def cleanup() -> None:
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()
