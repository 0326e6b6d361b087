"""Run the fused `srtrt::PixelShufflePReLU` ONNX node in onnxruntime on the CPU.

onnxruntime has no pure-Python custom-op API, so this registers a Python op through
onnxruntime-extensions that computes the torch reference. It is a correctness path for
`srtrt export --fused` graphs (CI parity checks), not a fast one.
"""
from __future__ import annotations

import numpy as np

from srtrt.errors import SrtrtError
from srtrt.kernels import fused_op

_registered = False


def _compute(x: np.ndarray, alpha: np.ndarray, upscale: int) -> np.ndarray:
    import torch

    from srtrt.kernels.pixel_shuffle_prelu import reference

    # ONNX Runtime's CPU kernels compute fp16 in fp32; do the same so parity holds.
    y = reference(torch.from_numpy(x).float(), torch.from_numpy(alpha).float(), int(upscale))
    return y.numpy().astype(x.dtype, copy=False)


def register() -> None:
    """Declare the op to onnxruntime-extensions (fp32 and fp16); safe to call repeatedly."""
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        raise SrtrtError("running fused ONNX graphs on the CPU needs onnxruntime-extensions "
                         "(pip install 'srtrt[onnx]')") from None
    types = {"upscale": PyCustomOpDef.dt_int64, "aot": PyCustomOpDef.dt_int64,
             "plugin_namespace": PyCustomOpDef.dt_string, "plugin_version": PyCustomOpDef.dt_string}
    attrs = {name: types[name] for name in fused_op.ATTRIBUTES}
    for dtype in (PyCustomOpDef.dt_float, PyCustomOpDef.dt_float16):
        @onnx_op(op_type=fused_op.PLUGIN_ID, inputs=[dtype, dtype], outputs=[dtype], attrs=attrs)
        def pixel_shuffle_prelu(x, alpha, upscale=2, **_plugin_attrs):
            return _compute(x, alpha, upscale)
    _registered = True


def session_options():
    """onnxruntime SessionOptions that can run graphs containing the fused node."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register()
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return so

