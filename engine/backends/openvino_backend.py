"""OpenVINO backend: the fp32 ONNX graph of `srtrt export`, compiled for the CPU once per window shape.

The CPU plugin computes in bf16 on AMX / AVX512-BF16 (INFERENCE_PRECISION_HINT; inputs and
outputs stay fp32). Precision int8 runs the QDQ graph of a calibrated model
(engine/toolchain/quantize.py): its calibrated convolutions in int8 on VNNI / AMX, the rest in bf16
(f32 where the CPU lacks bf16), the fastest CPU path bench/ measured. backends.create_backend hands it the
`--polyphase` export: the 9x9 tail conv to 3 channels at full resolution and the 64-channel
shuffle before it were 40% of a 2K-output image (AMX tiles want 16+ output channels); as one
conv to 12 channels at half resolution and a 12-channel shuffle, the same values cost 1.4x less
(OpenVINO's per-layer profile, bench/README.md). Static shapes run faster than a
dynamic graph on large windows, and the runtime uses one window shape per image, so each
(N, 3, h, w) seen again or large is compiled once and kept for the images and tiles that
follow; OpenVINO's CACHE_DIR keeps the compiled blobs so the next process starts without
recompiling. A small shape seen for the first time runs on one dynamic-shape model instead:
a folder of photos of many sizes brings a new shape per image, and compiling each cost more
than its inference (bench/test_varied.py). In bf16 and f32 both compute the same values, so a
small shape that comes again is compiled static. int8's dynamic model fuses its quantize steps
otherwise and rounds differently (a few levels of 255 apart, the same agreement with fp32), so
in int8 a small shape always runs on the dynamic model: an image's output never depends on the
images before it.

A model whose dynamic-shape graph cannot be exported (window-attention transformers: SwinIR,
HAT) comes as OnnxGraphs with one static file per window shape instead, exported on first use
(seconds each, then cached on disk): every shape is compiled from its own file, none is reshaped,
and there is no dynamic-shape model.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from srtrt.cache import cache_dir
from srtrt.engine.backends.base import Backend, OnnxGraphs, TileDefaults, defaults_for_budget
from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET
from srtrt.errors import SrtrtError
from srtrt.hardware import cpu_has_fast_bf16, usable_cpus

# srtrt precision -> INFERENCE_PRECISION_HINT; int8's hint is for the layers its graph leaves in float.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}
KEEP_COMPILED = 4        # window shapes held compiled at once; each holds its own activation memory
# Windows below this many LR pixels (batch included) run on the dynamic-shape model until their shape comes
# again: compiling a static model (0.2-0.4 s) outweighs its speed-up there (bench/test_varied.py).
DYNAMIC_BELOW_PIXELS = 160_000
STATIC_AFTER_IMAGES = 2  # a shape prepared or run this often is compiled static
REMEMBERED_SHAPES = 4096  # shapes whose count is kept (a bound on memory, never reached by a folder)
CACHE_BUDGET_MB = 512    # compiled blobs kept in CACHE_DIR, least recently used dropped first (SRTRT_OPENVINO_CACHE_MB)
INSTALL_HINT = "pip install openvino"

# Resident bytes per LR pixel of one compiled window, 64-channel x4 network: peak RSS growth
# from 256x256 to 512x640 windows, OpenVINO 2026.4 (bf16 4.5 KB, f32 8.6 KB; bench/README.md).
BYTES_PER_PIXEL = {"bf16": 4_600, "fp32": 8_700, "int8": 4_600}  # int8: bf16's, its float layers' storage


def import_openvino():
    """`import openvino` without the usage telemetry its import starts: openvino.tools.ovc sends an
    event to Google Analytics from a forked copy of the process unless a consent file in the
    user's home says no. srtrt sends nothing anywhere (and that fork, made at start-up, printed a
    traceback at Ctrl-C). openvino takes its own no-op stub when the telemetry package does not
    import; the block is lifted once openvino has bound the stub."""
    blocked = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # import raises ImportError: the documented fallback
    try:
        import openvino
    finally:
        if blocked and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]
    return openvino


def available() -> tuple[bool, str]:
    """Whether this backend can run here: OpenVINO, and the exporter that writes its graph."""
    try:
        openvino = import_openvino()
    except ImportError:
        return False, f"openvino is not installed ({INSTALL_HINT})"
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"openvino needs {' and '.join(missing)} to export the graph (pip install {' '.join(missing)})"
    return True, "openvino " + openvino.get_version().split("-")[0]


def failure_reason(error: Exception) -> str:
    """The cause out of OpenVINO's message: its summary when it has one (unconverted operations),
    else its last line; the lines before name OpenVINO's own source files."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Summary:" in lines:
        lines = [line.removeprefix("-- ") for line in lines[lines.index("Summary:") + 1:]]
        return "; ".join(lines) or error.__class__.__name__
    return lines[-1] if lines else error.__class__.__name__


