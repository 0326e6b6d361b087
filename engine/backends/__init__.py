"""Backend selection: `create_backend("auto" | "torch" | "openvino" | "onnxruntime" | "tensorrt", ...)`.

`auto` takes the fastest backend this machine has, in the order measured by bench/:
TensorRT (a cached engine for this GPU) > torch CUDA; without CUDA, CPU_ORDER below, where a
path counts only if the quality guard measured it for this model. ONNX Runtime on the CPU is
slower than OpenVINO and torch, so it is chosen by name, or for `--precision fp16` (the one CPU
backend that runs fp16 graphs). The returned reason says what was picked and why, so users
never have to guess.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from srtrt import registry
from srtrt.cache import cache_dir, spilled
from srtrt.engine.backends import graph_cache
from srtrt.engine.backends.base import Backend, OnnxGraphs, TileDefaults
from srtrt.engine.backends.precision import (
    UNMEASURED,
    auto_precision,
    cpu_bf16_reason,
    measured_paths,
    passes_guard,
)
from srtrt.errors import CannotWrite, SrtrtError
from srtrt.nets import CommunityView

__all__ = ["Backend", "TileDefaults", "Selection", "create_backend"]


@dataclass
class Selection:
    backend: Backend
    reason: str
    facts: object = None  # the model's registry.ModelFacts (tile margin and how exact it is)


def torch_device(device: str | None, here: bool = True) -> torch.device:
    """The device `--device` names (None: the best there is); one line for a name srtrt cannot run on.
    `here`: the device must be this machine's (not a Ray cluster's, whose replicas may hold the GPUs)."""
    if device:
        try:
            d = torch.device(device)
        except RuntimeError:
            raise SrtrtError(f"--device {device}: not a device name (cpu, cuda or cuda:N)") from None
        if d.type not in ("cpu", "cuda"):
            raise SrtrtError(f"--device {device}: srtrt runs on cpu or cuda[:N]")
        if d.type == "cuda" and here and not torch.cuda.is_available():
            raise SrtrtError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
        return d
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.backends.torch_backend import TorchBackend

    try:
        return TorchBackend(view, device, precision)
    except ValueError as e:  # a precision torch cannot run here (int8, fp16 on the CPU): one line, no traceback
        raise SrtrtError(f"the torch backend: {e}") from None


def _model_sha256(view) -> str:
    """What the ONNX cache and the quality guard key a model by: its checkpoint file's hash."""
    from srtrt.engine.toolchain.export import state_dict_sha256

    return getattr(view, "checkpoint_sha256", "") or state_dict_sha256(view)


def _tail_form(view, polyphase: bool) -> bool:
    """Whether a graph asked for `polyphase` takes the polyphase tail: only where the architecture has
    one to rewrite, so a community model's graph is one file, exported once, for every backend."""
    return bool(polyphase) and registry.of(view.generator).rewrites_tail


def _onnx_path(view, precision: str, polyphase: bool = False, shape: tuple[int, int, int, int] | None = None):
    """Where the ONNX cache keeps this graph: by the model's sha256, precision and form (for int8, its
    calibration: a new calibration is a new graph) and, for a static graph, its (N, C, h, w)."""
    form = "-polyphase" if _tail_form(view, polyphase) else ""
    if precision == "int8":
        from srtrt.engine.toolchain.quantize import int8_graph_tag

        form = f"-{int8_graph_tag(view.int8_calibration)}{form}"
    fixed = "" if shape is None else "-" + "x".join(map(str, shape))
    return cache_dir("onnx") / f"{_model_sha256(view)[:16]}-x{view.scale}-{precision}{form}{fixed}.onnx"


_EXPORTING = [0.0]  # seconds this process has spent exporting graphs (exporting_seconds)


def exporting_seconds() -> float:
    """Seconds this process has spent exporting ONNX graphs: a model's first use pays them once,
    whichever path then runs, so `auto`'s reason line tells them apart from its timing."""
    return _EXPORTING[0]


