"""What this machine's CPU can do, and how much of it this process gets: the one probe that precision
policy, `auto`'s measurement, training and bench/ ask."""
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


def cpu_digest() -> str:
    """12 hex digits naming this CPU's arithmetic and speed (model, family/model, flags): what a cached
    measurement made on it is keyed by."""
    import hashlib

    return hashlib.sha256(repr((cpu_model(), cpu_generation(), sorted(cpu_flags()))).encode()).hexdigest()[:12]


def cpu_has_fast_bf16() -> bool:
    return any(f in cpu_flags() for f in FAST_BF16_FLAGS)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _thread_schedstats() -> dict[str, tuple[int, int]] | None:
    """Per thread of this process: (ns it ran, ns it waited, runnable, for a CPU), as the kernel's
    schedstat counts them; None where the kernel does not say (not Linux, no schedstat)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    stats = {}
    for tid in tasks:
        try:
            ran, waited, _ = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        stats[tid] = int(ran), int(waited)
    return stats or None


class CpuWait:
    """How much of the time this process's threads wanted a CPU, since this was made, they spent
    waiting for one: near 0 on an idle host, 0.5-0.7 with two busy programs beside it on 2 cores.
    A timing taken while it is high measured the other programs as much as the code timed."""

    def __init__(self):
        self._start = _thread_schedstats()

    def fraction(self) -> float | None:
        """Waited / (ran + waited) since made; None where the kernel does not say."""
        end = _thread_schedstats()
        if self._start is None or end is None:
            return None
        ran = waited = 0
        for tid, (r, w) in end.items():  # threads started meanwhile count from zero; ended ones drop out
            r0, w0 = self._start.get(tid, (0, 0))
            ran, waited = ran + r - r0, waited + w - w0
        return waited / (ran + waited) if ran + waited > 0 else 0.0
