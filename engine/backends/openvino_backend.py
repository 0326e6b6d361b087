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
recompiling (each blob checked against the sha256 srtrt recorded when it was written:
_compile_cached). A small shape seen for the first time runs on one dynamic-shape model instead:
a folder of photos of many sizes brings a new shape per image, and compiling each cost more
than its inference (bench/test_varied.py). In bf16 and f32 both compute the same values, so a
small shape that comes again is compiled static. int8's dynamic model fuses its quantize steps
otherwise and rounds differently (a few levels of 255 apart, the same agreement with fp32), so
int8 compiles every shape static (0.3-0.4 s a new shape on the 2-core EPYC; blobs cached): an
image's windows, its whole pass and the masked sheets it shares give the same values, and none
depends on the images before it. Small images of many sizes share sheets of a few shapes.

A model whose dynamic-shape graph cannot be exported (window-attention transformers: SwinIR,
HAT) comes as OnnxGraphs with one static file per window shape instead, exported on first use
(seconds each, then cached on disk): every shape is compiled from its own file, none is reshaped,
and there is no dynamic-shape model.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from srtrt import atomic
from srtrt.cache import cache_dir
from srtrt.checkpoint import file_sha256
from srtrt.engine.backends import openvino_masks, openvino_memory
from srtrt.engine.backends.base import Backend, OnnxGraphs, PerShapeGraphs, TileDefaults, defaults_for_budget
from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET
from srtrt.engine.datapath.sheets import masks_at
from srtrt.errors import OutputNote, SrtrtError
from srtrt.hardware import cpu_has_fast_bf16, usable_cpus

# srtrt precision -> INFERENCE_PRECISION_HINT; int8's hint is for the layers its graph leaves in float.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}
KEEP_COMPILED = 4        # window shapes held compiled at once; each holds its own activation memory
# Windows below this many LR pixels (batch included) run on the dynamic-shape model until their shape comes
# again: compiling a static model (0.2-0.4 s) outweighs its speed-up there (bench/test_varied.py). Fewer
# where the dynamic model's blocks for such a window would not fit the CPU budget (_size_windows).
DYNAMIC_BELOW_PIXELS = 160_000
# The dynamic-shape model's memory is read after one inference of this side (its buffers grow with the
# pixels): RRDBNet's int8 window of 96 px, the static probe's, takes 1.2 s on the AVX2 EPYC, this one 0.15 s.
DYNAMIC_PROBE_SIDE = 32
STATIC_AFTER_IMAGES = 2  # a shape prepared or run this often is compiled static
# The dynamic-shape model keeps the kernels of every shape it has run, 5000 shapes by default: the default
# model in int8 took 1.5 GB more after 240 new sizes, and went on growing. Held to the last 16 shapes
# it levels off near 0.6 GB (oneDNN's own cache of kernels, shared by the process, holds the rest).
DYNAMIC_SHAPES_KEPT = 16
REMEMBERED_SHAPES = 4096  # shapes whose count is kept (a bound on memory, never reached by a folder)
CACHE_BUDGET_MB = 512    # compiled blobs kept in CACHE_DIR, least recently used dropped first (SRTRT_OPENVINO_CACHE_MB)
ABANDONED_AFTER_SECONDS = 3600  # a compile's private cache folder older than this was left by a killed process
INSTALL_HINT = "pip install openvino"

# Resident bytes per LR pixel of one compiled window, 64-channel x4 network: peak RSS growth
# from 256x256 to 512x640 windows, OpenVINO 2026.4 (bf16 4.5 KB, f32 8.6 KB; bench/README.md). Only for
# a model whose memory cannot be read from a compiled window (openvino_memory): a guess for any other.
BYTES_PER_PIXEL = {"bf16": 4_600, "fp32": 8_700, "int8": 8_700}


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


def _fused_reason(path: Path) -> str | None:
    """Why a graph with srtrt's fused op fails, said whatever OpenVINO fails on first (before 2026.1
    a rank it cannot infer past the op, not the op); None for any other graph."""
    import onnx

    from srtrt.engine.toolchain.export import fused_nodes
    from srtrt.kernels import fused_op

    try:
        if not fused_nodes(onnx.load(str(path), load_external_data=False)):
            return None
    except Exception:  # a file onnx cannot parse either: OpenVINO's own words
        return None
    return f"it holds {fused_op.NAME}, srtrt's fused op for TensorRT, which OpenVINO has not: export without --fused"


