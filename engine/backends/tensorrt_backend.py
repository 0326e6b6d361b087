"""The TensorRT backend: a cached engine plan run on torch CUDA tensors and streams.

Device buffers are torch tensors, so the runtime's streams, pinned copies and the Triton
kernels share one memory system. Each CUDA stream the runtime calls `infer` on gets its own
execution context (a context holds the activations of one inference in flight), created on
first use. Batches larger than the engine's profile are split. With `cuda_graphs=True` each
(stream, tile shape) is captured once into a torch.cuda.CUDAGraph after one ordinary run, and
replayed from then on.

Plans come from the engine cache (engine/toolchain/engine_cache.py) and are validated against their
sidecar (GPU, TensorRT version, sha256) before TensorRT sees them. Every `import tensorrt` is
inside a function.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import torch

from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import Profile
from srtrt.errors import SrtrtError

from srtrt.engine.backends.base import Backend, TileDefaults

# Every `tensorrt` name this module uses (on the module, the runtime, the engine and its
# execution contexts); tests/test_tensorrt.py checks them against TensorRT 11.4's bindings.
TRT_NAMES_USED = (
    "__version__", "Logger", "WARNING", "Runtime", "deserialize_cuda_engine", "create_execution_context",
    "num_io_tensors", "get_tensor_name", "get_tensor_mode", "TensorIOMode", "INPUT", "OUTPUT", "get_tensor_dtype",
    "DataType", "FLOAT", "HALF", "BF16", "get_tensor_profile_shape", "set_input_shape", "get_tensor_shape",
    "set_tensor_address", "execute_async_v3",
)
MAX_GRAPHS = 16  # captured CUDA graphs kept per backend (one per stream and tile shape)


def available() -> tuple[bool, str]:
    """(True, what) when TensorRT imports and a CUDA GPU is visible, else (False, why not)."""
    from srtrt.engine.toolchain.trt_build import import_tensorrt

    try:
        trt = import_tensorrt()
    except SrtrtError as e:
        return False, str(e)
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU is visible (torch {torch.__version__})"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def _torch_dtypes(trt) -> dict:
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        dtypes[trt.DataType.BF16] = torch.bfloat16
    return dtypes


class TensorRTBackend(Backend):
    name = "tensorrt"
    balanced_tiles = False  # windows of exactly the profile's opt shape: the tactics were timed for it

    def __init__(self, plan: str | Path, device: str | torch.device | None = None, *, cuda_graphs: bool = False):
        from srtrt.engine.toolchain.trt_build import import_tensorrt, require_cuda

        trt = import_tensorrt()
        require_cuda()
        plan = Path(plan)
        device = torch.device(device if device is not None else "cuda")
        if device.type != "cuda":
            raise SrtrtError(f"the TensorRT backend runs on a CUDA device, not {device}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gpu_name, cc = engine_cache.gpu_identity(device)

        doc = engine_cache.validate(plan)  # sidecar readable, bytes intact
        built = doc["key"]
        here = dataclasses.replace(built, gpu_name=gpu_name, compute_capability=cc, trt_version=str(trt.__version__))
        engine_cache.check_key(built, here, plan)  # same GPU and TensorRT
        if built.plugin == "jit":
            from srtrt.kernels import trt_plugin

            trt_plugin.register()  # the JIT plugin runs Python at every enqueue

        self._trt = trt
        self.device = device
        self.key = built
        self.plan = plan
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise SrtrtError("TensorRT could not deserialize the engine (see TensorRT's messages above)", plan)

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise SrtrtError(f"expected one input and one output, engine has {inputs} and {outputs}", plan)
        self._in, self._out = inputs[0], outputs[0]
        dtypes = _torch_dtypes(trt)
        self.in_dtype = dtypes[self._engine.get_tensor_dtype(self._in)]
        self.out_dtype = dtypes[self._engine.get_tensor_dtype(self._out)]
        lo, opt, hi = (tuple(int(d) for d in s) for s in self._engine.get_tensor_profile_shape(self._in, 0))
        self.profile = Profile(lo, opt, hi)

        self.precision = built.precision
        self.dtype = self.in_dtype
        self.scale = int(doc.get("scale") or 4)
        self.radius = int(doc.get("radius") or 0)
        margin = int(doc.get("margin", self.radius))
        core = max(1, min(self.profile.window) - 2 * margin)
        self.defaults = TileDefaults(core=core, batch=self.profile.max_batch)
        self.cuda_graphs = cuda_graphs

        self._lock = threading.Lock()
        self._contexts = {}   # stream handle -> execution context
        self._shapes = {}     # stream handle -> input shape last set on that context
        self._graphs = {}     # (stream handle, shape) -> (graph, static input, static output) or None

    @classmethod
    def from_cache(cls, model_sha256: str, precision: str, device: str | torch.device | None = None,
                   window=None, max_batch: int | None = None, *, plugin: str | None = None,
                   cuda_graphs: bool = False, root: Path | None = None) -> "TensorRTBackend":
        """The backend for the newest cached plan of this model and precision on this GPU.

        `window` ((h, w) or int, LR pixels) and `max_batch` narrow the choice to plans whose
        profile is exactly that window with at least that batch. Raises SrtrtError (one line)
        when TensorRT or a GPU is missing or no plan fits; plans built for another GPU or
        TensorRT are named as such.
        """
        from srtrt.engine.toolchain.trt_build import import_tensorrt, require_cuda

        if precision not in engine_cache.PRECISIONS:
            raise SrtrtError(f"TensorRT engines are built fp16 or fp32, not {precision}")
        if not model_sha256:
            raise SrtrtError("the model has no checkpoint hash, so no cached engine can match it")
        trt = import_tensorrt()
        require_cuda()
        device = torch.device(device if device is not None else "cuda")
        if device.type != "cuda":
            raise SrtrtError(f"the TensorRT backend runs on a CUDA device, not {device}")
        gpu_name, cc = engine_cache.gpu_identity(device)
        plan = engine_cache.find(model_sha256, precision, gpu_name, cc, str(trt.__version__), window=window,
                                 max_batch=max_batch, plugin=plugin, root=root)
        return cls(plan, device, cuda_graphs=cuda_graphs)

    # -----------------------------------------------------------------------------------------

    def accepts(self, batch: int, height: int, width: int) -> bool:
        """Tiles inside the profile's spatial range; any batch (split at the profile's maximum)."""
        _, c, h_lo, w_lo = self.profile.min
        _, _, h_hi, w_hi = self.profile.max
        return batch >= 1 and h_lo <= height <= h_hi and w_lo <= width <= w_hi

    def prepare(self, batch: int, height: int, width: int) -> None:
        stream = torch.cuda.current_stream(self.device)
        shape = (min(batch, self.profile.max_batch), self.profile.max[1], height, width)
        ctx = self._context(stream.cuda_stream)
        if self.cuda_graphs:
            self._graph(ctx, shape, stream)
        elif self._shapes.get(stream.cuda_stream) != shape:
            self._set_shape(ctx, stream.cuda_stream, shape)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.profile.max[1]:
            raise ValueError(f"expected (N, {self.profile.max[1]}, H, W) tiles, got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if not self.accepts(n, h, w):
            raise ValueError(f"tile {h}x{w} is outside the engine's profile ({self.profile}, min "
                             f"{self.profile.min[2]}x{self.profile.min[3]}): run `srtrt build` for this tile size")
        x = x.to(self.device, self.in_dtype, non_blocking=True).contiguous()
        step = self.profile.max_batch
        if n > step:
            return torch.cat([self._run(x[i:i + step]) for i in range(0, n, step)])
        return self._run(x)

    def describe(self) -> str:
        extras = [f"TensorRT {self._trt.__version__}", f"plugin {self.key.plugin}", str(self.profile)]
        if self.cuda_graphs:
            extras.append("CUDA graphs")
        return f"tensorrt ({self.precision}, {self.device}, {', '.join(extras)})"

    def close(self) -> None:
        self._graphs.clear()
        self._contexts.clear()
        self._shapes.clear()
        self._engine = None
        self._runtime = None

    # -----------------------------------------------------------------------------------------

    def _context(self, handle: int):
        ctx = self._contexts.get(handle)
        if ctx is None:
            with self._lock, torch.cuda.device(self.device):
                ctx = self._contexts.get(handle) or self._engine.create_execution_context()
                if ctx is None:
                    raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
                self._contexts[handle] = ctx
        return ctx

    def _set_shape(self, ctx, handle: int, shape: tuple) -> tuple:
        if not ctx.set_input_shape(self._in, shape):
            raise RuntimeError(f"TensorRT refused input shape {shape} (profile {self.profile})")
        self._shapes[handle] = shape
        return tuple(int(d) for d in ctx.get_tensor_shape(self._out))

    def _bind(self, ctx, handle: int, x: torch.Tensor) -> torch.Tensor:
        out_shape = self._set_shape(ctx, handle, tuple(x.shape))
        out = torch.empty(out_shape, dtype=self.out_dtype, device=self.device)
        ctx.set_tensor_address(self._in, x.data_ptr())
        ctx.set_tensor_address(self._out, out.data_ptr())
        return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream(self.device)
        handle = stream.cuda_stream
        ctx = self._context(handle)
        if self.cuda_graphs:
            captured = self._graph(ctx, tuple(x.shape), stream)
            if captured is not None:
                graph, static_in, static_out = captured
                static_in.copy_(x)
                graph.replay()
                return static_out.clone()  # the next replay overwrites static_out
        out = self._bind(ctx, handle, x)
        if not ctx.execute_async_v3(handle):
            raise RuntimeError("TensorRT failed to enqueue the engine (see TensorRT's messages above)")
        return out

    def _graph(self, ctx, shape: tuple, stream):
        """The captured graph for (stream, shape), capturing it on first use; None if not capturable."""
        key = (stream.cuda_stream, shape)
        if key in self._graphs:
            return self._graphs[key]
        if len(self._graphs) >= MAX_GRAPHS:
            return None
        static_in = torch.zeros(shape, dtype=self.in_dtype, device=self.device)
        static_out = self._bind(ctx, stream.cuda_stream, static_in)
        # One ordinary run first, so TensorRT's lazy initialisation is not captured.
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to enqueue the engine (see TensorRT's messages above)")
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        ok = False
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                ok = ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        except RuntimeError:
            ok = False
        self._graphs[key] = (graph, static_in, static_out) if ok else None
        return self._graphs[key]
