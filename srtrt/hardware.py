"""What this machine's CPU can do: the one probe that precision policy, training and bench/ ask."""
from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from pathlib import Path

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matmul in hardware (AMX tiles or AVX512-BF16)


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _field(name: str) -> str:
    match = re.search(rf"^{name}\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return match.group(1).strip() if match else ""


def cpu_flags() -> frozenset[str]:
    return frozenset(_field("flags").split())


def cpu_model() -> str:
    return _field("model name") or platform.processor() or "unknown CPU"


def cpu_generation() -> str:
    """'family F model M' from /proc/cpuinfo: one model name ("AMD EPYC") covers several generations."""
    family, model = _field("cpu family"), _field("model")
    return f"family {family} model {model}" if family and model else ""


def cpu_has_fast_bf16() -> bool:
    return any(f in cpu_flags() for f in FAST_BF16_FLAGS)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
