"""Timing: warm-up, alternating rounds, images/s, latency and the ratios ours / baseline."""
import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from core.runtime import synchronize

Unit = Callable[[], Any]


def timed(unit: Unit, n: int, device: torch.device) -> float:
    """Wall time of n units, with a device sync before the first and after the last (none in between)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        unit()
    synchronize(device)
    return time.perf_counter() - start


def start(build: Callable[[], Unit], warmup: int, device: torch.device) -> Tuple[Unit, Optional[float]]:
    """Builds one variant on the device and warms it up while the other waits; on CUDA, then measures the
    peak memory of one more unit, counting only what this variant allocated (MiB; None elsewhere)."""
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    unit = build()
    for _ in range(warmup):
        unit()
    if device.type != "cuda":
        return unit, None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    unit()
    synchronize(device)
    return unit, (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def rss_mib() -> Optional[float]:
    """The process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_during(work: Callable[[], object], every_s: float = 0.002) -> Tuple[object, Optional[float]]:
    """(work(), the peak resident memory above the level before it, MiB): a thread samples /proc/self/statm,
    since ru_maxrss is the whole process's peak and would charge every variant with the largest one's."""
    start = rss_mib()
    if start is None:
        return work(), None
    peak, done = [start], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib() or 0.0)
            time.sleep(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], rss_mib() or 0.0) - start


def split(iters: int, rounds: int) -> List[int]:
    """iters units in min(rounds, iters) rounds of near-equal length."""
    rounds = min(rounds, iters)
    return [iters // rounds + (r < iters % rounds) for r in range(rounds)]


def interleave(units: Dict[str, Unit], counts: List[int], device: torch.device,
               per_unit: bool) -> Dict[str, List[List[float]]]:
    """Times the variants in alternating rounds; per round, one block time, or one time per unit."""
    times: Dict[str, List[List[float]]] = {name: [] for name in units}
    for n in counts:
        for name, unit in units.items():
            times[name].append([timed(unit, 1, device) for _ in range(n)] if per_unit else [timed(unit, n, device)])
    return times


def throughput(times: List[List[float]], counts: List[int], images_per_unit: int) -> Dict[str, Any]:
    total = sum(map(sum, times))
    images = sum(counts) * images_per_unit
    return {"images_per_s": images / total, "timed_images": images, "timed_s": total,
            "round_images_per_s": [n * images_per_unit / sum(t) for n, t in zip(counts, times)]}


def latency(times: List[List[float]]) -> Dict[str, float]:
    flat = [t * 1000 for r in times for t in r]
    return {"latency_ms_mean": statistics.fmean(flat), "latency_ms_median": statistics.median(flat),
            "latency_ms_min": min(flat)}


def run_variants(builds: Dict[str, Callable[[], Unit]], warmup: int, iters: int, rounds: int, device: torch.device,
                 images_per_unit: int, per_unit: bool = False) -> Tuple[Dict[str, Any], Dict[str, Dict]]:
    """Starts each variant alone (build, warm-up, memory; the peak host memory above the level before it), then
    times all of them in alternating rounds."""
    units, numbers = {}, {}
    for name, build in builds.items():
        (units[name], memory), rss = peak_rss_during(lambda: start(build, warmup, device))
        numbers[name] = {"peak_memory_mib": memory, "peak_rss_mib": rss}
    counts = split(iters, rounds)
    for name, times in interleave(units, counts, device, per_unit).items():
        numbers[name].update(throughput(times, counts, images_per_unit))
        if per_unit:
            numbers[name].update(latency(times))
    return units, numbers


def ratios(baseline: Dict[str, Any], ours: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """ours / baseline: above 1 is better for images/s, below 1 is better for latency and memory.

    Also per round: rounds are adjacent in time, so their ratios cancel slow changes of machine load, and
    their median ignores a round that another process disturbed.
    """
    per_round = [o / b for o, b in zip(ours["round_images_per_s"], baseline["round_images_per_s"])]
    out = {"images_per_s": ours["images_per_s"] / baseline["images_per_s"], "round_images_per_s": per_round,
           "median_round_images_per_s": statistics.median(per_round)}
    for key, name in (("latency_ms_mean", "latency_mean"), ("latency_ms_median", "latency_median"),
                      ("peak_memory_mib", "peak_memory")):
        if baseline.get(key):
            out[name] = ours[key] / baseline[key]
    return out
