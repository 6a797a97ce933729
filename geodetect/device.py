"""Compute device selection, mixed precision and out-of-memory handling (shared by train/infer).

`--device` accepts auto | cpu | cuda | cuda:N. Asking for CUDA where there is none is a user
error (DeviceError, one line), never a silent fallback to CPU.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from geodetect.errors import DeviceError, is_out_of_memory

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a `--device` value; raises DeviceError when it cannot be used.

    "auto" (or None) picks the first CUDA device when there is one, else the CPU.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    match = _SPEC.match(text)
    if match is None:
        raise DeviceError(f"device '{spec}' not understood; use auto, cpu, cuda or cuda:N")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise DeviceError(f"device '{spec}' not understood; use auto, cpu, cuda or cuda:N")
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        if index not in (None, "0"):
            raise DeviceError(f"device '{spec}' not understood; use cpu without an index")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but is not available; use --device cpu")
    n = torch.cuda.device_count()
    i = int(index) if index is not None else 0
    if i >= n:
        raise DeviceError(f"CUDA device {i} was asked for; only cuda:0..cuda:{n - 1} exist")
    return torch.device("cuda", i)


def use_amp(device: torch.device, enabled: bool = True) -> bool:
    """Mixed precision only on CUDA: on CPU bfloat16 autocast is slower for small convs."""
    return enabled and device.type == "cuda"


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """float16 autocast on CUDA when enabled, a no-op elsewhere."""
    if use_amp(device, enabled):
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            yield
    else:
        yield


def pin_memory(device: torch.device) -> bool:
    """Page-locked host buffers speed up host→GPU copies; pointless on CPU."""
    return device.type == "cuda"


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is a CUDA out-of-memory error that a smaller batch can avoid."""
    return isinstance(exc, RuntimeError) and is_out_of_memory(exc)


def empty_cache(device: torch.device) -> None:
    """Release cached blocks after an OOM so the retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_bf16_reason() -> str | None:
    """None when this CPU computes bfloat16 natively (AVX512-BF16 or AMX), else why not.

    Without them torch emulates bfloat16 and CPU autocast is slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return "no /proc/cpuinfo to read the CPU's flags from"
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return None
    return "this CPU lacks AVX512-BF16 and AMX (no avx512_bf16/amx_bf16 in /proc/cpuinfo)"
