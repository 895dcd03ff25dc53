"""How much memory a whole-image forward pass needs, and how much there is: a photo too large for whole-image
inference is refused with the advice to use --mode slide before the pass starts, instead of the kernel's
out-of-memory killer ending the process without a word.

The need is measured, not guessed: the model runs on three small probes (64, 96 and 128 px squares) with a
hook on every layer, and each layer's input + output bytes are fitted as a*H*W + b*(H + W) + c (exact for
convolutions with padding, such as VGG's 100 px); the largest layer at the photo's size plus the model's output
is the estimate.
"""
import os
import weakref
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from core.cli import UsageError

# Photos up to this many pixels per batch are not checked: their passes are small, and the probes would cost
# more than they save (training evaluation, ordinary photos).
CHECK_ABOVE_PIXELS = 2048 * 2048
PROBES = (64, 96, 128)
_FITS: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, List[Tuple[float, float, float]]]]" = \
    weakref.WeakKeyDictionary()


def _bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_bytes(v) for v in value)
    return 0


def _probe(model: nn.Module, size: int, device: torch.device) -> List[int]:
    """Input + output bytes of every leaf module, then the whole output, for one (1, 3, size, size) pass."""
    sizes: List[int] = []
    hooks = [m.register_forward_hook(lambda _m, i, o: sizes.append(_bytes(i) + _bytes(o)))
             for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return sizes + [_bytes(out)]


def _fit(model: nn.Module, device: torch.device) -> List[Tuple[float, float, float]]:
    """(a, b, c) per layer (the last: the output) with bytes = a*H*W + b*(H + W) + c, from the three probes."""
    key = (device.type, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    cached = _FITS.setdefault(model, {})
    if key not in cached:
        rows = [_probe(model, s, device) for s in PROBES]
        if len({len(r) for r in rows}) != 1:  # a model whose layers depend on the size: use the largest probe
            return [(r / PROBES[-1] ** 2, 0.0, 0.0) for r in rows[-1]]
        matrix = torch.tensor([[s * s, 2 * s, 1] for s in PROBES], dtype=torch.float64)
        values = torch.tensor(rows, dtype=torch.float64)  # (probes, layers)
        coefficients = torch.linalg.solve(matrix, values)  # (3, layers)
        cached[key] = [tuple(float(v) for v in col) for col in coefficients.T]
    return cached[key]


def _unwrapped(model: nn.Module) -> nn.Module:
    """The eager model inside torch.compile and DDP wrappers: probing it recompiles nothing, and runs no DDP
    collective (ranks reach their first large batch at different times)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def whole_image_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """About how many bytes a whole-image pass of `images` (N, 3, H, W) allocates at its peak."""
    n, _, height, width = images.shape
    fits = _fit(_unwrapped(model), images.device)

    def at(a: float, b: float, c: float) -> float:
        return max(a * height * width + b * (height + width) + c, 0.0)

    *layers, output = fits
    return int(n * (max((at(*f) for f in layers), default=0.0) + at(*output)))


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a pass could still allocate on `device`: free GPU memory plus what torch's cache holds unused;
    on the CPU the smaller of the system's MemAvailable and the room left under this process's cgroup limit
    (containers, SLURM jobs). None where it cannot be told (Apple GPUs, other systems)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    room = []
    try:
        with open("/proc/meminfo") as f:
            room += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # "max" (no limit) is not a number
            room.append(cap - used)
            break
    return min(room) if room else None


def check_whole_image_fits(model: nn.Module, images: torch.Tensor) -> None:
    """Raises a UsageError (the out-of-memory advice) if a whole-image pass of `images` would not fit."""
    n, _, height, width = images.shape
    if n * height * width <= CHECK_ABOVE_PIXELS or os.environ.get("FCN_SKIP_MEMORY_CHECK") == "1":
        return
    free = available_bytes(images.device)
    if free is None:
        return
    need = whole_image_bytes(model, images)
    if need > free:
        raise UsageError(f"out of memory: whole-image inference of {n} x {width}x{height} (WxH) photo(s) needs about "
                         f"{need / 2**30:.1f} GiB, but {max(free, 0) / 2**30:.1f} GiB is available on "
                         f"{images.device}; use --mode slide for large images (memory bounded by --window and "
                         f"--chunk), or lower -b/--batch-size")