@functools.cache
def shared_core():
    """The one `openvino.Core` of this process, made on first use and kept until exit.

    Each Core loads its own CPU plugin, and the plugin puts an alternate signal stack of its own
    on the thread that creates it (mmap'd, sized for AMX state). When a plugin is destroyed it
    unmaps that stack, but puts back the stack it replaced only if its own is still the current
    one. So two Cores released in the order they were made (A, B, then A dropped, then B) leave
    the thread's alternate stack pointing at A's unmapped memory, and the next signal a handler
    takes on that stack -- SIGCHLD once any child exits (torch's DataLoader installs one, so does
    asyncio), SIGINT at Ctrl-C -- kills the process with SIGSEGV (engine/FAULTS.md). One Core
    for the process means one such stack, installed once and mapped for as long as it is used.
    """
    return import_openvino().Core()


def tile_defaults(precision: str, radius: int, channels: int = 64) -> TileDefaults:
    """One window per call, as large as the CPU activation budget allows: the bench/ sweep on the
    2K-output image ran fastest as one window and slower with every extra window (margins are
    recomputed); batches sped up small tiles but never caught up with one large window."""
    bpp = BYTES_PER_PIXEL[precision] * channels // 64
    return defaults_for_budget(CPU_ACTIVATION_BUDGET, bpp, radius, batch=1)


def cache_budget_bytes() -> int:
    """CACHE_DIR's size limit: SRTRT_OPENVINO_CACHE_MB, else CACHE_BUDGET_MB."""
    try:
        return max(0, int(os.environ.get("SRTRT_OPENVINO_CACHE_MB", CACHE_BUDGET_MB))) << 20
    except ValueError:
        return CACHE_BUDGET_MB << 20


def _prune_blobs(folder: Path, budget: int | None = None) -> None:
    """Keep CACHE_DIR within its size limit: every distinct window shape and precision adds a
    blob, so the least recently used go first (last read or written; the newest always stays)."""
    budget = cache_budget_bytes() if budget is None else budget
    try:
        stats = [(p, p.stat()) for p in folder.glob("*.blob")]
    except OSError:
        return
    stats.sort(key=lambda item: max(item[1].st_atime, item[1].st_mtime), reverse=True)
    total = 0
    for i, (path, stat) in enumerate(stats):
        total += stat.st_size
        if i > 0 and total > budget:
            with contextlib.suppress(OSError):  # another process may hold or have removed it
                path.unlink()


