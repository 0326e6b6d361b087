"""The TensorRT backend: a cached engine plan run on torch CUDA tensors and streams.

Device buffers are torch tensors, so the runtime's streams, pinned copies and the Triton
kernels share one memory system. Each CUDA stream the runtime calls `infer` on gets its own
execution context (a context holds the activations of one inference in flight), created on
first use. Batches larger than the engine's profile are split. With `cuda_graphs=True` each
(stream, tile shape) is captured once into a torch.cuda.CUDAGraph after one ordinary run, and
replayed from then on. A captured graph fixes its context's shapes and state, so each graph has
an execution context of its own; the graphs of one stream run one after another, so their
contexts share that stream's one block of activation memory (TensorRT's USER_MANAGED contexts).

The TensorRT-RTX backend (tensorrt_rtx_backend.py) is this class with the flavour's hooks
overridden: `_check_blob` (before deserializing), `_create_context`, `_uses_torch_graphs`.

Plans come from the engine cache (engine/toolchain/engine_cache.py) and are validated against their
sidecar (GPU, version, sha256) before TensorRT sees them; the tile margin the plan was built
for comes from there too. Every `import tensorrt` is inside a function.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from srtrt.engine.backends.base import Backend, TileDefaults
from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import Profile
from srtrt.errors import SrtrtError

# Every `tensorrt` name this module uses (on the module, the runtime, the engine and its
# execution contexts); tests/test_tensorrt.py checks them against TensorRT 11.4's bindings and
# tests/test_tensorrt_rtx.py against tensorrt_rtx (the RTX backend runs this code too).
TRT_NAMES_USED = (
    "__version__", "Logger", "WARNING", "Runtime", "deserialize_cuda_engine", "create_execution_context",
    "num_io_tensors", "get_tensor_name", "get_tensor_mode", "TensorIOMode", "INPUT", "OUTPUT", "get_tensor_dtype",
    "DataType", "FLOAT", "HALF", "BF16", "get_tensor_profile_shape", "set_input_shape", "get_tensor_shape",
    "set_tensor_address", "execute_async_v3", "ExecutionContextAllocationStrategy", "USER_MANAGED",
    "device_memory_size_v2", "set_device_memory",
)
MAX_GRAPHS = 16  # captured CUDA graphs kept per backend (one per stream and tile shape)


def _flavour(key: str):
    from srtrt.engine.toolchain.trt_build import FLAVOURS

    return FLAVOURS[key]


def available(flavour: str = "trt") -> tuple[bool, str]:
    """(True, what) when the flavour imports and a CUDA GPU is visible, else (False, why not)."""
    from srtrt.engine.toolchain.trt_build import import_flavour

    try:
        trt = import_flavour(_flavour(flavour))
    except SrtrtError as e:
        return False, str(e)
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU is visible (torch {torch.__version__})"
    return True, f"{_flavour(flavour).name} {trt.__version__} on {torch.cuda.get_device_name()}"


def _torch_dtypes(trt) -> dict:
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        dtypes[trt.DataType.BF16] = torch.bfloat16
    return dtypes


def _cuda_device(device) -> torch.device:
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        raise SrtrtError(f"TensorRT engines run on a CUDA device, not {device}")
    return device


class TensorRTBackend(Backend):
    name = "tensorrt"
    flavour = "trt"         # EngineKey.flavour this backend loads
    balanced_tiles = False  # windows of exactly the profile's opt shape: the tactics were timed for it
    graphs_label = "CUDA graphs"

    def __init__(self, plan: str | Path, device: str | torch.device | None = None, *, cuda_graphs: bool = False):
        from srtrt.engine.toolchain.trt_build import import_flavour, require_cuda

        flavour = _flavour(self.flavour)
        trt = import_flavour(flavour)
        require_cuda(flavour, f"{flavour.name} engines run on a CUDA GPU")
        plan = Path(plan)
        device = _cuda_device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gpu_name, cc = engine_cache.gpu_identity(device)

        doc = engine_cache.validate(plan)  # sidecar readable, bytes intact
        built = doc["key"]
        if built.flavour != self.flavour:
            other = "tensorrt_rtx_backend.TensorRTRTXBackend" if built.flavour == "rtx" else "TensorRTBackend"
            raise SrtrtError(f"engine is a {engine_cache.FLAVOURS[built.flavour]} plan, not {flavour.name}: "
                             f"load it with {other}", plan)
        engine_cache.check_runs_here(built, gpu_name, cc, str(trt.__version__), plan)
        if built.plugin == "jit":
            from srtrt.kernels import trt_plugin

            trt_plugin.register(flavour.module)  # the JIT plugin runs Python at every enqueue

        self._trt = trt
        self.device = device
        self.key = built
        self.plan = plan
        self.gpu = (gpu_name, cc)
        self.notes = []  # what describe() adds (e.g. a TensorRT-RTX validity warning)
        self._logger = trt.Logger(trt.Logger.WARNING)
        blob = plan.read_bytes()
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._check_blob(blob)
            self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise SrtrtError(f"{flavour.name} could not deserialize the engine (see its messages above)", plan)

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
        self.channels = self.profile.max[1]  # 1 (grey) or 3 (RGB): the plan's input, whatever asks it

        self.precision = built.precision
        self.dtype = self.in_dtype
        self.scale = int(doc.get("scale") or 4)
        # The window is core + 2 * margin for the margin the plan was built with: tiles use
        # exactly that (base.Backend.margin), whatever the model's radius says.
        self.margin = built.margin
        self.radius = int(doc["radius"]) if doc.get("radius") is not None else built.margin
        core = max(1, min(self.profile.window) - 2 * self.margin)
        self.defaults = TileDefaults(core=core, batch=self.profile.max_batch)
        self.cuda_graphs = cuda_graphs

        self._lock = threading.Lock()
        self._contexts = {}   # stream handle -> execution context
        self._shapes = {}     # stream handle -> input shape last set on that context
        self._graphs = {}     # (stream handle, shape) -> (graph or None, static input, static output) or None
        self._graph_memory = {}  # stream handle -> the activation memory its graphs' contexts share
        self._graph_contexts = {}  # (stream handle, shape) -> the context its graph replays: kept alive with it
        self._after_load()

    @classmethod
    def from_cache(cls, model_sha256: str, precision: str, device: str | torch.device | None = None,
                   window=None, max_batch: int | None = None, *, plugin: str | None = None,
                   cuda_graphs: bool | None = None, root: Path | None = None) -> TensorRTBackend:
        """The backend for the newest cached plan of this model and precision that runs on this GPU.

        `window` ((h, w) or int, LR pixels) and `max_batch` narrow the choice to plans whose
        profile is exactly that window with at least that batch. Raises SrtrtError (one line)
        when the flavour or a GPU is missing or no plan fits; plans built for another GPU or
        version are named as such. `cuda_graphs` None: the class's default.
        """
        from srtrt.engine.toolchain.trt_build import import_flavour, require_cuda

        flavour = _flavour(cls.flavour)
        if precision not in engine_cache.PRECISIONS:
            raise SrtrtError(f"{flavour.name} engines are built fp16 or fp32, not {precision}")
        if not model_sha256:
            raise SrtrtError("the model has no checkpoint hash, so no cached engine can match it")
        trt = import_flavour(flavour)
        require_cuda(flavour, f"{flavour.name} engines run on a CUDA GPU")
        device = _cuda_device(device)
        gpu_name, cc = engine_cache.gpu_identity(device)
        plan = engine_cache.find(model_sha256, precision, gpu_name, cc, str(trt.__version__), flavour=cls.flavour,
                                 window=window, max_batch=max_batch, plugin=plugin, root=root)
        kwargs = {} if cuda_graphs is None else {"cuda_graphs": cuda_graphs}
        return cls(plan, device, **kwargs)

    # -----------------------------------------------------------------------------------------
    # flavour hooks

    def _check_blob(self, blob: bytes) -> None:
        """Before deserializing (TensorRT-RTX asks the runtime whether the plan can run here)."""

    def _after_load(self) -> None:
        """After the engine is deserialized and the backend's fields are set."""

    def _create_context(self):
        return self._engine.create_execution_context()

    @property
    def _uses_torch_graphs(self) -> bool:
        """Capture CUDA graphs with torch here (TensorRT-RTX captures its own)."""
        return self.cuda_graphs

    # -----------------------------------------------------------------------------------------

    def accepts(self, batch: int, height: int, width: int) -> bool:
        """Tiles inside the profile's spatial range; any batch (split at the profile's maximum)."""
        _, c, h_lo, w_lo = self.profile.min
        _, _, h_hi, w_hi = self.profile.max
        return batch >= 1 and h_lo <= height <= h_hi and w_lo <= width <= w_hi

    def prepare(self, batch: int, height: int, width: int) -> None:
        stream = torch.cuda.current_stream(self.device)
        shape = (min(batch, self.profile.max_batch), self.profile.max[1], height, width)
        if self.cuda_graphs:
            self._graph(shape, stream)
        elif self._shapes.get(stream.cuda_stream) != shape:
            self._set_shape(self._context(stream.cuda_stream), stream.cuda_stream, shape)

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
        extras = [self.key.label, f"plugin {self.key.plugin}", str(self.profile), f"margin {self.margin}"]
        if self.cuda_graphs:
            extras.append(self.graphs_label)
        return f"{self.name} ({self.precision}, {self.device}, {', '.join(extras + self.notes)})"

    def close(self) -> None:
        self._graphs.clear()
        self._graph_contexts.clear()
        self._graph_memory.clear()
        self._contexts.clear()
        self._shapes.clear()
        self._engine = None
        self._runtime = None

    # -----------------------------------------------------------------------------------------

    def _context(self, handle: int):
        ctx = self._contexts.get(handle)
        if ctx is None:
            with self._lock, torch.cuda.device(self.device):
                ctx = self._contexts.get(handle) or self._create_context()
                if ctx is None:
                    raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
                self._contexts[handle] = ctx
        return ctx

    def _set_shape(self, ctx, handle: int, shape: tuple) -> tuple:
        if not ctx.set_input_shape(self._in, shape):
            raise RuntimeError(f"TensorRT refused input shape {shape} (profile {self.profile})")
        if self._contexts.get(handle) is ctx:  # a graph's own context is not the stream's
            self._shapes[handle] = shape
        return tuple(int(d) for d in ctx.get_tensor_shape(self._out))

    def _bind(self, ctx, handle: int, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        out_shape = self._set_shape(ctx, handle, tuple(x.shape))
        if out is None:
            out = torch.empty(out_shape, dtype=self.out_dtype, device=self.device)
        ctx.set_tensor_address(self._in, x.data_ptr())
        ctx.set_tensor_address(self._out, out.data_ptr())
        return out

    def _enqueue(self, ctx, handle: int) -> None:
        if not ctx.execute_async_v3(handle):
            raise RuntimeError("TensorRT failed to enqueue the engine (see TensorRT's messages above)")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream(self.device)
        handle = stream.cuda_stream
        if self.cuda_graphs:
            captured = self._graph(tuple(x.shape), stream)
            if captured is not None:
                graph, static_in, static_out = captured
                static_in.copy_(x)
                if graph is not None:
                    graph.replay()
                else:  # the flavour replays its own graph for these fixed addresses
                    ctx = self._context(handle)
                    self._bind(ctx, handle, static_in, static_out)
                    self._enqueue(ctx, handle)
                return static_out.clone()  # the next run overwrites static_out
        ctx = self._context(handle)  # past MAX_GRAPHS, or a shape that could not be captured
        out = self._bind(ctx, handle, x)
        self._enqueue(ctx, handle)
        return out

    def _graph(self, shape: tuple, stream):
        """(graph, static input, static output) for (stream, shape), made on first use; None past MAX_GRAPHS
        or if not capturable. The graph is None where the flavour captures its own (fixed buffers only)."""
        key = (stream.cuda_stream, shape)
        if key in self._graphs:
            return self._graphs[key]
        if len(self._graphs) >= MAX_GRAPHS:
            return None
        ctx = self._graph_context(stream.cuda_stream) if self._uses_torch_graphs else self._context(stream.cuda_stream)
        static_in = torch.zeros(shape, dtype=self.in_dtype, device=self.device)
        static_out = self._bind(ctx, stream.cuda_stream, static_in)
        # One ordinary run first, so lazy initialisation (and TensorRT-RTX's kernel
        # specialisation for this shape) is not captured.
        self._enqueue(ctx, stream.cuda_stream)
        stream.synchronize()
        if not self._uses_torch_graphs:
            self._graphs[key] = (None, static_in, static_out)
            return self._graphs[key]
        graph = torch.cuda.CUDAGraph()
        ok = False
        try:  # the capture stream torch makes is on the current device: this backend's
            with torch.cuda.device(self.device), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                ok = ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        except RuntimeError:
            ok = False
        self._graphs[key] = (graph, static_in, static_out) if ok else None
        if ok:
            self._graph_contexts[key] = ctx
        return self._graphs[key]

    def _graph_context(self, handle: int):
        """A new execution context for one graph on stream `handle`. Replaying a graph after its
        context was set to another shape would run on state that is no longer the captured one; a
        context per graph has none to lose. Its activation memory is the stream's one block: the
        stream runs its graphs one at a time, and the captured address stays valid while the
        backend lives."""
        trt = self._trt
        with self._lock, torch.cuda.device(self.device):
            memory = self._graph_memory.get(handle)
            if memory is None:  # torch's allocator aligns blocks to 512 bytes; TensorRT asks 256
                memory = torch.empty(max(1, self._engine.device_memory_size_v2), dtype=torch.uint8, device=self.device)
                self._graph_memory[handle] = memory
            ctx = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is None:
                raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
            ctx.set_device_memory(memory.data_ptr(), memory.numel())
        return ctx