def _exported_onnx(view, precision: str, polyphase: bool = False, shape: tuple[int, int, int, int] | None = None):
    """The graph `srtrt export` writes for this model (given `shape`, fixed at that shape), exported
    once and cached (_onnx_path). An int8 graph is the cached fp32 one quantised (exported first if
    missing: `auto` times both, and one trace then serves both)."""
    polyphase = _tail_form(view, polyphase)  # the form the file, its record and its metadata all say
    path = _onnx_path(view, precision, polyphase, shape)
    spill = spilled(path)  # where this process put it when the cache could not take it, if it did
    if spill is not None and spill.exists() and not path.exists():
        return _exported_onnx_at(spill, view, precision, polyphase, shape)
    try:
        return _exported_onnx_at(path, view, precision, polyphase, shape)
    except CannotWrite as e:  # a disk that filled since the start: the graph is kept for this run only
        if (spill := spilled(path, e.why)) is None:
            raise
        return _exported_onnx_at(spill, view, precision, polyphase, shape)


def _exported_onnx_at(path: Path, view, precision: str, polyphase: bool, shape: tuple[int, int, int, int] | None):
    from srtrt.engine.toolchain.export import export_for_runtime

    if path.exists() and not _this_models_graph(path, view, precision, polyphase):
        with contextlib.suppress(OSError):  # emptied, cut short, another model's or no file: made again, never run
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        with contextlib.suppress(OSError):  # its record describes the bytes removed
            path.with_name(path.name + ".json").unlink()
        if path.exists():  # _exported_onnx keeps the graph for this run elsewhere
            raise CannotWrite("is not this model's graph and cannot be removed", path)
    if path.exists():
        graph_cache.mark_used(path)
    else:
        float_graph = _exported_onnx(view, "fp32", polyphase, shape) if precision == "int8" else None
        started = time.perf_counter()
        try:
            if isinstance(view, CommunityView) and float_graph is None:  # traced in a child process that loads its file
                from srtrt.engine.toolchain.export_isolated import export_community

                export_community(view, path, precision, polyphase, shape, quick=True)
            else:  # an int8 graph is the checked fp32 one quantised, which no exporter touches
                export_for_runtime(view, path, precision, polyphase=polyphase, dynamic=shape is None, input_shape=shape,
                                   float_graph=float_graph)
        finally:
            _EXPORTING[0] += time.perf_counter() - started
        if not _this_models_graph(path, view, precision, polyphase, just_exported=True):  # and records it
            with contextlib.suppress(OSError):  # a community model's child process loads its file again
                path.unlink()
            raise SrtrtError("the file changed while srtrt read it (its graph is of other weights); run again",
                             getattr(view, "source", None))
        graph_cache.prune(path.parent, keep=path)  # one graph per window shape adds up: within a limit
    return path


def _this_models_graph(path, view, precision: str, polyphase: bool, just_exported: bool = False) -> bool:
    """Whether the cached graph at `path` is whole and was exported from this model's weights in this
    form. Its record (`<graph>.json`: the model's sha256, the form, the graph's own sha256) says so in
    milliseconds. A graph whose record disagrees is damaged (its metadata, written last, survives
    damage inside the weights), unless this process has just exported it (another process's export
    may have recorded its own bytes meanwhile). A graph without a record (one written before records
    were, or whose record could not be written) is judged by its ONNX metadata (a file cut short has
    none), which needs the onnx package (0.7 s to import), and recorded."""
    import json

    from srtrt.checkpoint import file_sha256
    from srtrt.engine.toolchain.export import GRAPH_FORM

    wanted = {"model_sha256": _model_sha256(view), "precision": precision, "polyphase": bool(polyphase),
              "graph_form": GRAPH_FORM}
    record = path.with_name(path.name + ".json")
    try:
        graph_sha256 = file_sha256(path)
    except OSError:
        return False
    with contextlib.suppress(OSError, ValueError, RecursionError):
        if json.loads(record.read_text()) == {**wanted, "sha256": graph_sha256}:
            return True
    if os.path.lexists(record) and not just_exported:
        return False
    from srtrt import atomic
    from srtrt.engine.toolchain.onnx_io import metadata

    try:
        meta = metadata(path)
    except Exception:  # not an ONNX file at all
        return False
    if {key: meta.get(key) for key in wanted} != wanted:
        return False
    with contextlib.suppress(OSError):  # unrecorded, it is judged by its metadata again next time
        atomic.write_text(record, json.dumps({**wanted, "sha256": graph_sha256}))
    return True


