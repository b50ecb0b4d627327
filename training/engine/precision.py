"""Which dtype the training forward passes autocast to (`TrainConfig.amp`), decided per machine for "auto".

bf16 autocast pays only where the CPU multiplies bf16 natively: on a 2-core EPYC with AVX512-BF16 a
`tiny` co-training step took 1.31 s instead of 2.21 s, while with oneDNN capped to AVX-512 without BF16, or
to AVX2, the emulated bf16 step was 1.8x and 8x slower than float32 (`benchmarks/cpu_precision.py`). Only
x86 CPU flags are known here: other CPUs train in float32 under "auto". Losses and pseudo-labels stay in
float32 either way (`method/step.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import torch

from cosa_sdk.training.config_checks import normalize_amp

# CPU feature flags (as Linux names them in /proc/cpuinfo) that mean bf16 matrix products run natively
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: torch.device, *, flags: Iterable[str] | None = None) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why): the CPU's flags, or what CUDA reports."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"this GPU {'supports' if supported else 'does not support'} bf16"
    if device.type != "cpu":
        return False, f"bf16 autocast is not decided automatically on {device.type}"
    have = set(cpu_flags() if flags is None else flags)
    found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in have]
    if found:
        return True, f"this CPU has {', '.join(found)}"
    return False, f"this CPU has no native bf16 ({' / '.join(NATIVE_BF16_CPU_FLAGS)})"


def autocast_dtype(
    amp: str, device: torch.device, *, flags: Iterable[str] | None = None
) -> tuple[torch.dtype | None, str]:
    """(the dtype the forward passes autocast to, None for float32; a one-line note saying why)."""
    mode = normalize_amp(amp)
    if mode == "off":
        return None, "precision: float32 (amp=off)"
    if mode == "bf16":
        return torch.bfloat16, "precision: bf16 autocast, float32 losses (amp=bf16)"
    native, why = native_bf16(device, flags=flags)
    if native:
        return torch.bfloat16, f"precision: bf16 autocast, float32 losses (amp=auto: {why}; amp=off for float32)"
    return None, f"precision: float32 (amp=auto: {why}; amp=bf16 forces bf16 autocast)"
