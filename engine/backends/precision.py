"""`--precision auto`: the fastest precision that passes the quality guard on this device.

The guard (bench/quality_guard.py) measures each reduced precision of the default model on
Set5 and records the Y-PSNR change against fp32 in `srtrt/weights/quality_guard.json`. A
precision whose change is within QUALITY_GUARD_DB is used by default; an unmeasured one is not.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from srtrt.hardware import cpu_has_fast_bf16

QUALITY_GUARD_DB = 0.05


@lru_cache(maxsize=None)
def _guard_file() -> dict:
    import srtrt

    path = Path(srtrt.__file__).parent / "weights" / "quality_guard.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def passes_guard(backend: str, device_type: str, precision: str, guard: dict | None = None) -> tuple[bool, str]:
    """Whether `precision` keeps Set5 Y-PSNR within the guard, and the measurement that says so.

    A path measured exactly is judged by its own number. An unmeasured one (a GPU no guard ran
    on yet) is judged by the worst measurement of the same number format on another path, since
    fp16/bf16 storage of weights and activations is what costs the accuracy; the reason says so.
    """
    guard = _guard_file() if guard is None else guard
    key = f"{backend}-{device_type}-{precision}"
    if key in guard:
        entries, where = [guard[key]], ""
    else:
        proxies = sorted(k for k in guard if k.endswith(f"-{precision}"))
        if not proxies:
            return False, f"{precision} has no quality-guard measurement"
        entries, where = [guard[k] for k in proxies], f" (measured as {', '.join(proxies)})"
    delta = max((e["delta_db"] for e in entries), key=abs)
    ok = abs(delta) <= QUALITY_GUARD_DB
    verdict = "within" if ok else "outside"
    return ok, f"{precision} changes Set5 Y-PSNR by {delta:+.3f} dB{where}, {verdict} the ±{QUALITY_GUARD_DB} dB guard"


def auto_precision(backend: str, device: torch.device, guard: dict | None = None,
                   fast_bf16_cpu: bool | None = None) -> tuple[str, str]:
    """(precision, reason) for `--precision auto`."""
    if device.type == "cuda":
        candidates = ["fp16", "bf16"] if backend in ("torch", "tensorrt") else ["fp16"]
    elif backend == "torch" and (cpu_has_fast_bf16() if fast_bf16_cpu is None else fast_bf16_cpu):
        candidates = ["bf16"]
    else:
        candidates = []
    reasons = []
    for p in candidates:
        ok, why = passes_guard(backend, device.type, p, guard)
        if ok:
            return p, why
        reasons.append(why)
    return "fp32", "fp32" + (f" ({'; '.join(reasons)})" if reasons else " (no faster precision on this device)")
