"""`--backend auto` on the CPU: every path the quality guard allows is timed on this machine, and
the fastest one runs.

A fixed order cannot know a CPU. OpenVINO int8 ran 1.6x faster than bf16 on a Zen 4 EPYC (VNNI,
no AMX) and 1.4x slower than bf16 on an AMX Xeon, for the same model and image (bench/, issue
notes); which CPU family is fast at what is exactly what a measurement finds out and a table gets
wrong on the next machine. So each candidate runs the model on one window of MEASURE_CORE LR
pixels plus the model's margin on each side (the shape class of the windows a run tiles into),
after one untimed warm-up call, for at least MIN_SECONDS; its best call counts.

A folder of photos of many sizes is another workload: each image is one window of a shape not
seen before, and a path that compiles per shape pays a compile per image that no per-window
timing shows (issue 24: OpenVINO int8, when it compiled every shape, ran such a folder at 0.47 of
its single-image rate, bf16 on its dynamic-shape model at 0.98). For that shape class
(`MANY_SIZES`, chosen by `shape_class_of` from the run's inputs) each candidate is timed on
NEW_SHAPES images of sizes it has not seen, compile included, after one warm-up image. srtrt's own
models put such images on sheets of one static shape instead (engine/batch/sheet_runs.py), so for
them the class is timed as LARGE: per pixel, a sheet runs as a big window does.

Measured once per CPU (model name, family/model, usable cores), model sha256, library versions
and window or shape class, then kept in the per-weights cache (receptive_field.cached): a second run starts with
no measurement. An entry from another CPU, other library versions or another candidate set is
never used: its identity is checked field by field, and a mismatch measures again.

A measurement taken while other programs kept the CPU busy is not kept as the truth: with two busy
programs beside it on this 2-core EPYC, the paths' figures rose 2.2-5.1x and unevenly (int8 and bf16,
1.8x apart when idle, were timed 716 and 721 ms a window during a test run, and bf16 was kept for
every later run). The kernel says how long this process's threads waited for a CPU
(hardware.CpuWait); above BUSY_WAITED of their runnable time, the run uses what it measured, says so,
and the next run measures again, each path keeping its best figure of all the looks, up to BUSY_LOOKS.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from srtrt.engine.datapath.tiles import allowed_side
from srtrt.errors import CannotWrite

MEASURE_CORE = 64     # LR core side of the timed window (the margin is added on each side)
MIN_SECONDS = 0.2     # timed calls per candidate continue until this much time is spent ...
MAX_CALLS = 5         # ... or this many calls were made
SLOWER_CUT = 1.5      # a candidate whose first timed call is this much slower than the best so far stops there
# A first call costs 1.1-3.1x a steady one here (OpenVINO's first inference after a compile, torch's
# allocations), so only a warm-up this many times the best steady call so far proves a path slower;
# at SLOWER_CUT² (2.25) a path up to 1.4x FASTER than the leader could be cut by its warm-up alone.
WARM_UP_CUT = 4.0
CONFIRM_WITHIN = 1.5  # after the pass, candidates this close to the leader are timed once more ...
CONFIRM_BUDGET = 4.0  # ... while the timing so far took less than this many seconds
BUSY_WAITED = 0.25    # threads waited this share of their runnable time for a CPU: measured while the host was busy
BUSY_LOOKS = 3        # (idle here: 0.00-0.01; beside two busy programs: 0.52-0.68) such a measurement is taken again
                      # by the next run, until one is not busy or this many were taken

# bumped when what a timed path runs changes, so no earlier timing is trusted (2: OpenVINO int8's small
# shapes run on its dynamic-shape model; 3: the warm-up cut moved from 2.25x to WARM_UP_CUT; 4: graphs whose
# nodes own their constants, export.GRAPH_FORM 2; 5: an entry says whether the host was busy while it was taken;
# 6: OpenVINO int8 compiles every shape, so a new size's compile is in its time)
RULES = 6
LARGE, MANY_SIZES = "large", "many-sizes"  # shape classes: big images in big windows; small images, each size new
NEW_SHAPES = [(120, 88), (104, 136), (144, 112)]  # LR sizes timed for MANY_SIZES (a warm-up image first: 96x128)
MANY_SIZES_MIN_IMAGES = 8  # a run this long or longer ...
SMALL_IMAGE_PIXELS = 160_000  # ... whose images are mostly below this (LR pixels) and mostly of distinct sizes

Path = tuple[str, str]  # (backend, precision)


def shape_class_of(sizes: list[tuple[int, int]]) -> str:
    """MANY_SIZES when most of a run's images are small and of distinct sizes, else LARGE."""
    if len(sizes) < MANY_SIZES_MIN_IMAGES:
        return LARGE
    small = sum(w * h < SMALL_IMAGE_PIXELS for w, h in sizes)
    return MANY_SIZES if 2 * small > len(sizes) and 2 * len(set(sizes)) > len(sizes) else LARGE


