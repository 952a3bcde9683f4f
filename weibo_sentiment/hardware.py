"""What this machine's CPU can do, as it reports it: the vector and matrix extensions that decide which inference
and training modes are fast here (bf16 needs AVX512_BF16 or AMX to be faster than fp32; int8 runs best with VNNI).

Read from ``/proc/cpuinfo`` (Linux) and torch's own CPU capability; never assumed from the CPU's name.
"""

from __future__ import annotations

import functools
import platform
import warnings
from pathlib import Path

import torch

# /proc/cpuinfo flag -> the name benchmarks and messages print
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512_VNNI",
    "avx_vnni": "AVX_VNNI",
    "avx512_bf16": "AVX512_BF16",
    "amx_bf16": "AMX_BF16",
    "amx_int8": "AMX_INT8",
}
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist or says nothing)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 matrix products run in hardware on this CPU (otherwise they are emulated, slower than fp32)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16)


def describe_cpu() -> str:
    """One line for benchmark reports: model, cores, the features that matter here, torch's kernel level."""
    flags = cpu_flags()
    present = [name for flag, name in FEATURES.items() if flag in flags]
    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads; {', '.join(present) or 'no AVX2'}; "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def warn_bf16_emulated() -> None:
    """bf16 asked for on a CPU that would emulate it: say so rather than run slower in silence."""
    warnings.warn("bf16 on this CPU: it has neither AVX512_BF16 nor AMX, so bf16 arithmetic is emulated and runs "
                  "slower than fp32; use precision 32-true (or onnxruntime int8 to label faster)", stacklevel=3)
