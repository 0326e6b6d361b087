"""`srtrt::PixelShufflePReLU`: the fused Triton kernel as a TensorRT plugin (tensorrt.plugin, "QDP").

The ONNX parser maps a node `PixelShufflePReLU` with attributes plugin_namespace="srtrt",
plugin_version="1" (kernels/fused_op.py owns these names) onto this plugin; the node's `aot`
attribute picks the implementation:

- JIT (`aot=0`): TensorRT calls `_impl` from Python at every enqueue; it launches the Triton
  kernel on torch views of TensorRT's buffers. Such an engine needs this module registered
  (and torch + triton) in the process that deserializes it.
- AOT (`aot=1`): at build time TensorRT asks `_aot_impl` for PTX (kernels/aot.py compiles it
  for the building GPU), launch parameters and the kernel's int32 arguments as symbolic
  expressions, and bakes them into the plan. Such an engine runs on the plain TensorRT
  runtime (and `trtexec`) with no Python plugin code.

Inputs: x (N, C*r*r, H, W) and alpha (C or 1 slopes), both the network's dtype (fp32 or fp16,
NCHW); attribute `upscale` (r). Output: (N, C, H*r, W*r), same dtype.

The same definitions register with TensorRT-RTX (`register("tensorrt_rtx")`) where its wheel
ships `tensorrt_rtx.plugin` (1.7.1's does not; `unavailable()` says so). A GPU-less build
cannot ask the GPU for its architecture, so the builder names the AOT target with `aot_target`
(TensorRT-RTX: the lowest target compute capability, as forward-compatible PTX).

Nothing here imports tensorrt until `register()` runs; registration is idempotent per module.
This module must not use `from __future__ import annotations`: tensorrt.plugin reads the
decorated functions' annotations as classes.
"""
import contextlib
import importlib
import threading

from .fused_op import NAME, NAMESPACE, PLUGIN_ID

# Every tensorrt / tensorrt.plugin name this module uses (checked against TensorRT 11.4's
# bindings by tests/test_tensorrt.py).
TRT_NAMES_USED = ("DataType", "FLOAT", "HALF", "BF16")
TRTP_NAMES_USED = (
    "register", "impl", "aot_impl", "autotune", "op", "TensorDesc", "Tensor", "AutoTuneCombination",
    "KernelLaunchParams", "SymInt32", "SymIntExprs", "cdiv", "from_tuple", "like", "shape_expr", "numel", "dtype",
    "is_fake", "is_constant", "constant_value", "grid_x", "block_x", "shared_mem",
)

_lock = threading.Lock()
_registered = {}  # module name ("tensorrt", "tensorrt_rtx") -> whether it has the AOT implementation
_target = {"arch": None, "ptx_version": None}  # the AOT kernel's target; arch None = the current GPU's
_kernels = {}  # (arch, ptx_version, dtype, upscale) -> kernels.aot.AotKernel


def unavailable(module: str = "tensorrt") -> str | None:
    """None when `module.plugin` imports, else why not (one line)."""
    try:
        importlib.import_module(f"{module}.plugin")
    except Exception as e:  # ModuleNotFoundError from a wheel without the plugin bindings, or worse
        return f"{module}.plugin: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}"
    return None


def register(module: str = "tensorrt") -> bool:
    """Register the plugin with `module`'s plugin registry (once per process and module).

    Call before parsing an ONNX with PixelShufflePReLU nodes and before deserializing an engine
    built with the JIT implementation. Returns whether the AOT implementation is available.
    """
    with _lock:
        if module in _registered:
            return _registered[module]
        trtp = importlib.import_module(f"{module}.plugin")
        trt = importlib.import_module(module)
        if hasattr(trtp.op, NAMESPACE) and hasattr(getattr(trtp.op, NAMESPACE), NAME):
            # Another copy of this module (e.g. imported under a second name) got there first.
            _registered[module] = hasattr(trtp, "KernelLaunchParams")
        else:
            _registered[module] = _define(trtp, trt)
        return _registered[module]


@contextlib.contextmanager
def aot_target(arch: int | None, ptx_version: int | None = None):
    """Compile AOT kernels for compute capability `arch` (e.g. 80) while the block runs, instead
    of the current GPU's; `ptx_version` pins the PTX ISA (see kernels/aot.py)."""
    with _lock:
        saved = dict(_target)
        _target.update(arch=arch, ptx_version=ptx_version)
    try:
        yield
    finally:
        with _lock:
            _target.update(saved)


def _trt_dtype_name(trt, dtype) -> str:
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


def _aot_kernel(dtype: str, upscale: int):
    arch, ptx_version = _target["arch"], _target["ptx_version"]
    if arch is None:
        import torch

        major, minor = torch.cuda.get_device_capability()
        arch = major * 10 + minor
    key = (arch, ptx_version, dtype, upscale)
    if key not in _kernels:
        from . import aot

        _kernels[key] = aot.compile_kernel(arch, dtype, upscale, channels_last=False, ptx_version=ptx_version,
                                           with_cubin=False)
    return _kernels[key]


def _define(trtp, trt) -> bool:
    """The decorated functions; returns whether the AOT one was defined. Annotations must be
    real classes, hence the nested definitions."""

    @trtp.register(PLUGIN_ID)
    def _desc(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int) -> trtp.TensorDesc:
        y = x.like()
        y.shape_expr[1] = x.shape_expr[1] // (upscale * upscale)
        y.shape_expr[2] = x.shape_expr[2] * upscale
        y.shape_expr[3] = x.shape_expr[3] * upscale
        return y

    @trtp.autotune(PLUGIN_ID)
    def _autotune(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int,
                  outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        # x, alpha and y share one dtype (fp32 or fp16); linear NCHW only.
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _impl(x: trtp.Tensor, alpha: trtp.Tensor, upscale: int, outputs: tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from . import pixel_shuffle_prelu as k

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            xt = torch.as_tensor(x, device="cuda")
            at = torch.as_tensor(alpha, device="cuda")
            yt = torch.as_tensor(outputs[0], device="cuda")
            k.launch(k.pixel_shuffle_prelu_kernel, xt, at, upscale, yt)

    if not hasattr(trtp, "KernelLaunchParams"):  # TensorRT < 10.9: JIT only
        return False

    @trtp.aot_impl(PLUGIN_ID)
    def _aot_impl(x: trtp.TensorDesc, alpha: trtp.TensorDesc, upscale: int, outputs: tuple[trtp.TensorDesc],
                  tactic: int) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        kernel = _aot_kernel(_trt_dtype_name(trt, x.dtype), upscale)
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

    return True
