"""The bounded wait for every process of a group: a half-started job (RANK=0 WORLD_SIZE=2 and no second
process, a node that never came up) ends after --rendezvous-timeout seconds with one line naming the ranks
that did not join and how to launch them, instead of waiting at the rendezvous for ever.

    store = join_store(rank, world_size, timeout_s=rendezvous_timeout(args.rendezvous_timeout))
"""
import argparse
import os
import time
from datetime import timedelta
from typing import List, Optional

import torch.distributed as dist

from .cli import UsageError

ENV = "FCN_RENDEZVOUS_TIMEOUT"
DEFAULT_S = 600.0


def add_rendezvous_flag(parser: argparse.ArgumentParser) -> None:
    """Adds --rendezvous-timeout (seconds; default: $FCN_RENDEZVOUS_TIMEOUT, else 600)."""
    parser.add_argument("--rendezvous-timeout", type=float, default=None, metavar="S",
                        help=f"multi-process runs: seconds to wait for every process to join before stopping with "
                             f"the ranks that are missing (default: ${ENV}, else {DEFAULT_S:g})")


def rendezvous_timeout(flag: Optional[float] = None) -> float:
    """The wait in seconds: the flag, else $FCN_RENDEZVOUS_TIMEOUT, else 600."""
    value, source = (flag, "--rendezvous-timeout") if flag is not None else (os.environ.get(ENV), ENV)
    if value is None:
        return DEFAULT_S
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{source}={value!r:.40} is not a number of seconds; give e.g. 600") from None
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{source} must be a positive finite number of seconds, got {value}")
    return seconds


def _launch_hint(world_size: int) -> str:
    return (f"start the missing processes with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE={world_size}, or "
            f"launch all of them with torchrun (e.g. torchrun --nproc_per_node={world_size} train_multi_GPU.py "
            f"...); --rendezvous-timeout or ${ENV} sets the wait")


def connect(host: str, port: int, world_size: int, is_master: bool, rank: int, timeout_s: float,
            collective_timeout_s: float) -> dist.TCPStore:
    """The TCPStore of the group, without the store's own wait for the others (join_ranks bounds it). A rank
    that finds no rank 0 within `timeout_s` says so in one line."""
    try:
        store = dist.TCPStore(host, port, world_size, is_master=is_master, wait_for_workers=False,
                              timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as e:  # DistNetworkError (a RuntimeError): no server, or the port is taken
        if is_master:
            raise UsageError(f"rank 0 cannot serve the rendezvous at {host}:{port} ({str(e).splitlines()[0]:.120}); "
                             f"choose a free MASTER_PORT") from None
        raise UsageError(f"rank {rank} of {world_size}: no rank 0 answered at MASTER_ADDR:MASTER_PORT = {host}:{port} "
                         f"within {timeout_s:g} s; {_launch_hint(world_size)}") from None
    store.set_timeout(timedelta(seconds=collective_timeout_s))  # later store use (barriers) keeps the long wait
    return store


def join_ranks(store: dist.Store, rank: int, world_size: int, timeout_s: float, poll_s: float = 0.2) -> None:
    """Marks `rank` as present and waits until all `world_size` ranks are, for at most `timeout_s` seconds;
    then raises a UsageError naming the missing ranks."""
    store.set(f"joined/{rank}", str(os.getpid()))
    store.add("joined", 1)
    deadline = time.monotonic() + timeout_s
    while store.add("joined", 0) < world_size:
        if time.monotonic() >= deadline:
            missing = missing_ranks(store, world_size)
            raise UsageError(f"rank {rank} of {world_size} waited {timeout_s:g} s at the rendezvous, but rank(s) "
                             f"{', '.join(map(str, missing))} never joined; {_launch_hint(world_size)}")
        time.sleep(poll_s)


def missing_ranks(store: dist.Store, world_size: int) -> List[int]:
    """The ranks that have not marked themselves present in `store`."""
    return [r for r in range(world_size) if not store.check([f"joined/{r}"])]
