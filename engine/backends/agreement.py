"""The precision guard for a model without a test set (a community model): a reduced precision
is allowed when the backend's output agrees with the same model's torch fp32 output to at least
AGREEMENT_DB dB PSNR on reference content.

The embedded models are judged on Set5 (precision.py, measured in bench/). A community model
has no such table and its users have no test set to hand, but what reduced precision costs is
how far it moves the model's own output, so that is measured instead: on first use of each
(backend, precision), on zoo.reference_image content (photo-like shading, edges and texture),
cached by the weights' sha256 and the backend library's version. 45 dB is about a third of
an 8-bit level of RMS difference: OpenVINO bf16 agreed with fp32 to 49.5 dB (Compact) and
56.9 dB (RRDBNet x4plus) on real weights (model-zoo notes), while an fp16 overflow or a NaN
lands far below it.
"""
from __future__ import annotations

import math

import torch

from srtrt.errors import SrtrtError

AGREEMENT_DB = 45.0
REFERENCE_SIDE = 96  # LR pixels: one window, small enough to measure in seconds even for RRDBNet


def reference_side(multiple_of: int = 1, minimum: int = 1) -> int:
    """The side of the content the guard measures a model on: REFERENCE_SIDE, as the model takes it."""
    from srtrt.engine.datapath.tiles import allowed_side

    return allowed_side(REFERENCE_SIDE, multiple_of, minimum)


def _library_version(backend: str) -> str:
    if backend == "openvino":
        from srtrt.engine.backends.openvino_backend import import_openvino

        return "openvino-" + import_openvino().get_version().split("-")[0]
    return "torch-" + torch.__version__


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float().cpu().clamp(0, 1) - b.float().cpu().clamp(0, 1)) ** 2).item()
    if math.isnan(mse):
        return -math.inf  # NaNs: as far from agreement as it gets
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def measured_agreement(view, backend: str, precision: str, make, device: str = "cpu") -> float:
    """PSNR (dB) of `make()`'s output (a Backend for this path, on `device`) against torch fp32 on
    the CPU, cached."""
    from srtrt import receptive_field, zoo
    from srtrt.engine.backends.torch_backend import TorchBackend

    def measure() -> dict:
        facts = view.facts
        lr = zoo.reference_image(reference_side(facts.multiple_of, facts.minimum), facts.channels)
        reference = TorchBackend(view, "cpu", "fp32").infer(lr)
        with make() as candidate:  # the worst of its compiled forms (OpenVINO: dynamic and static)
            value = min(psnr(out, reference) for out in candidate.every_form_infer(lr))
        return {"psnr_db": value if math.isfinite(value) else (999.0 if value > 0 else -999.0)}

    form = precision
    if precision == "int8":  # a new calibration is a new int8 model
        from srtrt.engine.toolchain.quantize import int8_graph_tag

        form = f"int8-{int8_graph_tag(view.int8_calibration)}"
    # v2: every compiled form judged (before: the dynamic-shape model alone, for OpenVINO); v3: per CPU (a
    # CPU with bf16 instructions runs OpenVINO int8's float layers in bf16, one without in fp32: one SPAN's
    # int8 agreed to 91.7 dB on the one, 40.6 dB on the other, and a shared cache carried the first across)
    kind = f"agreement-v3-{backend}-{device}-{form}-{_library_version(backend)}{_cpu_tag(device)}"
    return receptive_field.cached(kind, view.checkpoint_sha256, measure, _a_figure)["psnr_db"]


def _cpu_tag(device: str) -> str:
    """"-" and a digest of the CPU whose arithmetic a CPU path's output is; "" on a GPU."""
    from srtrt.hardware import cpu_digest

    return "" if device != "cpu" else "-" + cpu_digest()


def _a_figure(entry: dict) -> bool:
    value = entry.get("psnr_db")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def agreement_judge(view, make_backend, device: str = "cpu"):
    """A judge for backends.cpu_choice: (backend, precision) -> (allowed, reason), measuring on
    demand; `make_backend(backend, precision)` builds the path on `device` (its type: "cpu", "cuda")."""
    def judge(backend: str, precision: str) -> tuple[bool, str]:
        if refusal := view.facts.refusal(precision):
            return False, refusal
        try:
            value = measured_agreement(view, backend, precision, lambda: make_backend(backend, precision), device)
        except SrtrtError as e:  # the path cannot run this model at all (an export that fails)
            return False, str(e)
        except Exception as e:  # a network that breaks in this precision (dtype mixes in its forward) fails the guard
            return False, f"{precision} fails on this model ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ok = value >= AGREEMENT_DB
        floated = len((view.int8_calibration or {}).get("float", [])) if precision == "int8" else 0
        mixed = f" with {floated} convs left in float by its calibration" if floated else ""
        return ok, (f"{precision}{mixed} agrees with this model's fp32 output to {value:.1f} dB on reference content "
                    f"({'at or above' if ok else 'below'} the {AGREEMENT_DB:.0f} dB guard; measured once, cached)")
    return judge
