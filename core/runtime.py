"""The runtime policy: device, autocast dtype, memory format and compile, decided by one function from one
flag group, for training, evaluation, prediction, export and the benchmark alike.

Defaults (the same in every script, so that predict.py writes exactly the mask validation.py scores):
- `--device auto`: the first CUDA GPU, else an Apple GPU (MPS), else the CPU.
- `--amp` off: fp32 numbers are the ones the reference recipes publish and the ones that reproduce across
  machines; `--amp` turns on bf16 autocast (fp16 with a gradient scaler where bf16 is not native; on a CPU
  without bf16 in hardware it stays fp32 and says so, since autocast there is far slower).
- `--channels-last` on with CUDA, where cuDNN's NHWC kernels are faster; off elsewhere.
- `--compile` off: compiling costs minutes on first use and is not available on every platform.
"""
import argparse
import contextlib
import platform
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

DEVICE_HELP = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # None: fp32
    channels_last: bool = False
    compile: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")

    @property
    def pin_memory(self) -> bool:
        """Page-locked loader batches: they make the host-to-GPU copies asynchronous (nothing to gain elsewhere)."""
        return self.device.type == "cuda"

    @property
    def fused_optimizer(self) -> bool:
        """The single-kernel optimizer step, which torch has for CUDA (elsewhere the multi-tensor one)."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The training's gradient scaler: enabled for fp16 only (bf16 and fp32 gradients do not underflow)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def set_backend_flags(self, deterministic: bool = False) -> None:
        """Process-wide kernel choices: deterministic algorithms (bit-exact reruns, slower on a GPU), else cuDNN's
        benchmark mode on CUDA (the crop size is fixed, so the fastest convolution algorithms are found once)."""
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def describe(self) -> str:
        return f"{self.device}, {self.precision}, {'channels-last' if self.channels_last else 'contiguous'}" + (
            ", compiled" if self.compile else "")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device alone, for a script that only passes it on (tools/demo.py)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_runtime_flags(parser: argparse.ArgumentParser, compile_flag: bool = True) -> None:
    """--device, --amp, --amp-dtype, --channels-last and --compile: declared here for every script."""
    group = parser.add_argument_group("runtime")
    add_device_flag(group)
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                       help="mixed precision (autocast); off by default so that numbers are exact fp32")
    group.add_argument("--amp-dtype", default="auto", choices=("auto", "bf16", "fp16"),
                       help="autocast dtype with --amp; auto = bf16 where the device runs it natively, else fp16 on a "
                            "GPU (training adds a gradient scaler) and fp32 on a CPU")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory format (default: on with CUDA, off elsewhere)")
    if compile_flag:
        group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                           help="torch.compile the model (minutes of compilation on first use)")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: Optional[str] = "auto", local_rank: int = 0) -> torch.device:
    """The torch.device for `--device`: "cuda" becomes cuda:<local_rank>; "auto" picks CUDA, then MPS, then
    the CPU. Asking for a device this machine lacks is a ValueError that says what it has."""
    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text}: not a device; use {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine; use --device cpu"
                             + (" or --device mps" if mps_available() else ""))
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", local_rank % count)
        elif dev.index >= count:
            raise ValueError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        if not mps_available():
            raise ValueError(f"--device {text}: no Apple GPU (MPS) is available on this machine (it needs macOS "
                             f"12.3+ on Apple silicon or an AMD GPU, and a torch built with MPS); use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {text}: unsupported device type {dev.type!r}; use {DEVICE_HELP}")
    return dev


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _probe(function: Callable[[], bool]) -> bool:
    try:
        return bool(function())
    except (AttributeError, RuntimeError):  # a torch without the probe, or a CPU it does not know
        return False


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware: AVX512-BF16 or AMX on x86, the BF16 extension on Arm
    (as oneDNN detects it). Without it, oneDNN has no fast bf16 convolution and autocast is far slower than
    fp32: a 3x3 convolution ran 420x slower in bf16 than in fp32 on an AVX2 CPU."""
    if _is_x86():
        return _probe(lambda: torch.cpu._is_avx512_bf16_supported()) or \
            _probe(lambda: torch.cpu._is_amx_tile_supported())
    return _probe(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_fp16_native() -> bool:
    """Whether oneDNN has a fast fp16 path on this CPU (AMX-FP16 on x86, FP16 arithmetic on Arm)."""
    if _is_x86():
        return _probe(lambda: torch.cpu._is_amx_fp16_supported())
    return _probe(lambda: torch.ops.mkldnn._is_mkldnn_fp16_supported())


def amp_dtype_for(device: torch.device, choice: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype when AMP is asked for: `choice` "bf16" or "fp16", or "auto": bf16 where the GPU
    has it natively (Ampere and newer), fp16 on older GPUs and on Apple GPUs, bf16 on CPUs that have it in
    hardware, and None (fp32) on other CPUs, where autocast would only be slower."""
    if choice in ("bf16", "fp16"):
        return torch.bfloat16 if choice == "bf16" else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16_native() else None
    try:  # the default also counts emulated bf16, slower than fp16
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument, where the answer meant native support
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def resolve_runtime(args: argparse.Namespace, local_rank: int = 0,
                    device: Optional[torch.device] = None) -> Runtime:
    """The one function that turns the runtime flags into a Runtime. `device` skips resolving --device again
    (the distributed set-up resolves it first, to pick the backend)."""
    dev = device if device is not None else resolve_device(getattr(args, "device", "auto"), local_rank)
    amp = None
    if getattr(args, "amp", False):
        choice = getattr(args, "amp_dtype", "auto")
        amp = amp_dtype_for(dev, choice)
        note = cpu_amp_note(dev, choice, amp)
        if note and local_rank == 0:
            print(note, file=sys.stderr, flush=True)
    channels_last = getattr(args, "channels_last", None)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    return Runtime(dev, amp, bool(channels_last), bool(getattr(args, "compile", False)))


def cpu_amp_note(device: torch.device, choice: str, amp: Optional[torch.dtype]) -> Optional[str]:
    """The line to print when --amp on this CPU is dropped (auto) or slow (a dtype forced without hardware)."""
    if device.type != "cpu":
        return None
    if amp is None:
        return ("note: --amp: this CPU has no bf16 arithmetic in hardware (AVX512-BF16 or AMX; BF16 on Arm), "
                "where autocast runs far slower than fp32; running in fp32 (--amp-dtype bf16 forces bf16)")
    native = cpu_bf16_native() if amp == torch.bfloat16 else cpu_fp16_native()
    if native:
        return None
    name = "bf16" if amp == torch.bfloat16 else "fp16"
    return (f"warning: --amp-dtype {name}: this CPU has no {name} arithmetic in hardware; autocast will run far "
            f"slower than fp32 (drop --amp to run in fp32)")


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """torch.autocast for `amp_dtype`, or a no-op when it is None (fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def compile_model(model: torch.nn.Module, runtime: Runtime, warn=print) -> torch.nn.Module:
    """torch.compile(model) when the runtime asks for it, falling back to eager with a message."""
    if not runtime.compile:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # unsupported platform or Python version
        warn(f"--compile unavailable here ({type(e).__name__}: {e}); running eagerly")
        return model
