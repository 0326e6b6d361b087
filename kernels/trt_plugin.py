"""`srtrt::PixelShufflePReLU`: the fused Triton kernel as a TensorRT plugin (tensorrt.plugin, "QDP").

The ONNX parser maps a node `PixelShufflePReLU` with attributes plugin_namespace="srtrt",
plugin_version="1" onto this plugin; the node's `aot` attribute picks the implementation:

- JIT (`aot=0`): TensorRT calls `_impl` from Python at every enqueue; it launches the Triton
  kernel on torch views of TensorRT's buffers. Such an engine needs this module registered
  (and torch + triton) in the process that deserializes it.
- AOT (`aot=1`): at build time TensorRT asks `_aot_impl` for PTX (kernels/aot.py compiles it
  for the building GPU), launch parameters and the kernel's int32 arguments as symbolic
  expressions, and bakes them into the plan. Such an engine runs on the plain TensorRT
  runtime (and `trtexec`) with no Python plugin code.

Inputs: x (N, C*r*r, H, W) and alpha (C or 1 slopes), both the network's dtype (fp32 or fp16,
NCHW); attribute `upscale` (r). Output: (N, C, H*r, W*r), same dtype.

Nothing here imports tensorrt until `register()` runs; registration is idempotent. This module
must not use `from __future__ import annotations`: tensorrt.plugin reads the decorated
functions' annotations as classes.
"""
import threading
from typing import List, Tuple, Union

NAMESPACE = "srtrt"
NAME = "PixelShufflePReLU"
PLUGIN_ID = f"{NAMESPACE}::{NAME}"
VERSION = "1"  # QDP creators are always version "1"

# Every tensorrt / tensorrt.plugin name this module uses (checked against TensorRT 11.4's
# bindings by tests/test_tensorrt.py).
TRT_NAMES_USED = ("DataType", "FLOAT", "HALF", "BF16")
TRTP_NAMES_USED = (
    "register", "impl", "aot_impl", "autotune", "op", "TensorDesc", "Tensor", "AutoTuneCombination",
    "KernelLaunchParams", "SymInt32", "SymIntExprs", "cdiv", "from_tuple", "like", "shape_expr", "numel", "dtype",
    "is_fake", "is_constant", "constant_value", "grid_x", "block_x", "shared_mem",
)

_lock = threading.Lock()
_state = {"registered": False, "aot": False}
_kernels = {}  # (arch, dtype, upscale) -> kernels.aot.AotKernel


def is_registered() -> bool:
    return _state["registered"]


def aot_supported() -> bool:
    """Whether the registered plugin has an AOT implementation (TensorRT >= 10.9)."""
    return _state["aot"]


def register() -> bool:
    """Register the plugin with TensorRT's plugin registry (once per process).

    Call before parsing an ONNX with PixelShufflePReLU nodes and before deserializing an engine
    built with the JIT implementation. Returns whether the AOT implementation is available.
    """
    with _lock:
        if _state["registered"]:
            return _state["aot"]
        import tensorrt.plugin as trtp

        if hasattr(trtp.op, NAMESPACE) and hasattr(getattr(trtp.op, NAMESPACE), NAME):
            # Another copy of this module (e.g. imported under a second name) got there first.
            _state.update(registered=True, aot=hasattr(trtp, "KernelLaunchParams"))
            return _state["aot"]
        _define(trtp)
        _state["registered"] = True
        return _state["aot"]


def _trt_dtype_name(dtype) -> str:
    import tensorrt as trt

    names = {trt.DataType.FLOAT: "fp32", trt.DataType.HALF: "fp16"}
    if hasattr(trt.DataType, "BF16"):
        names[trt.DataType.BF16] = "bf16"
    if dtype not in names:
        raise ValueError(f"{PLUGIN_ID} supports fp32 and fp16 tensors, got {dtype}")
    return names[dtype]


def _alpha_stride(alpha_desc) -> int:
    """0 when alpha is one shared slope, 1 when it is one slope per channel."""
    n = 1
    for e in alpha_desc.shape_expr:
        if e.is_fake or not e.is_constant:
            return 1
        n *= e.constant_value()
    return 0 if n == 1 else 1


def _aot_kernel(arch: int, dtype: str, upscale: int):
    key = (arch, dtype, upscale)
    if key not in _kernels:
        from . import aot

        _kernels[key] = aot.compile_kernel(arch, dtype, upscale, channels_last=False, with_cubin=False)
    return _kernels[key]


def _define(trtp):
    """The decorated functions. Annotations must be real classes, hence the nested definitions."""

    @trtp.register(PLUGIN_ID)
    def _desc(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int) -> trtp.TensorDesc:
        y = x.like()
        y.shape_expr[1] = x.shape_expr[1] // (upscale * upscale)
        y.shape_expr[2] = x.shape_expr[2] * upscale
        y.shape_expr[3] = x.shape_expr[3] * upscale
        return y

    @trtp.autotune(PLUGIN_ID)
    def _autotune(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int,
                  outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # x, alpha and y share one dtype (fp32 or fp16); linear NCHW only.
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _impl(x: trtp.Tensor, alpha: trtp.Tensor, upscale: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from . import pixel_shuffle_prelu as k

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            xt = torch.as_tensor(x, device="cuda")
            at = torch.as_tensor(alpha, device="cuda")
            yt = torch.as_tensor(outputs[0], device="cuda")
            k.launch(k.pixel_shuffle_prelu_kernel, xt, at, upscale, yt)

    if not hasattr(trtp, "KernelLaunchParams"):  # TensorRT < 10.9: JIT only
        return

    @trtp.aot_impl(PLUGIN_ID)
    def _aot_impl(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int, outputs: Tuple[trtp.TensorDesc],
                  tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        import torch

        major, minor = torch.cuda.get_device_capability()
        kernel = _aot_kernel(major * 10 + minor, _trt_dtype_name(x.dtype), upscale)
        y = outputs[0]
        total = y.shape_expr.numel()
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.cdiv(total, kernel.block)
        params.block_x = kernel.threads
        params.shared_mem = kernel.shared
        # The kernel's int32 arguments, between the input and the output pointers:
        # C (output channels), H, W (input), total (output elements), alpha_stride.
        extra = trtp.SymIntExprs.from_tuple([
            trtp.SymInt32(y.shape_expr[1]),
            trtp.SymInt32(x.shape_expr[2]),
            trtp.SymInt32(x.shape_expr[3]),
            trtp.SymInt32(total),
            trtp.SymInt32(_alpha_stride(alpha)),
        ])
        return kernel.name, kernel.ptx, params, extra

    _state["aot"] = True