def label(path: Path) -> str:
    return f"{path[0]} {path[1]}"


def identity(window: tuple[int, int], shape_class: str = LARGE) -> dict:
    """What a measurement depends on besides the model: CPU, libraries, window shape and class."""
    from srtrt.hardware import cpu_generation, cpu_model, usable_cpus

    versions = {"torch": torch.__version__}
    try:
        from srtrt.engine.backends.openvino_backend import import_openvino

        versions["openvino"] = import_openvino().get_version()
    except ImportError:
        versions["openvino"] = ""
    return {"cpu": cpu_model(), "generation": cpu_generation(), "cpus": usable_cpus(), "threads": torch.get_num_threads(),
            "versions": versions, "window": list(window), "class": shape_class, "rules": RULES}


def window_shape(margin: int, multiple_of: int = 1, minimum: int = 1) -> tuple[int, int]:
    """The timed window: MEASURE_CORE plus the margin each side, rounded up to what the model accepts."""
    side = allowed_side(MEASURE_CORE + 2 * margin, multiple_of, minimum)
    return side, side


def time_path(backend, window: tuple[int, int], channels: int = 3, best_so_far: float = float("inf")) -> float:
    """Seconds per call of `backend.infer` on one window: the best timed call after a warm-up.

    A path that has clearly lost is not timed further: a warm-up call WARM_UP_CUT times the
    best so far is its figure (a FirstCall: one-time costs included, so an upper bound), and a
    first timed call SLOWER_CUT times the best ends it."""
    x = torch.rand(1, channels, *window, generator=torch.Generator().manual_seed(0))
    if hasattr(backend, "dynamic_pixels"):
        backend.dynamic_pixels = 0  # OpenVINO: timed as the static model a run's large windows get
    backend.prepare(1, *window)
    start = time.perf_counter()
    backend.infer(x)  # warm-up: allocates, fills caches
    warm_up = time.perf_counter() - start
    if warm_up > WARM_UP_CUT * best_so_far:
        return FirstCall(warm_up)
    best, spent, calls = float("inf"), 0.0, 0
    while calls < MAX_CALLS and (calls == 0 or spent < MIN_SECONDS):
        start = time.perf_counter()
        backend.infer(x)
        took = time.perf_counter() - start
        best, spent, calls = min(best, took), spent + took, calls + 1
        if took > SLOWER_CUT * best_so_far:
            break
    return best


class FirstCall(float):
    """A figure that is only a path's warm-up call (time_path's cut): an upper bound, said so in the reason line."""


class Failed(float):
    """A path that raised when built or timed: never the fastest; `why` goes into the reason line.
    `transient`: it failed for this machine's state at the moment (a file it could not write), so a
    measurement holding it is not trusted by a later run."""

    def __new__(cls, why: str, transient: bool = False):
        figure = super().__new__(cls, float("inf"))
        figure.why, figure.transient = why, transient
        return figure