def _onnx_graphs(view, precision: str, polyphase: bool) -> OnnxGraphs:
    """The dynamic-shape graph; for a community model whose dynamic export fails (or is known to:
    SwinIR, HAT), one static graph per window shape, the first exported now so that a model no
    exporter takes is one line here, before any image. OpenVINO and ONNX Runtime both run these."""
    from srtrt.engine.backends.measured import window_shape

    if not isinstance(view, CommunityView):
        return OnnxGraphs(dynamic=_exported_onnx(view, precision, polyphase))
    from srtrt.engine.toolchain.export_isolated import ExportFailed, dynamic_failure, remember_dynamic_failure

    dynamic = _onnx_path(view, precision, polyphase)
    # Whether a dynamic graph holds at every size is judged on its fp32 trace (export_isolated._child);
    # an int8 graph is the fp32 one quantised, so its failure is the fp32 graph's.
    judged = _onnx_path(view, "fp32", polyphase)
    if dynamic_failure(view, dynamic) is None and dynamic_failure(view, judged) is None:
        try:
            return OnnxGraphs(dynamic=_exported_onnx(view, precision, polyphase))
        except SrtrtError as e:  # the next process goes straight to the static graphs, where the model is why
            if isinstance(e, ExportFailed) and e.lasting:
                remember_dynamic_failure(judged if precision == "int8" else dynamic, str(e))
    facts = view.facts
    graphs = OnnxGraphs(static=lambda shape: _exported_onnx(view, precision, polyphase, shape),
                        name=dynamic.name.replace(".onnx", "-NxCxHxW.onnx"),
                        first=(1, facts.channels, *window_shape(facts.margin, facts.multiple_of, facts.minimum)))
    graphs.static(graphs.first)
    return graphs


