"""The CPU features that decide which INT8 weights are safe to run here (torch-free, no dependencies).

ONNX Runtime multiplies uint8 activations by int8 weights. With VNNI (AVX512-VNNI, AVX-VNNI, AMX) each
product is added straight into int32. Without it (plain AVX2 / AVX-512) the kernels add pairs of products
into int16 first (`pmaddubsw`), which saturates with full 8-bit weights (2 x 255 x 127 > 32767) and gives
wrong logits, silently. 7-bit weights (|w| <= 64: 2 x 255 x 64 = 32640) cannot saturate, so they are safe
on every CPU; 8-bit weights are only used where VNNI is present.

`current()` is what the SDK decides with: the flags of /proc/cpuinfo, or the `COSA_CPU_FEATURES`
override (comma- or space-separated flags, e.g. "avx2" or "avx2,avx512_vnni"; tests use it to take
both decisions on any machine). Anywhere the flags cannot be read (macOS, Windows, non-x86) the answer
is "no VNNI": the safe one. `hardware()` ignores the override: it decides whether ONNX Runtime must
use its exact (slower) u8 x u8 kernels for 8-bit weights, so even a wrong override never saturates.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

ENV_VAR = "COSA_CPU_FEATURES"
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = "/proc/cpuinfo"
# ONNX Runtime session option: s8 weights are shifted to u8 and run by u8 x u8 kernels, which never
# saturate; it only acts on x64 CPUs whose u8 x s8 kernels can saturate.
EXACT_KERNELS_OPTION = "session.x64quantprecision"


@dataclass(frozen=True)
class CpuInfo:
    """CPU feature flags and where they came from."""

    flags: frozenset[str]
    source: str

    @property
    def vnni(self) -> bool:
        """True when int8 dot products add into int32 (no saturation with 8-bit weights)."""
        return bool(self.flags & set(VNNI_FLAGS))

    def describe(self) -> str:
        """ "VNNI (avx512_vnni, avx_vnni; /proc/cpuinfo)" or "no VNNI (/proc/cpuinfo)"."""
        if self.vnni:
            return f"VNNI ({', '.join(f for f in VNNI_FLAGS if f in self.flags)}; {self.source})"
        return f"no VNNI ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return {"vnni": self.vnni, "source": self.source, "vnni_flags": [f for f in VNNI_FLAGS if f in self.flags]}


def parse_flags(text: str) -> frozenset[str]:
    """Flags of a comma- or space-separated list, lower case."""
    return frozenset(part for part in text.replace(",", " ").lower().split() if part)


def read_cpuinfo(path: str = CPUINFO) -> frozenset[str] | None:
    """The `flags` line of a Linux /proc/cpuinfo (x86 only; ARM writes `Features`); None when unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return parse_flags(line.split(":", 1)[1])
    except OSError:
        return None
    return None


@functools.cache
def hardware() -> CpuInfo:
    """This machine's flags (read once), ignoring `COSA_CPU_FEATURES`."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return CpuInfo(frozenset(), f"{machine or 'unknown'} CPU: not x86")
    flags = read_cpuinfo()
    if flags is None:
        return CpuInfo(frozenset(), f"flags unknown on {platform.system() or 'this system'}: no {CPUINFO}")
    return CpuInfo(flags, CPUINFO)


def current() -> CpuInfo:
    """The flags the SDK decides with: `COSA_CPU_FEATURES` when set, else `hardware()`."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        return CpuInfo(parse_flags(override), f"{ENV_VAR}={override}")
    return hardware()


def exact_kernels_needed(weight_bits: int | None) -> bool:
    """Whether an INT8 file with `weight_bits`-bit weights must run on ONNX Runtime's exact u8 x u8 kernels here.

    True for 8-bit (or unknown-width) weights unless this machine's hardware has VNNI; 7-bit weights never
    need them.
    """
    if weight_bits is not None and weight_bits <= 7:
        return False
    return not hardware().vnni