def time_new_shapes(backend, rounding: tuple[int, int], channels: int = 3, best_so_far: float = float("inf")) -> float:
    """Mean seconds per image of a size the backend has not seen (NEW_SHAPES, rounded up to
    `rounding`: the model's multiple_of, passed where time_path takes its window), set-up and
    compiles included, after one warm-up image; stops early once clearly behind `best_so_far`.
    Compiled blobs are not read from or written to a disk cache here: a new folder's sizes are not in it."""
    multiple = rounding[0]
    config = getattr(backend, "config", None)
    if isinstance(config, dict):
        config.pop("CACHE_DIR", None)
    spent = []
    for h, w in [(96, 128), *NEW_SHAPES]:
        h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        x = torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(h * w))
        start = time.perf_counter()
        backend.prepare(1, h, w)
        backend.infer(x)
        spent.append(time.perf_counter() - start)
        if len(spent) > 1 and spent[-1] > SLOWER_CUT * best_so_far:
            break
    timed = spent[1:]  # the first image also compiled what every size shares
    return sum(timed) / len(timed)


def measure(candidates: list[Path], make: Callable[[str, str], object], window: tuple[int, int],
            channels: int = 3, timer: Callable = time_path, budget: float | None = None) -> dict[str, float]:
    """Seconds per window for each candidate, `make(backend, precision)` building each in turn
    (one at a time, so only one holds memory).

    A shared host has slow moments, and a candidate timed in one looks slower than it is (one full
    bench run here had `auto` take openvino bf16 over an int8 that ran 1.8x faster). So after the
    pass, when a runner-up is within CONFIRM_WITHIN of the leader, each candidate that close, the
    leader first (it too may have met a slow moment, and then a runner-up's second look would
    overtake it unfairly), is built and timed again while the timing has taken less than `budget`
    seconds (CONFIRM_BUDGET; builds and first-use exports not counted), and keeps its better figure:
    a slow moment only ever adds time."""
    seconds: dict[str, float] = {}
    timing, budget = [0.0], CONFIRM_BUDGET if budget is None else budget

    def timed(path: Path) -> float:
        try:
            with make(*path) as backend:
                start = time.perf_counter()
                figure = timer(backend, window, channels, min(seconds.values(), default=float("inf")))
                timing[0] += time.perf_counter() - start
                return figure
        except Exception as e:  # noqa: BLE001 - a path that fails here (a model's dtype mix, an export that
            # fails at this shape) is one the run must not take, not the end of the run
            return Failed(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}", isinstance(e, CannotWrite))

    for path in candidates:
        seconds[label(path)] = timed(path)
    if all(isinstance(value, Failed) for value in seconds.values()):
        return seconds
    leader = min(seconds.values(), default=0.0)
    close = [p for p in sorted(candidates, key=lambda p: seconds[label(p)]) if seconds[label(p)] <= CONFIRM_WITHIN * leader]
    if len(close) < 2:  # a second look only ever lowers a figure: a leader with no one close keeps its lead
        return seconds
    for path in close:
        if timing[0] > budget:
            break
        seconds[label(path)] = min(seconds[label(path)], timed(path))
    return seconds


def _kind(ident: dict) -> str:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"speed-{digest}"


class Measurement(NamedTuple):
    seconds: dict[str, float]    # per candidate label
    took: float | None           # how long measuring took now; None when read from the cache
    first_call_only: list[str]   # the labels whose figure is a first call only
    busy: str                    # "" or how the host's other programs may have raised the figures


