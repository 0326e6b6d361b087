"""Backend selection: `create_backend("auto" | "torch" | "onnxruntime" | "tensorrt", ...)`.

`auto` takes the fastest backend this machine has, in the order measured by bench/:
TensorRT (a cached engine for this GPU) > torch CUDA > torch CPU. ONNX Runtime on the CPU is
slower than torch with bf16 and about even in fp32, so it is chosen only by name. The
returned reason says what was picked and why, so users never have to guess.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from srtrt.cache import cache_dir
from srtrt.errors import SrtrtError

from srtrt.engine.backends.base import Backend, TileDefaults
from srtrt.engine.backends.precision import auto_precision

__all__ = ["Backend", "TileDefaults", "Selection", "create_backend"]


@dataclass
class Selection:
    backend: Backend
    reason: str


def _device(device: str | None) -> torch.device:
    if device:
        d = torch.device(device)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise SrtrtError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
        return d
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.backends.torch_backend import TorchBackend

    return TorchBackend(view, device, precision)


def _onnxruntime(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.toolchain.export import export_onnx, state_dict_sha256

    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    if precision not in ("fp32", "fp16"):
        raise SrtrtError(f"onnxruntime runs fp32 or fp16 graphs, not {precision}")
    sha = getattr(view, "checkpoint_sha256", "") or state_dict_sha256(view)
    path = cache_dir("onnx") / f"{sha[:16]}-x{view.scale}-{precision}.onnx"
    if not path.exists():
        export_onnx(view, path, precision=precision)
    return OnnxRuntimeBackend(path, view.scale, view.radius, device=str(device))


def _tensorrt(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend, available

    ok, why = available()
    if not ok:
        raise SrtrtError(why)
    return TensorRTBackend.from_cache(view.checkpoint_sha256, precision, device)


_MAKERS = {"torch": _torch, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def create_backend(name: str = "auto", model: str | None = None, precision: str = "auto",
                   device: str | None = None, view=None) -> Selection:
    """Build the named backend (or the fastest available for `auto`) for a checkpoint."""
    import srtrt

    view = view if view is not None else srtrt.load_model(model)
    dev = _device(device)
    if precision == "auto":
        precision, why_precision = auto_precision(name if name != "auto" else "torch", dev)
    else:
        why_precision = "as asked"
    if name != "auto":
        if name not in _MAKERS:
            raise SrtrtError(f"unknown backend {name!r} (auto, {', '.join(_MAKERS)})")
        backend = _MAKERS[name](view, dev, precision)
        return Selection(backend, f"{backend.describe()}: as asked; precision {why_precision}")

    if dev.type == "cuda":
        try:
            backend = _tensorrt(view, dev, "fp16" if precision == "auto" else precision)
            return Selection(backend, f"{backend.describe()}: a TensorRT engine for this GPU is cached")
        except (SrtrtError, ImportError) as e:
            fallback = f"TensorRT not used ({e})"
        backend = _torch(view, dev, precision)
        return Selection(backend, f"{backend.describe()}: fastest available on {dev}; {fallback}")
    backend = _torch(view, dev, precision)
    return Selection(backend, f"{backend.describe()}: no CUDA device; precision {why_precision}")