def masks_exact(precision: str, architecture: str) -> bool:
    """Whether the graph with masks (openvino_masks) computes what the plain one does: not a community
    model's int8, which rounds otherwise even under a mask of ones (a small RRDBNet: 2 levels of 255 on
    19 % of samples, Compact 1 level on 0.3 %); srtrt's own model's is bit-identical."""
    return precision != "int8" or architecture == "srresnet"


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
    """OpenVinoBackend.defaults from the table's guess (BYTES_PER_PIXEL, scaled by the model's width)."""
    bpp = BYTES_PER_PIXEL[precision] * channels // 64
    return defaults_for_budget(CPU_ACTIVATION_BUDGET, bpp, radius, batch=1)


class WindowMemory(NamedTuple):
    """Bytes per LR pixel one window holds (OpenVinoBackend.window_memory); 0: not known."""
    static: int   # on a model compiled for the window's shape
    dynamic: int  # on the dynamic-shape model (0 also where the graph has none)


def _byte_counts(entry: dict) -> bool:
    """Whether a cached window_memory entry holds what it should: a static figure, a dynamic one."""
    def count(key: str) -> bool:
        value = entry.get(key)
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return count("bytes_per_pixel") and entry["bytes_per_pixel"] > 0 and count("dynamic_bytes_per_pixel")


def cache_budget_bytes() -> int:
    """CACHE_DIR's size limit: SRTRT_OPENVINO_CACHE_MB (megabytes, a fraction allowed), else
    CACHE_BUDGET_MB; a value that is no such number is said once and the default kept."""
    said = os.environ.get("SRTRT_OPENVINO_CACHE_MB")
    if said is None:
        return CACHE_BUDGET_MB << 20
    try:
        megabytes = float(said)
        if not 0 <= megabytes < float("inf"):
            raise ValueError
    except ValueError:
        if said not in _SAID_BAD_BUDGET:
            _SAID_BAD_BUDGET.add(said)
            warnings.warn(f"SRTRT_OPENVINO_CACHE_MB={said!r} is not a number of megabytes (0 or more); "
                          f"the OpenVINO cache keeps its default limit of {CACHE_BUDGET_MB} MB", OutputNote, stacklevel=2)
        return CACHE_BUDGET_MB << 20
    return int(megabytes * (1 << 20))


_SAID_BAD_BUDGET: set[str] = set()


def _prune_blobs(folder: Path, budget: int | None = None, keep: Path | None = None) -> None:
    """Keep the blob cache within its size limit: every distinct window shape adds a blob, so the
    least recently used go first; the newest and those in the folder `keep` (the compile
    just done) always stay. A blob's mtime is when srtrt last stored or imported it (_mark_used): its
    atime is no record of use, relatime updates it once after each write and noatime never."""
    budget = cache_budget_bytes() if budget is None else budget
    stats = sorted(_blob_stats(folder), key=lambda item: item[1].st_mtime, reverse=True)
    total = 0
    for i, (path, stat) in enumerate(stats):
        total += stat.st_size
        if i > 0 and total > budget and path.parent != keep:
            _remove_blob(path, folder)


