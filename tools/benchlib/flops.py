"""FLOPs per image, the dense peak of the GPU in the precision a variant runs, and MFU."""
import functools
import re
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from .baselines import TV_BUILDERS
from .timing import timed

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s: (bf16/fp16, tf32). First match wins;
# NVL boards (lower clocks) are left out on purpose, so their peak gets measured.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0, 378.0),
    (r"H100|H200", 989.4, 494.7),
    (r"A100", 312.0, 156.0),
    (r"L40S", 362.1, 183.0),
    (r"\bL4\b", 121.0, 60.0),
    (r"\bA10\b", 125.0, 62.5),
)


@functools.lru_cache(maxsize=None)
def forward_flops(name: str, num_classes: int, aux: bool, size: Tuple[int, int]) -> int:
    """FLOPs of one fp32 forward pass of torchvision's model on one image: FlopCounterMode on the meta device
    (no memory, no compute), 2 FLOPs per multiply-add, convolutions and matmuls only."""
    with torch.device("meta"):
        model = TV_BUILDERS[name](weights=None, weights_backbone=None, aux_loss=aux, num_classes=num_classes)
        x = torch.empty(1, 3, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def precision_kind(amp: Optional[torch.dtype]) -> str:
    if amp is not None:
        return "bf16/fp16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


@functools.lru_cache(maxsize=None)
def peak_tflops(device: torch.device, kind: str) -> Tuple[Optional[float], str]:
    """(peak TFLOP/s, where it comes from) for the precision `kind` on `device`; None off CUDA."""
    if device.type != "cuda":
        return None, "n/a (CPU)"
    name = torch.cuda.get_device_name(device)
    peak = datasheet_peak(name, kind)
    if peak is not None:
        return peak, f"datasheet dense {kind} peak of {name}"
    return measure_matmul_tflops(device, kind), f"measured: best of 10 8192^3 {kind} matmuls ({name} not in the table)"


def datasheet_peak(name: str, kind: str) -> Optional[float]:
    """Dense peak TFLOP/s of GPU `name` for "bf16/fp16" or "tf32" from PEAK_TFLOPS; None if not listed."""
    if kind == "fp32" or "NVL" in name:
        return None
    for pattern, half, tf32 in PEAK_TFLOPS:
        if re.search(pattern, name):
            return half if kind == "bf16/fp16" else tf32
    return None


def measure_matmul_tflops(device: torch.device, kind: str, n: int = 8192) -> float:
    """Best TFLOP/s of a large square matmul in the precision `kind`."""
    dtype = torch.bfloat16 if kind == "bf16/fp16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        a @ b  # cuBLAS picks its kernel on the first call
        best = min(timed(lambda: a @ b, 1, device) for _ in range(10))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n ** 3 / best / 1e12


def compute_use(flops_per_image: float, images_per_s: float, device: torch.device,
                amp: Optional[torch.dtype]) -> Dict[str, Any]:
    """FLOPs per image, achieved TFLOP/s and MFU against the dense peak of the precision the variant runs."""
    achieved = flops_per_image * images_per_s / 1e12
    peak, source = peak_tflops(device, precision_kind(amp))
    return {"gflops_per_image": flops_per_image / 1e9, "achieved_tflops": achieved, "peak_tflops": peak,
            "peak_source": source, "mfu": achieved / peak if peak else None}


def add_compute(numbers: Dict[str, Dict], flops: float, device: torch.device, amp: Optional[torch.dtype]) -> None:
    numbers["baseline"].update(compute_use(flops, numbers["baseline"]["images_per_s"], device, None))
    numbers["ours"].update(compute_use(flops, numbers["ours"]["images_per_s"], device, amp))