class OpenVinoBackend(Backend):
    name = "openvino"
    own_threads = True  # OpenVINO's TBB pool

    def __init__(self, onnx_path: str | os.PathLike | OnnxGraphs, scale: int, radius: int, precision: str = "fp32",
                 threads: int | None = None, cache: str | os.PathLike | None = None, channels: int = 64):
        ok, why = available()
        if not ok:
            raise SrtrtError(why)
        if precision not in HINTS:
            raise SrtrtError(f"openvino runs {' or '.join(HINTS)} on the CPU, not {precision}")
        ov = import_openvino()
        from openvino.frontend import FrontEndManager

        self._ov, self._frontends = ov, FrontEndManager()
        self.graphs = onnx_path if isinstance(onnx_path, OnnxGraphs) else OnnxGraphs(dynamic=Path(onnx_path))
        self.path = self.graphs.label
        self.precision, self.scale, self.radius = precision, scale, radius
        self.threads = threads or usable_cpus()
        self.model = self._read(self.graphs.dynamic) if self.graphs.dynamic is not None else None
        self.core = shared_core()
        hint = HINTS[precision] if precision != "int8" or cpu_has_fast_bf16() else "f32"
        self.config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": self.threads,
                       "PERFORMANCE_HINT": "LATENCY"}
        # The cache folder is a property of each compile, not of the shared Core: backends may differ.
        self.cache = Path(cache) if cache is not None else cache_dir("openvino")
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            _prune_blobs(self.cache)
            self.config["CACHE_DIR"] = str(self.cache)
        except OSError:
            self.cache = None  # an unwritable cache costs start-up time only
        self._requests: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        self.compilations = 0  # how many window shapes were compiled static (tests check reuse)
        # 0: every shape compiled static
        self.dynamic_pixels = 0 if self.model is None else DYNAMIC_BELOW_PIXELS
        # whether a small shape that comes again moves to a static model: only where both give the same values
        # (int8's dynamic model differs from its static one by up to 8 levels of 255, at the same PSNR against fp32)
        self.promotes = precision != "int8"
        self._dynamic = None  # the dynamic-shape infer request, compiled on first use
        self.dynamic_runs = 0  # inferences through it (tests and bench/ check which path ran)
        self._last = None  # the request of the last inference (its layer profile)
        self._prepared: OrderedDict[tuple[int, int, int], int] = OrderedDict()  # shape -> images prepared
        self.defaults = tile_defaults(precision, radius, channels)

    def _read(self, path: Path):
        # The ONNX frontend alone: read_model would also try other frontends on a bad file, and they log noise.
        try:
            frontend = self._frontends.load_by_framework("onnx")
            return frontend.convert(frontend.load(str(path)))
        except Exception as e:  # OpenVINO raises several unrelated types (GeneralFailure, OpConversionFailure, ...)
            raise SrtrtError(f"OpenVINO cannot read this ONNX file ({failure_reason(e)})", path) from None

    def _compile(self, dims: list[int], label: str):
        if self.model is None:  # a graph exported for this very shape: nothing to reshape
            model = self._read(self.graphs.static(tuple(dims)))
        else:
            model = self.model.clone()
            model.reshape({model.inputs[0]: self._ov.PartialShape(dims)})
        try:
            return self.core.compile_model(model, "CPU", self.config).create_infer_request()
        except Exception as e:
            raise SrtrtError(f"OpenVINO cannot compile this ONNX file for {label} ({failure_reason(e)})", self.path) from None

    def _request(self, batch: int, height: int, width: int):
        """The infer request for this input shape: its own static model when it has one, is large or
        was prepared for more than one image (compiled now); else the shared dynamic-shape model."""
        shape = (batch, height, width)
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        if batch * height * width < self.dynamic_pixels and (
                not self.promotes or self._prepared.get(shape, 0) < STATIC_AFTER_IMAGES):
            if self._dynamic is None:
                self._dynamic = self._compile([-1, self.channels, -1, -1], "any input size")
            return self._dynamic
        self._requests[shape] = self._compile([batch, self.channels, height, width],
                                              f"{batch}x{self.channels}x{height}x{width}")
        self.compilations += 1
        while len(self._requests) > KEEP_COMPILED:
            self._requests.popitem(last=False)
        return self._requests[shape]

    def prepare(self, batch: int, height: int, width: int) -> None:
        """Called once per image: counts the images of each shape, so one that comes again is compiled."""
        shape = (batch, height, width)
        self._prepared[shape] = self._prepared.pop(shape, 0) + 1
        while len(self._prepared) > REMEMBERED_SHAPES:
            self._prepared.popitem(last=False)
        self._request(batch, height, width)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        request = self._request(n, h, w)
        if request is self._dynamic:  # a shape that runs again (the next tile of the same image) is compiled static
            self.dynamic_runs += 1
            self._prepared[n, h, w] = self._prepared.get((n, h, w), 0) + 1
        return self._run(request, x)

    def every_form_infer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A small `x` through the dynamic-shape model and through a static one: the two are
        different compiled graphs, and OpenVINO has computed wrong values in one and not the other
        (2026.4: a bias-less int8 conv read by two nodes, quantize._prelu_as_max)."""
        n, _, h, w = x.shape
        outputs = [self.infer(x)]
        if self._last is self._dynamic and self._dynamic is not None:
            static = self._compile([n, self.channels, h, w], f"{n}x{self.channels}x{h}x{w}")
            outputs.append(self._run(static, x))
        return outputs

    def _run(self, request, x: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        result = request.infer({0: feed}, share_inputs=True, share_outputs=False)
        self._last = request
        return torch.from_numpy(result[0])

    def layer_profile(self) -> list:
        """OpenVINO's per-layer timings (ProfilingInfo) of the last inference. Only a backend whose
        `config` had PERF_COUNT set before that shape was compiled has them (bench/openvino_profile.py)."""
        return [] if self._last is None else list(self._last.get_profiling_info())

    def describe(self) -> str:
        return f"openvino ({self.precision}, cpu, {self.threads} threads, {self.path.name})"

    def close(self) -> None:
        self._requests.clear()
        self._dynamic = self._last = None
