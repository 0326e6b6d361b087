"""`--precision auto`: the fastest precision that passes the quality guard, for this model, on this device.

The guard (bench/quality_guard.py) runs a model's backends and precisions on Set5 and records
each path's Y-PSNR change against torch fp32 in `srtrt/weights/quality_guard.json`, under the
sha256 of the checkpoint it measured. A precision whose change is within QUALITY_GUARD_DB is
used by default; an unmeasured one is not, and a model nobody measured runs in fp32: one
model's numbers say nothing about another's.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from srtrt.errors import SrtrtError
from srtrt.hardware import cpu_has_fast_bf16

QUALITY_GUARD_DB = 0.05
GUARD_FORMAT, GUARD_VERSION = "srtrt-quality-guard", 2
UNMEASURED = ("no quality-guard measurement for this model; bench/quality_guard.py --model PATH, in srtrt's "
              "source tree, measures one")


# Significant bits of a pixel each precision keeps: bf16's 8-bit mantissa, int8's 256 levels a tensor,
# fp16's 11 bits. The guard judges them on 8-bit outputs; a deeper input needs more than these
# (a 16-bit PNG through openvino int8 was 1449 16-bit levels off fp32, against 128 for rounding to 8 bits).
SIGNIFICANT_BITS = {"int8": 8, "bf16": 8, "fp16": 11, "fp32": 24}


def keeps_bits(precision: str, bits: int) -> bool:
    """Whether `precision` computes an input of `bits` bits a sample without losing what it holds."""
    return bits <= SIGNIFICANT_BITS.get(precision, 24)


def guard_path() -> Path:
    import srtrt

    return Path(srtrt.__file__).parent / "weights" / "quality_guard.json"


@cache
def _guard_file() -> dict:
    from srtrt.sidecar import read_versioned_json

    try:
        return read_versioned_json(guard_path(), GUARD_FORMAT, GUARD_VERSION, "quality guard")
    except SrtrtError:
        return {}  # no usable measurements: every model runs in fp32


def measured_paths(model_sha256: str, guard: dict | None = None) -> dict[str, dict]:
    """This model's entries, "{backend}-{device}-{precision}" -> {delta_db, psnr, ...}; {} if unmeasured."""
    guard = _guard_file() if guard is None else guard
    return guard.get("models", {}).get(model_sha256, {}).get("paths", {})


def cpu_bf16_reason(fast_bf16_cpu: bool | None = None) -> str:
    """Why bf16 is not used on this CPU, or "" when the CPU does bf16 in hardware."""
    fast = cpu_has_fast_bf16() if fast_bf16_cpu is None else fast_bf16_cpu
    return "" if fast else "this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated"


def passes_guard(backend: str, device_type: str, precision: str, model_sha256: str, guard: dict | None = None,
                 exact: bool = False, calibration: str | None = None) -> tuple[bool, str]:
    """Whether `precision` keeps this model's Set5 Y-PSNR within the guard, and the measurement that says so.

    A path measured exactly is judged by its own number. An unmeasured one (a GPU no guard ran
    on yet) is judged, unless `exact`, by the worst measurement of the same number format on
    another path of the same model, since fp16/bf16 storage of weights and activations is what
    costs the accuracy; the reason says so. `calibration`: the digest of the model's int8 ranges
    (quantize.calibration_digest); an int8 measurement of other ranges does not count.
    """
    paths = measured_paths(model_sha256, guard)
    if not paths:
        return False, UNMEASURED
    key = f"{backend}-{device_type}-{precision}"
    if key in paths:
        entries, where = [paths[key]], ""
    else:
        proxies = [] if exact else sorted(k for k in paths if k.endswith(f"-{precision}"))
        if not proxies:
            return False, f"{key} has no quality-guard measurement for this model"
        entries, where = [paths[k] for k in proxies], f" (measured as {', '.join(proxies)})"
    if precision == "int8" and calibration is not None and any(e.get("calibration") != calibration for e in entries):
        return False, (f"{key} was measured with other int8 ranges than this model's ({calibration}): "
                       "bench/quality_guard.py, in srtrt's source tree, measures these")
    delta = max((e["delta_db"] for e in entries), key=abs)
    ok = abs(delta) <= QUALITY_GUARD_DB
    verdict = "within" if ok else "outside"
    return ok, f"{precision} changes Set5 Y-PSNR by {delta:+.3f} dB{where}, {verdict} the ±{QUALITY_GUARD_DB} dB guard"


def auto_precision(backend: str, device: torch.device, model_sha256: str, guard: dict | None = None,
                   fast_bf16_cpu: bool | None = None) -> tuple[str, str]:
    """(precision, reason) for `--precision auto` of `backend` running the model with this sha256."""
    if device.type == "cuda":
        from srtrt.engine.toolchain.engine_cache import PRECISIONS as PLAN_PRECISIONS

        candidates = ["fp16", "bf16"]
        if backend == "tensorrt":  # a plan is built at a precision the engine cache keeps (no bf16)
            candidates = [p for p in candidates if p in PLAN_PRECISIONS]
        elif backend != "torch":
            candidates = ["fp16"]
    elif backend in ("torch", "openvino"):
        if not measured_paths(model_sha256, guard):  # the first reason: on any CPU, it rules out every precision
            return "fp32", f"fp32 ({UNMEASURED})"
        if no_bf16 := cpu_bf16_reason(fast_bf16_cpu):
            return "fp32", f"fp32 ({no_bf16})"
        candidates = ["bf16"]
    else:
        candidates = []
    if not candidates:
        return "fp32", "fp32 (no faster precision on this device)"
    if not measured_paths(model_sha256, guard):
        return "fp32", f"fp32 ({UNMEASURED})"
    reasons = []
    for p in candidates:
        ok, why = passes_guard(backend, device.type, p, model_sha256, guard)
        if ok:
            return p, why
        reasons.append(why)
    return "fp32", f"fp32 ({'; '.join(reasons)})"