def _blob_stats(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """The blobs stored under `folder`, with their stat: one folder per compile key, and blobs an older
    srtrt kept at the top (never imported now: they age out). A compile's private folder (hidden) is
    left out: its blob is still being written."""
    stored = [p for p in folder.glob("*/*.blob") if not p.parent.name.startswith(".")]
    stats = []
    for path in [*folder.glob("*.blob"), *stored]:
        with contextlib.suppress(OSError):  # another process may have removed it since the listing
            stats.append((path, path.stat()))
    return stats


def _remove_abandoned_compiles(folder: Path) -> None:
    """Delete the private folders of compiles that ended without cleaning up (a process killed
    mid-compile): a compile takes seconds, so one an hour old is no one's."""
    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    for private in folder.glob(".*.partial-*"):
        with contextlib.suppress(OSError):
            if private.is_dir() and private.stat().st_mtime < cutoff:
                shutil.rmtree(private, ignore_errors=True)


def _remove_blob(blob: Path, root: Path) -> None:
    """Delete a blob, its record and its compile key's folder once empty."""
    with contextlib.suppress(OSError):  # another process may hold or have removed it
        blob.unlink()
    with contextlib.suppress(OSError):
        _record_path(blob).unlink()
    if blob.parent != root:
        with contextlib.suppress(OSError):  # not empty: another process stored a blob there meanwhile
            blob.parent.rmdir()


def _record_path(blob: Path) -> Path:
    """The integrity record srtrt keeps beside a blob it stored: the sha256 of the blob's bytes."""
    return blob.with_name(blob.name + ".sha256")


def _matches_record(blob: Path) -> bool:
    """Whether the blob's bytes are those srtrt stored. A missing or unreadable record (a blob
    OpenVINO wrote there itself, a record lost or damaged) counts as no match: compiled again."""
    try:
        return _record_path(blob).read_text(encoding="ascii").strip() == file_sha256(blob)
    except (OSError, ValueError):
        return False


def _verified_blobs(folder: Path) -> list[Path] | None:
    """The blobs in `folder` that match their records, after deleting every other one: OpenVINO
    checks a blob's header only, so a blob corrupted past it imports and computes wrong values.
    None when a blob that does not match could not be deleted: nothing may be imported from `folder`."""
    verified = []
    for blob in folder.glob("*.blob"):
        if _matches_record(blob):
            verified.append(blob)
            continue
        try:
            blob.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            return None
    return verified


def _mark_used(blobs: list[Path]) -> None:
    """Set the blobs' mtime to now: the recency _prune_blobs ranks by."""
    for blob in blobs:
        with contextlib.suppress(OSError):
            os.utime(blob)


def _store_blobs(private: Path, folder: Path) -> None:
    """Move the blobs a fresh compile wrote in `private` into `folder`, each one whole (a rename: a
    blob another process has mapped is replaced, never rewritten under it), its record written first."""
    try:
        folder.mkdir(exist_ok=True)
        for blob in private.glob("*.blob"):
            atomic.write_text(_record_path(folder / blob.name), file_sha256(blob) + "\n", fsync=False)
            os.replace(blob, folder / blob.name)
    except OSError:
        pass  # not stored: the next process compiles this shape again


_GRAPH_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> the graph file's sha256, hashed once per process


def _graph_identity(source: Path) -> str:
    """The graph by its bytes, not its path: a cache copied elsewhere, or read through the stand-in
    of a read-only root (a new temporary path each run), finds its blobs again."""
    try:
        stat = source.stat()
        seen = (str(source), stat.st_size, stat.st_mtime_ns)
        if seen not in _GRAPH_DIGESTS:
            _GRAPH_DIGESTS[seen] = file_sha256(source)
        return _GRAPH_DIGESTS[seen]
    except OSError:
        return str(source)


def _compile_key(source: Path, dims: list[int]) -> str:
    """The name of a compile's cache folder: what OpenVINO's blob name hashes (the graph and its window
    shape; not the compile options, which the CPU plugin applies on import), from what srtrt has at
    hand, so that one folder holds one blob. Were two blobs to share a folder, both would be verified
    before each compile: the key saves hashing and never decides what is imported."""
    described = repr((_graph_identity(source), dims, import_openvino().get_version()))
    return hashlib.sha256(described.encode()).hexdigest()[:20]


class OpenVinoBackend(PerShapeGraphs, Backend):
    name = "openvino"
    own_threads = True  # OpenVINO's TBB pool
    runs_masks = True  # openvino_masks

    @property
    def shares_sheets(self) -> bool:
        """A sheet is one compile where each size was one, where its masks change no value."""
        return masks_exact(self.precision, self.architecture)

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
            _remove_abandoned_compiles(self.cache)
            _prune_blobs(self.cache)
            self.config["CACHE_DIR"] = str(self.cache)
        except OSError:
            self.cache = None  # an unwritable cache costs start-up time only
        self._requests: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        self.compilations = 0  # how many window shapes were compiled static (tests check reuse)
        # windows below this run on the dynamic-shape model (0: every shape compiled static); lowered to what
        # the budget holds there once the model's memory is known (_size_windows). int8 compiles every shape:
        # its dynamic-shape model rounds otherwise than its static ones (up to 8 levels of 255, at the same
        # PSNR against fp32), and an image's windows, its whole pass and the sheets it shares must agree
        self.dynamic_pixels = 0 if self.model is None or precision == "int8" else DYNAMIC_BELOW_PIXELS
        self._dynamic = None  # the dynamic-shape infer request, compiled on first use
        self.dynamic_runs = 0  # inferences through it (tests and bench/ check which path ran)
        self._last = None  # the request of the last inference (its layer profile)
        self._prepared: OrderedDict[tuple[int, int, int], int] = OrderedDict()  # shape -> images prepared
        self.feature_channels = channels  # registry.ModelFacts.feature_channels: the table's guess, when needed
        self._defaults: TileDefaults | None = None
        self._masked: dict[tuple[int, ...], object] = {}  # shape -> infer request of the graph with masks
        self._mask_factors: dict[tuple[int, ...], list] = {}  # shape -> its mask inputs' resolutions

    @property
    def defaults(self) -> TileDefaults:
        """One window per call, as large as the CPU activation budget allows at what this model's
        windows cost here (window_memory): the bench/ sweep on the 2K-output image ran fastest as
        one window and slower with every extra window (margins are recomputed)."""
        if self._defaults is None:
            self._size_windows()
        return self._defaults

    def _size_windows(self) -> None:
        """Window sizes from what a window holds: the static models' for the windows a run plans,
        and the dynamic-shape model's for the small windows it takes (they must fit the budget
        too, and its blocks hold more: openvino_memory)."""
        memory = self.window_memory()
        self._defaults = (defaults_for_budget(CPU_ACTIVATION_BUDGET, memory.static, self.radius) if memory.static
                          else tile_defaults(self.precision, self.radius, self.feature_channels))
        if memory.dynamic:
            self.dynamic_pixels = min(self.dynamic_pixels, CPU_ACTIVATION_BUDGET // memory.dynamic)

    def window_memory(self) -> WindowMemory:
        """Bytes per LR pixel one window of this graph, precision and CPU holds, on a static model
        and on the dynamic-shape one. Its activations are read from a window compiled at the
        quality guard's size (reused from the blob cache where the guard ran) and from the
        dynamic-shape model after one small inference, and kept in the per-weights cache under the
        graph's sha256. Its input and output tensors come on top: the plugin's output and the copy
        `_run` takes of it are each a full output (Compact's window held 1.18 KB per LR pixel
        against 0.58 KB of activations; bench/window_memory.py). 0 where not known."""
        from srtrt import receptive_field
        from srtrt.engine.backends.agreement import reference_side
        from srtrt.engine.datapath.tiles import allowed_side
        from srtrt.hardware import cpu_flags, cpu_generation, cpu_model

        if self.graphs.dynamic is not None:
            side = reference_side(self.multiple_of, self.minimum)
            dims, source = [1, self.channels, side, side], self.graphs.dynamic
        elif self.graphs.first is not None:  # per-shape graphs: the one exported already
            dims, source = list(self.graphs.first), self.graphs.static(self.graphs.first)
        else:
            return WindowMemory(0, 0)

        def probe() -> dict:
            static = self._compile(dims, "x".join(map(str, dims))).get_compiled_model()
            pixels = dims[0] * dims[2] * dims[3]
            entry = {"bytes_per_pixel": -(-openvino_memory.peak_activation_bytes(static) // pixels),
                     "dynamic_bytes_per_pixel": 0}
            if self.dynamic_pixels:  # its graph has the shapes of its last inference: a small one
                side = allowed_side(DYNAMIC_PROBE_SIDE, self.multiple_of, self.minimum)
                dynamic = self._dynamic_request()
                dynamic.infer({0: np.zeros((1, self.channels, side, side), np.float32)})
                entry["dynamic_bytes_per_pixel"] = -(-openvino_memory.dynamic_activation_bytes(
                    dynamic.get_compiled_model()) // side**2)
            return entry

        # the precisions the plugin picks follow the hint, its version and the CPU's instruction set
        ident = repr((self.config["INFERENCE_PRECISION_HINT"], self._ov.get_version(), cpu_model(),
                      cpu_generation(), sorted(cpu_flags())))
        kind = "openvino-memory-" + hashlib.sha256(ident.encode()).hexdigest()[:16]
        try:
            entry = receptive_field.cached(kind, file_sha256(source), probe, _byte_counts)
        except OSError:  # the graph went from the cache meanwhile: the table's guess
            return WindowMemory(0, 0)
        tensors = 4 * self.channels * (1 + 2 * self.scale**2)  # f32 input, output, output's copy
        dynamic = entry["dynamic_bytes_per_pixel"]
        return WindowMemory(entry["bytes_per_pixel"] + tensors, dynamic + tensors if dynamic else 0)

    def _read(self, path: Path):
        # The ONNX frontend alone: read_model would also try other frontends on a bad file, and they log noise.
        try:
            frontend = self._frontends.load_by_framework("onnx")
            return frontend.convert(frontend.load(str(path)))
        except Exception as e:  # OpenVINO raises several unrelated types (GeneralFailure, OpConversionFailure, ...)
            raise SrtrtError(f"OpenVINO cannot read this ONNX file ({_fused_reason(path) or failure_reason(e)})",
                             path) from None

    def _compile(self, dims: list[int], label: str, masked: bool = False, config: dict | None = None):
        source = self.graphs.dynamic if self.model is not None else self.graphs.static(tuple(dims))
        if self.model is None:  # a graph exported for this very shape: nothing to reshape
            model = self._read(source)
        else:
            model = self.model.clone()
            model.reshape({model.inputs[0]: self._ov.PartialShape(dims)})
        try:
            if masked:
                model, self._mask_factors[tuple(dims)] = openvino_masks.with_masks(model, dims)
            key = [*dims, "masked"] if masked else dims
            return self._compile_cached(model, source, key, config).create_infer_request()
        except Exception as e:
            raise SrtrtError(f"OpenVINO cannot compile this ONNX file for {label} ({failure_reason(e)})", self.path) from None

    def _compile_cached(self, model, source: Path, dims: list[int], extra: dict | None = None):
        """compile_model through the blob cache under config's CACHE_DIR. Each compile has a folder of
        its own there (_compile_key), so the blobs it may import are known before OpenVINO opens them:
        only those are verified, and only verified ones are imported. The cache is pruned after each
        compile: a run or a long-lived backend adds a blob per new shape. `extra`: settings of this compile alone."""
        config = {**self.config, **(extra or {})}
        root = config.pop("CACHE_DIR", None)
        if root is None:
            return self.core.compile_model(model, "CPU", config)
        folder = Path(root) / _compile_key(source, dims)
        verified = _verified_blobs(folder)
        if verified is None:  # a corrupt blob stayed: compiled here, nothing read or stored
            return self.core.compile_model(model, "CPU", config)
        if verified:
            compiled = self.core.compile_model(model, "CPU", dict(config, CACHE_DIR=str(folder)))
            _mark_used(verified)
        else:
            compiled = self._compile_and_store(model, config, folder)
        _prune_blobs(Path(root), keep=folder)
        return compiled

    def _compile_and_store(self, model, config: dict, folder: Path):
        """A fresh compile whose blob OpenVINO writes in a private folder beside `folder` (it writes in
        place, and another process could import the file half-written): moved in whole, once recorded."""
        private = Path(atomic.temp_name(folder))
        try:
            private.mkdir(parents=True)
        except OSError:  # an unwritable cache: compiled, not stored
            return self.core.compile_model(model, "CPU", config)
        try:
            compiled = self.core.compile_model(model, "CPU", dict(config, CACHE_DIR=str(private)))
            _store_blobs(private, folder)
            return compiled
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _request(self, batch: int, height: int, width: int):
        """The infer request for this input shape: its own static model when it has one, is large or
        was prepared for more than one image (compiled now); else the shared dynamic-shape model."""
        shape = (batch, height, width)
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        if self._defaults is None and self.dynamic_pixels:
            self._size_windows()  # which windows the dynamic-shape model can hold in the budget
        if batch * height * width < self.dynamic_pixels and self._prepared.get(shape, 0) < STATIC_AFTER_IMAGES:
            return self._dynamic_request()
        self._requests[shape] = self._compile([batch, self.channels, height, width],
                                              f"{batch}x{self.channels}x{height}x{width}")
        self.compilations += 1
        while len(self._requests) > KEEP_COMPILED:
            self._requests.popitem(last=False)
        return self._requests[shape]

    def _dynamic_request(self):
        """The dynamic-shape model's infer request, compiled on first use."""
        if self._dynamic is None:
            self._dynamic = self._compile([-1, self.channels, -1, -1], "any input size",
                                          config={"CPU_RUNTIME_CACHE_CAPACITY": str(DYNAMIC_SHAPES_KEPT)})
        return self._dynamic

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

    def infer_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`infer` through the graph with masks (openvino_masks), compiled static for this shape."""
        dims = [x.shape[0], self.channels, x.shape[2], x.shape[3]]
        shape = tuple(dims)
        if shape not in self._masked:
            self._masked[shape] = self._compile(dims, "x".join(map(str, dims)) + " with masks", masked=True)
        feed = {0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        for factor in self._mask_factors[shape]:
            at = masks_at(mask, int(dims[2] * factor), int(dims[3] * factor))
            feed[openvino_masks.mask_name(factor)] = np.ascontiguousarray(at.cpu().numpy(), dtype=np.float32)
        request = self._masked[shape]
        result = request.infer(feed, share_inputs=True, share_outputs=False)
        self._last = request
        return torch.from_numpy(result[0])

    def every_form_infer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A small `x` through each compiled form it may run on: the dynamic-shape model (not int8's)
        and a static one. They are different graphs, and OpenVINO has computed wrong values in one and
        not the other (2026.4: a bias-less int8 conv read by two nodes, quantize._prelu_as_max)."""
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
        self._masked.clear()
        self._dynamic = self._last = None