def _onnxruntime(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    if precision not in ("fp32", "fp16"):
        raise SrtrtError(f"onnxruntime runs fp32 or fp16 graphs, not {precision}")
    if refusal := view.facts.refusal(precision):  # as the torch backend, export and build refuse it
        raise SrtrtError(refusal)
    return OnnxRuntimeBackend(_onnx_graphs(view, precision, polyphase=False), view.scale, view.radius,
                              device=str(device))


def _openvino(view, device: torch.device, precision: str) -> Backend:
    from srtrt.engine.backends.openvino_backend import HINTS, OpenVinoBackend, available

    ok, why = available()
    if not ok:
        raise SrtrtError(why)
    if device.type != "cpu":
        raise SrtrtError(f"the openvino backend runs on the CPU, not {device}")
    if precision not in HINTS:
        raise SrtrtError(f"openvino runs {' or '.join(HINTS)} on the CPU, not {precision}")
    if refusal := view.facts.refusal(precision):
        raise SrtrtError(refusal)
    # bf16 is a compile-time hint on the CPU plugin: one fp32 graph serves fp32 and bf16; int8 has
    # its own (QDQ) graph. The polyphase tail: AMX convolutions want 16+ output channels, the RGB
    # tail has 3 (openvino_backend).
    graphs = _onnx_graphs(view, "int8" if precision == "int8" else "fp32", polyphase=True)
    return OpenVinoBackend(graphs, view.scale, view.radius, precision, channels=view.facts.feature_channels)


def _tensorrt(view, device: torch.device, precision: str) -> Backend:
    """A cached TensorRT plan for this GPU, else a cached TensorRT-RTX plan covering it; else one line why not."""
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend
    from srtrt.engine.backends.tensorrt_rtx_backend import TensorRTRTXBackend

    misses = []
    for flavour in (TensorRTBackend, TensorRTRTXBackend):
        try:
            return flavour.from_cache(_model_sha256(view), precision, device)  # a bare view has no file
        except SrtrtError as e:
            misses.append(str(e))
    raise SrtrtError("; ".join(misses))


_MAKERS = {"torch": _torch, "openvino": _openvino, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def _make(name: str, view, dev: torch.device, precision: str) -> Backend:
    """A backend of `name` for `view`, told the model's input facts: every path built, the one
    picked and those only judged or timed alike (a grey model's static graphs take one channel)."""
    return _fit_to_model(_MAKERS[name](view, dev, precision), view)


# Without CUDA, the candidates in the order they are judged (and picked by when nothing is timed:
# ties, or a caller that passes no timer). bench/ measured this order on a 2-core Zen 4 EPYC
# (openvino int8 0.74 s, bf16 1.20 s, torch bf16 2.04 s, openvino fp32 2.69 s, torch fp32 5.64 s per
# 2K-output image), but an AMX Xeon put int8 behind bf16: `auto` times the paths (measured.py).
# int8 is timed on every CPU, VNNI or not: on an AVX2-only Zen 3 EPYC it ran 2.6x faster than
# openvino fp32 (and changed Set5 by -0.039 dB, against -0.044 dB with VNNI).
# fp32 needs no guard measurement (torch's is the reference, OpenVINO's is told f32); every other path
# needs one for this model.
CPU_ORDER = [("openvino", "int8"), ("openvino", "bf16"), ("torch", "bf16"), ("openvino", "fp32"), ("torch", "fp32")]
CPU_REFERENCE = ("torch", "fp32")


def cpu_choice(sha: str, asked: str = "auto", openvino: tuple[bool, str] = (True, ""), guard: dict | None = None,
               fast_bf16_cpu: bool | None = None, calibrated: bool = True, judge=None, timer=None,
               calibration: str | None = None, only: str | None = None) -> tuple[str, str, str]:
    """(backend, precision, why) for `--backend auto` without CUDA: of the CPU_ORDER paths this
    machine has and the quality guard allows for the model with this sha256, the fastest.
    `only`: of that backend's paths (`--backend openvino --precision auto`).

    `openvino` is (installed, why not); `guard` and `fast_bf16_cpu` default to the real file and
    CPU; `calibrated`: the model has int8 ranges (its sidecar's int8_calibration), and
    `calibration` their digest, which the guard's int8 measurement must name.
    `judge(backend, precision) -> (allowed, why)` replaces the Set5 guard (a community model's
    agreement with its own fp32 output, agreement.py). `timer(paths) -> (path, figures)` picks
    among several allowed paths by measuring them (measured.py); without one the first allowed
    path in CPU_ORDER is taken.
    """
    from srtrt.engine.backends.openvino_backend import HINTS

    has_openvino, openvino_why = openvino
    notes = [] if has_openvino else [openvino_why]
    if asked == "int8" and not has_openvino:
        raise SrtrtError(f"int8 runs on the openvino backend only: {openvino_why}")
    if only == "openvino" and not has_openvino:
        raise SrtrtError(openvino_why)  # as the backend itself says it (_openvino)
    if asked == "fp16":  # no fp16 units on a CPU: onnxruntime is the one CPU backend that takes fp16 graphs
        from srtrt.engine.backends.onnxruntime_backend import available

        has_onnxruntime, why = available()
        if not has_onnxruntime:
            raise SrtrtError(f"fp16 runs on the CPU through the onnxruntime backend only: {why}")
        return "onnxruntime", "fp16", "as asked (onnxruntime: the one CPU backend that runs fp16)"
    if asked != "auto":  # the precision asked for, on the backend that runs it fastest
        paths = [(name, asked) for name in ("openvino", "torch") if (name != "openvino" or has_openvino and asked in HINTS)
                 and (name != "torch" or asked != "int8")]
        return _timed(paths, {p: "as asked" for p in paths}, notes, timer)
    own_model, unmeasured = judge is None, judge is None and not measured_paths(sha, guard)
    if unmeasured:  # fp32 only, on whichever backend runs it fastest: it needs no guard
        notes.append(UNMEASURED)
    elif judge is None:
        def judge(name, precision):
            return passes_guard(name, "cpu", precision, sha, guard, exact=True, calibration=calibration)
    if (no_bf16 := _cpu_unfit("bf16", calibrated, fast_bf16_cpu)) and not unmeasured:
        notes.append(f"bf16 not used ({no_bf16})")
    no_int8 = _cpu_unfit("int8", calibrated, fast_bf16_cpu)
    if no_int8 and has_openvino and not unmeasured:
        notes.append(f"int8 not used ({no_int8})")
    allowed: dict[tuple[str, str], str] = {}
    for name, precision in CPU_ORDER:
        if (name == "openvino" and not has_openvino) or (precision == "bf16" and no_bf16) or \
                (precision == "int8" and no_int8) or only not in (None, name):
            continue
        if (name, precision) == CPU_REFERENCE:
            allowed[name, precision] = "fp32, the reference"
            continue
        if own_model and precision == "fp32":  # OpenVINO told f32 (HINTS): the reference's arithmetic, in another order
            allowed[name, precision] = "fp32, as the reference computes"
            continue
        if unmeasured:
            continue
        ok, why = judge(name, precision)
        if ok:
            allowed[name, precision] = f"allowed by the quality guard: {why}"
        else:
            notes.append(f"{name} {precision} not used ({why})")
    return _timed(list(allowed), allowed, notes, timer)


def _cpu_unfit(precision: str, calibrated: bool, fast_bf16_cpu: bool | None = None) -> str:
    """Why this CPU (or the model) rules `precision` out before any measurement, or "". bf16 without
    bf16 instructions is emulated; int8 runs on any CPU OpenVINO supports, and is timed there."""
    if precision == "bf16":
        return cpu_bf16_reason(fast_bf16_cpu)
    if precision == "int8":
        return "" if calibrated else "the model has no int8 calibration"
    return ""


def _timed(paths: list[tuple[str, str]], whys: dict, notes: list[str], timer) -> tuple[str, str, str]:
    """The fastest of `paths` by `timer` (the first when there is one path or no timer), and why."""
    if timer is None or len(paths) == 1:
        (name, precision), how = paths[0], "" if len(paths) == 1 else "the first allowed in CPU_ORDER (not timed); "
        return name, precision, "; ".join([how + whys[name, precision], *notes])
    (name, precision), figures = timer(paths)
    return name, precision, "; ".join([f"fastest here, {figures}", whys[name, precision], *notes])


def _speed_timer(view, dev: torch.device, sha: str, shape_class: str, calibration: str = ""):
    """The timer cpu_choice asks: each path run on the shapes this run's images bring (measured.py),
    once per CPU, sha256, int8 ranges, library versions and shape class; cached."""
    from srtrt.engine.backends import measured
    from srtrt.engine.backends.openvino_backend import masks_exact

    facts = view.facts
    int8_on_sheets = not calibration or masks_exact("int8", facts.architecture)  # no ranges: no int8 to time
    if shape_class == measured.MANY_SIZES and facts.sheet_gap and int8_on_sheets:
        # its images share sheets of one static shape on OpenVINO (sheet_runs.py), which run as big windows
        # do per pixel, and run one by one on torch, which has no per-shape cost. Where int8's would run
        # one by one (masks_exact), each path is timed on new sizes
        shape_class = measured.LARGE
    if shape_class == measured.MANY_SIZES:
        window, time_one = (facts.multiple_of, facts.multiple_of), measured.time_new_shapes
    else:
        window, time_one = measured.window_shape(facts.margin, facts.multiple_of, facts.minimum), measured.time_path

    def timer(paths):
        exported_before = exporting_seconds()
        found = measured.cached_seconds(sha, paths, lambda name, precision: _make(name, view, dev, precision),
                                        window, facts.channels, time_one, shape_class, calibration)
        exported = exporting_seconds() - exported_before
        chosen = measured.fastest(found.seconds, paths)
        took = found.took
        when = "measured earlier" if took is None else f"measured now in {took:.1f} s"
        figures = f"{when}: {measured.figures(found.seconds, window, chosen, shape_class, found.first_call_only)}"
        if took is not None and exported >= 0.05:  # a first use's exports: paid once per model, not per measurement
            figures += f" ({exported:.1f} s of the {took:.1f} s exported this model's graphs, once per model)"
        if found.busy:
            figures += f"; {found.busy}"
        return chosen, figures
    return timer


def _community_precision(view, name: str, dev: torch.device) -> tuple[str, str]:
    """`--precision auto` for a community model: the first reduced precision `name` runs on this
    device (fastest first) that the agreement guard allows, else fp32. On CUDA the agreement is
    measured with torch at that precision on the GPU (what fp16/bf16 storage costs this model,
    whichever engine then runs it); fp16 only where spandrel says the architecture takes it."""
    from srtrt.engine.backends.agreement import agreement_judge

    if dev.type == "cuda":
        candidates = [("torch", p) for p in (("fp16", "bf16") if name in ("auto", "torch") else ("fp16",))]
        judge = agreement_judge(view, lambda _, precision: _torch(view, dev, precision), "cuda")
    else:
        candidates = [(b, p) for b, p in CPU_ORDER if b == name and p != "fp32"]
        judge = agreement_judge(view, lambda backend, precision: _make(backend, view, dev, precision))
    reasons = []
    for backend, precision in candidates:
        unfit = "" if dev.type == "cuda" else _cpu_unfit(precision, bool(view.int8_calibration))
        ok, why = (False, unfit) if unfit else judge(backend, precision)
        if ok:
            return precision, why
        reasons.append(f"{precision} not used ({why})")
    return "fp32", f"fp32 ({'; '.join(reasons) or 'no faster precision on this backend'})"


def _auto_cpu(view, dev: torch.device, asked: str, sha: str, shape_class: str, only: str | None = None) -> Selection:
    """The fastest CPU path the guard allows (`only`: of that backend's precisions), and why."""
    from srtrt.engine.backends.openvino_backend import available

    judge = None
    if isinstance(view, CommunityView):  # no Set5 measurement: judged by agreement with its own fp32
        from srtrt.engine.backends.agreement import agreement_judge

        judge = agreement_judge(view, lambda name, precision: _make(name, view, dev, precision))
    from srtrt.engine.toolchain.quantize import calibration_digest, int8_graph_tag

    calibration = getattr(view, "int8_calibration", None)
    digest = calibration_digest(calibration) if calibration else None  # the guard's entries name the ranges
    graph = int8_graph_tag(calibration) if calibration else ""  # the timings name the graph too
    name, precision, why = cpu_choice(sha, asked, available(), calibrated=digest is not None, judge=judge,
                                      timer=_speed_timer(view, dev, sha, shape_class, graph), calibration=digest,
                                      only=only)
    backend = _make(name, view, dev, precision)
    if only:
        return Selection(backend, f"{backend.describe()}: as asked; precision {why}")
    if name != "torch":  # windows no graph can be made for (a static export that fails at their shape) run on torch
        backend.fallback = lambda: _make("torch", view, dev, "fp32")
    return Selection(backend, f"{backend.describe()}: no CUDA device; {why}")


def create_backend(name: str = "auto", model: str | None = None, precision: str = "auto",
                   device: str | None = None, view=None, allow_noncommercial: bool = False,
                   shape_class: str = "large") -> Selection:
    """Build the named backend (or the fastest available for `auto`) for a checkpoint.

    `allow_noncommercial`: passed to srtrt.load_model (community files of spandrel_extra_arches).
    `shape_class`: what the run's images are like ("large", or "many-sizes" for a folder of small
    images of many sizes: measured.shape_class_of), for the speed `auto` measures on the CPU."""
    import srtrt

    view = view if view is not None else srtrt.load_model(model, allow_noncommercial)
    if precision == "int8" and name != "torch" and not getattr(view, "int8_calibration", None):  # torch says its own
        from srtrt.engine.toolchain.quantize import no_calibration

        model = model or getattr(view, "source", None)
        raise SrtrtError(f"--precision int8: {no_calibration(model)}", model)
    selection = _create(name, precision, device, view, shape_class)
    _fit_to_model(selection.backend, view)
    selection.facts = view.facts
    return selection


def _fit_to_model(backend: Backend, view) -> Backend:
    """Give `backend` what the runtime asks it about the model's inputs (registry.ModelFacts)."""
    facts = view.facts
    backend.channels, backend.minimum, backend.multiple_of = facts.channels, facts.minimum, facts.multiple_of
    backend.grid = facts.grid
    backend.architecture, backend.sheet_gap = facts.architecture, facts.sheet_gap
    return backend


def _create(name: str, precision: str, device: str | None, view, shape_class: str = "large") -> Selection:
    dev = torch_device(device)
    sha, asked = _model_sha256(view), precision
    if precision == "auto" and isinstance(view, CommunityView) and (dev.type == "cuda" or name == "torch"):
        precision, why_precision = _community_precision(view, name, dev)
    elif precision == "auto" and name == "openvino" and dev.type == "cpu":
        # its precisions timed as `auto` times every path: int8 or bf16 is faster depending on the CPU
        return _auto_cpu(view, dev, "auto", sha, shape_class, only="openvino")
    elif precision == "auto":
        precision, why_precision = auto_precision(name if name != "auto" else "torch", dev, sha)
    else:
        why_precision = "as asked"
    if name != "auto":
        if name not in _MAKERS:
            raise SrtrtError(f"unknown backend {name!r} (auto, {', '.join(_MAKERS)})")
        backend = _make(name, view, dev, precision)
        return Selection(backend, f"{backend.describe()}: as asked; precision {why_precision}")

    if dev.type == "cuda":
        try:
            backend = _tensorrt(view, dev, precision)
            # an image whose windows the plan's profile cannot take (one fixed window: SwinIR, HAT) runs on torch
            backend.fallback = lambda: _fit_to_model(_torch(view, dev, precision), view)
            return Selection(backend, f"{backend.describe()}: a {backend.key.label} engine for this GPU is cached "
                                      f"(images outside its windows run on torch); precision {why_precision}")
        except (SrtrtError, ImportError) as e:
            fallback = f"TensorRT not used ({e})"
        backend = _torch(view, dev, precision)
        return Selection(backend, f"{backend.describe()}: fastest available on {dev}; precision {why_precision}; "
                                  f"{fallback}")
    return _auto_cpu(view, dev, asked, sha, shape_class)