def cached_seconds(sha256: str, candidates: list[Path], make, window: tuple[int, int], channels: int = 3,
                   timer: Callable = time_path, shape_class: str = LARGE, calibration: str = "") -> Measurement:
    """The cached figures when the cache holds this exact measurement, taken on a host that was not
    busy (or BUSY_LOOKS times on a busy one), else measured now and stored.
    `calibration`: the digest of the int8 ranges timed (other ranges make another int8 graph)."""
    from srtrt import receptive_field
    from srtrt.hardware import CpuWait

    ident = identity(window, shape_class)
    wanted = sorted(label(p) for p in candidates)
    measured_now, earlier = [], []  # earlier: a busy look at this measurement, which this one improves on

    def compute() -> dict:
        start, wait = time.perf_counter(), CpuWait()
        seconds = measure(candidates, make, window, channels, timer)
        waited = wait.fraction()
        measured_now.append(time.perf_counter() - start)
        first_call = {name for name, value in seconds.items() if isinstance(value, FirstCall)}
        failed = {name: value.why for name, value in seconds.items() if isinstance(value, Failed)}
        ran = {name: value for name, value in seconds.items() if name not in failed}
        transient = any(getattr(value, "transient", False) for value in seconds.values())
        looks = 1
        for entry in earlier:  # a slow moment only ever adds time: each path keeps its best look
            looks += entry["busy_looks"]
            for name, value in entry["seconds"].items():
                if name in ran and value < ran[name]:
                    ran[name] = value
                    (first_call.add if name in entry.get("first_call_only", []) else first_call.discard)(name)
        busy = waited is not None and waited > BUSY_WAITED
        return {"identity": ident, "seconds": ran, "failed": failed, "first_call_only": sorted(first_call),
                "took_seconds": measured_now[0], "transient": transient,
                "waited": None if waited is None else round(waited, 3), "busy_looks": looks if busy else 0}

    def valid(entry: dict) -> bool:
        seconds, failed, looks = entry.get("seconds"), entry.get("failed", {}), entry.get("busy_looks")
        well_formed = (entry.get("identity") == json.loads(json.dumps(ident)) and isinstance(seconds, dict)
                       and isinstance(failed, dict) and sorted([*seconds, *failed]) == wanted
                       and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
                               for v in seconds.values())
                       and all(isinstance(v, str) for v in failed.values())
                       and isinstance(entry.get("first_call_only", []), list)
                       and isinstance(looks, int) and not isinstance(looks, bool) and 0 <= looks <= BUSY_LOOKS)
        if well_formed and 0 < looks < BUSY_LOOKS and not entry.get("transient"):
            earlier.append(entry)
        return (well_formed and not entry.get("transient")  # a path failed for want of disk space: measured again
                and not 0 < looks < BUSY_LOOKS)

    entry = receptive_field.cached(_kind({**ident, "candidates": wanted, "int8": calibration}), sha256, compute, valid)
    seconds = {**entry["seconds"], **{name: Failed(why) for name, why in entry.get("failed", {}).items()}}
    return Measurement(seconds, measured_now[0] if measured_now else None, list(entry.get("first_call_only", [])),
                       _busy_note(entry))


def _busy_note(entry: dict) -> str:
    """What the reason line says of a measurement taken while the host was busy ("" when it was not)."""
    looks = entry["busy_looks"]
    if not looks:
        return ""
    if looks < BUSY_LOOKS:  # taken now: a cached entry like it is measured again
        return (f"taken while other programs kept the CPU busy (this process's threads waited {entry['waited']:.0%} of "
                "their time for it): measured again next run")
    return f"taken while other programs kept the CPU busy, at each of {looks} looks (each path's best figure kept)"


def fastest(seconds: dict[str, float], candidates: list[Path]) -> Path:
    """The candidate with the fewest seconds; ties go to the earlier candidate (the guard's order).
    When every candidate failed, one line saying why each did."""
    if all(isinstance(seconds[label(p)], Failed) for p in candidates):
        from srtrt.errors import SrtrtError

        raise SrtrtError("no path runs this model here: " + "; ".join(
            f"{label(p)} {seconds[label(p)].why}" for p in candidates))
    return min(candidates, key=lambda p: (seconds[label(p)], candidates.index(p)))


def figures(seconds: dict[str, float], window: tuple[int, int], chosen: Path, shape_class: str = LARGE,
            first_call_only: list[str] = ()) -> str:
    """'openvino bf16 41 ms (picked), torch bf16 88 ms, torch fp32 <= 300 ms (first call only), ...
    per 144x144 window'."""
    def part(name: str, value: float) -> str:
        if isinstance(value, Failed):
            return f"{name} failed ({value.why})"
        if name in first_call_only:
            return f"{name} <= {value * 1e3:.0f} ms (first call only)"
        return f"{name} {value * 1e3:.0f} ms{' (picked)' if name == label(chosen) else ''}"

    parts = [part(name, value) for name, value in sorted(seconds.items(), key=lambda kv: kv[1])]
    per = f"{window[0]}x{window[1]} window" if shape_class == LARGE else \
        "small image of a size not seen before (a folder of many sizes)"
    return f"{', '.join(parts)} per {per}"
