"""Out of memory: recognise it and step down to a smaller tile batch, then a smaller tile.

A tile batch's activations are what fill the GPU (or, on the CPU, the host's memory under a
ulimit, a cgroup or other work), so the fallback for an image that runs out of memory is to
retry it with half the batch (down to one tile), then with half the tile core (down to
`MIN_CORE` LR pixels, or until the window stops shrinking). Tiled output equals the whole-image
output whatever the tile, so a retried image is the same image, only slower.
"""
from __future__ import annotations

from srtrt.engine.datapath.runtime import TiledUpscaler

MIN_CORE = 32  # LR pixels: below this the margins dominate the work of a window

# Messages of allocation failures that do not come as torch.cuda.OutOfMemoryError:
# onnxruntime ("Failed to allocate memory for requested buffer", BFC arena, CUDA error 2),
# TensorRT contexts and cuDNN/cuBLAS workspaces, and older torch builds.
# Host allocation failures: torch's CPU allocator raises a RuntimeError ("DefaultCPUAllocator: can't
# allocate memory"), numpy a MemoryError, OpenVINO its own exception ("std::bad_alloc").
_HOST_MARKERS = ("can't allocate memory", "bad_alloc")
_MARKERS = ("out of memory", "failed to allocate memory", "out of gpu memory",
            "cudaerrormemoryallocation", "cuda_error_out_of_memory", "bfcarena",
            "cublas_status_alloc_failed", "cudnn_status_alloc_failed", *_HOST_MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure, on the device or the host, from torch, numpy, onnxruntime,
    OpenVINO or TensorRT."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, Exception):
        return False  # interrupts are not retried
    message = str(exc).lower()
    return any(marker in message for marker in _MARKERS)


def is_host_memory(exc: BaseException) -> bool:
    """Whether an out-of-memory error (is_out_of_memory) was the host's rather than a device's."""
    message = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in message for marker in _HOST_MARKERS)


def free_device_memory(upscaler: TiledUpscaler) -> None:
    """Hand cached blocks back so the retry starts from an empty allocator."""
    if upscaler.cuda:
        import torch

        try:
            torch.cuda.synchronize(upscaler.backend.device)
            torch.cuda.empty_cache()
        except RuntimeError:
            pass  # the device is in a bad state; the retry will say so


def smaller(upscaler: TiledUpscaler, height: int, width: int, min_core: int = MIN_CORE,
            images: int = 1) -> TiledUpscaler | None:
    """The next smaller setting for `images` HxW images run together (video frames sharing
    batches), or None when there is none left.

    Half the batch while it is above one; then half the core while that shrinks the window
    and the backend accepts the new window shape.
    """
    plan = upscaler.plan(height, width)
    used = min(upscaler.batch, images * len(plan))  # a batch larger than the images' tile count is not used
    if used > 1:
        return TiledUpscaler(upscaler.backend, core=plan.core, margin=upscaler.margin, batch=used // 2)
    old_window = plan.window_shape
    core = min(plan.core, max(height, width))
    while core > min_core:
        core = max(min_core, core // 2)
        candidate = TiledUpscaler(upscaler.backend, core=core, margin=upscaler.margin, batch=1)
        window = candidate.plan(height, width).window_shape
        if window[0] * window[1] < old_window[0] * old_window[1]:
            return candidate if upscaler.backend.accepts(1, *window) else None
    return None
