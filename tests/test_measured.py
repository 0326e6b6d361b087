"""`--backend auto` times the paths the guard allows (engine/backends/measured.py): real backends,
measured once per CPU, model, library versions and window, never trusted from a foreign entry."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import pytest
import torch

from srtrt.engine.backends import measured
from srtrt.engine.backends.torch_backend import TorchBackend

from conftest import random_view

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")

SHA = "c" * 64
WINDOW = (24, 24)
PATHS = [("torch", "bf16"), ("torch", "fp32")]


class Counted:
    """A real TorchBackend that counts its calls."""

    def __init__(self, backend):
        self.backend, self.calls = backend, 0

    def infer(self, x):
        self.calls += 1
        return self.backend.infer(x)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.backend.close()


@pytest.fixture(autouse=True)
def one_look(monkeypatch):
    """Each candidate built and timed once (the second look has its own test), so builds can be counted."""
    monkeypatch.setattr(measured, "CONFIRM_BUDGET", 0)


BUSY_WAITED = measured.BUSY_WAITED  # the product's threshold (conftest.steady_host lifts it; busy-host tests set it back)


@contextlib.contextmanager
def busy_host():
    """Other programs keeping every CPU busy (two per CPU) while the block runs."""
    from srtrt.hardware import usable_cpus

    spinners = [subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2 * usable_cpus())]
    try:
        for spinner in spinners:  # each one started and spinning (on a loaded host a start takes seconds)
            assert spinner.stdout.readline() == "spinning\n"
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


@contextlib.contextmanager
def reported_busy(monkeypatch, fraction: float = 0.6):
    """This process's threads said to wait `fraction` of their time for a CPU while the block runs (as
    with two busy programs beside it on 2 cores: test_cpu_wait_sees_other_programs_keep_the_cpu_busy)."""
    from srtrt import hardware

    with monkeypatch.context() as patch:
        patch.setattr(hardware.CpuWait, "fraction", lambda self: fraction)
        patch.setattr(measured, "BUSY_WAITED", BUSY_WAITED)
        yield


def test_cpu_wait_sees_other_programs_keep_the_cpu_busy():
    from srtrt import hardware

    if hardware._thread_schedstats() is None:
        pytest.skip("the kernel does not say how long threads wait for a CPU (no schedstat)")
    with busy_host():
        wait, end = hardware.CpuWait(), time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
        waited = wait.fraction()
    assert waited > 2 * BUSY_WAITED  # three programs a CPU: about two thirds


@pytest.fixture(scope="module")
def view():
    return random_view(blocks=1, channels=8, seed=3)


def maker(view, made: list | None = None):
    def make(name, precision):
        assert name == "torch"
        backend = Counted(TorchBackend(view, "cpu", precision))
        if made is not None:
            made.append((precision, backend))
        return backend
    return make


def test_window_is_the_core_plus_the_margin_rounded_to_what_the_model_takes():
    assert measured.window_shape(40) == (measured.MEASURE_CORE + 80,) * 2
    assert measured.window_shape(5, multiple_of=16) == (80, 80)
    assert measured.window_shape(0, minimum=100) == (100, 100)


def test_every_candidate_is_run_and_a_losing_one_stops_after_one_timed_call(view, monkeypatch):
    made = []
    seconds = measured.measure(PATHS, maker(view, made), WINDOW)
    assert sorted(seconds) == ["torch bf16", "torch fp32"] and all(v > 0 for v in seconds.values())
    assert [p for p, _ in made] == ["bf16", "fp32"]
    backend = Counted(TorchBackend(view, "cpu", "fp32"))
    measured.time_path(backend, WINDOW, best_so_far=1e-9)  # far behind the best: the warm-up call only
    assert backend.calls == 1
    backend.calls = 0
    monkeypatch.setattr(measured, "MIN_SECONDS", float("inf"))  # a stall on a loaded host ends no loop early
    measured.time_path(backend, WINDOW)
    assert backend.calls == measured.MAX_CALLS + 1  # warm-up, then calls until MIN_SECONDS or MAX_CALLS


class Clock:
    """Time as measured.time_path reads it, moved on by the calls it times alone: a host's load moves
    no figure (a real sleep that woke late crossed a cut)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_a_slow_first_call_alone_does_not_cut_a_path_that_is_faster(view, monkeypatch):
    """A first call costs up to ~3x a steady one (OpenVINO's first inference after a compile): a path
    whose warm-up is ~3x the leader's steady call but whose steady calls are faster is timed (the
    old 2.25x cut ended it there), and only a warm-up beyond WARM_UP_CUT ends a path at its first
    call, said so in the line."""
    clock, leader = Clock(), 0.01
    monkeypatch.setattr(measured, "time", clock)
    backend, costs = Counted(TorchBackend(view, "cpu", "fp32")), []
    infer = backend.backend.infer

    def timed(x):  # the real call, taking the time `costs` says: the warm-up's, then a steady one's
        clock.now += costs[0] if backend.calls == 1 else costs[1]
        return infer(x)
    backend.backend.infer = timed
    costs[:] = [3.1 * leader, 0.1 * leader]
    figure = measured.time_path(backend, WINDOW, best_so_far=leader)
    assert backend.calls >= 2 and not isinstance(figure, measured.FirstCall) and figure == pytest.approx(0.1 * leader)
    backend.calls, costs[:] = 0, [1.01 * measured.WARM_UP_CUT * leader, 0.1 * leader]
    figure = measured.time_path(backend, WINDOW, best_so_far=leader)
    assert backend.calls == 1 and isinstance(figure, measured.FirstCall)
    line = measured.figures({"torch bf16": leader, "torch fp32": figure}, WINDOW, ("torch", "bf16"),
                            first_call_only=["torch fp32"])
    assert line.startswith("torch bf16 ") and "(picked)" in line
    assert f"torch fp32 <= {figure * 1e3:.0f} ms (first call only)" in line


def slow_down(backend, extra: float) -> None:
    """Each call of `backend.infer` then takes (1 + extra) times as long: the real call, then a sleep."""
    infer = backend.infer

    def slowed(x):
        start = time.perf_counter()
        y = infer(x)
        time.sleep(extra * (time.perf_counter() - start))
        return y
    backend.infer = slowed


def test_a_candidate_timed_in_a_slow_moment_of_the_host_is_timed_again(view):
    builds, figures = [], []

    def make(name, precision):  # two names for one real backend: equally fast
        backend = Counted(TorchBackend(view, "cpu", precision))
        builds.append(name)
        if builds == ["torch"]:  # its first build meets a slow moment: each call 15 % longer
            slow_down(backend, 0.15)
        return backend

    def timer(*args):
        figures.append(measured.time_path(*args))
        return figures[-1]

    seconds = measured.measure([("torch", "fp32"), ("same", "fp32")], make, (96, 96), timer=timer, budget=60)
    first_pass = dict(zip(["torch", "same"], figures[:2]))
    leader, other = sorted(first_pass, key=first_pass.get)
    if first_pass[other] <= measured.CONFIRM_WITHIN * first_pass[leader]:  # close: both looked at again
        assert builds == ["torch", "same", leader, other]  # the leader's second look first
        assert seconds[f"{leader} fp32"] == min(first_pass[leader], figures[2])
        assert seconds[f"{other} fp32"] == min(first_pass[other], figures[3])
    builds.clear()
    measured.measure([("torch", "fp32"), ("same", "fp32")], make, (96, 96), budget=0)
    assert builds == ["torch", "same"]  # no time left for a second look


def test_a_leader_with_no_runner_up_close_is_not_timed_again(view, monkeypatch):
    builds, clock = [], Clock()
    monkeypatch.setattr(measured, "time", clock)

    def make(name, precision):
        backend = TorchBackend(view, "cpu", precision)
        builds.append(name)
        infer = backend.infer

        def timed(x):  # the real call, taking 1 ms, or three times as long: never within CONFIRM_WITHIN
            clock.now += 0.003 if name == "slow" else 0.001
            return infer(x)
        backend.infer = timed
        return backend

    seconds = measured.measure([("torch", "fp32"), ("slow", "fp32")], make, (96, 96), budget=60)
    assert seconds["slow fp32"] > measured.CONFIRM_WITHIN * seconds["torch fp32"]
    assert builds == ["torch", "slow"]  # a second look could only lower the leader's figure


def test_measured_once_then_from_the_cache(view):
    made = []
    first, took, *_ = measured.cached_seconds(SHA, PATHS, maker(view, made), WINDOW)
    assert took > 0 and len(made) == 2
    again, took, *_ = measured.cached_seconds(SHA, PATHS, maker(view, made), WINDOW)
    assert took is None and again == first and len(made) == 2  # nothing built, nothing run
    chosen = measured.fastest(first, PATHS)
    assert first[measured.label(chosen)] == min(first.values())
    line = measured.figures(first, WINDOW, chosen)
    assert line.endswith("per 24x24 window") and f"{measured.label(chosen)} " in line and "(picked)" in line


def test_a_path_that_fails_is_left_out_and_said_not_the_end_of_the_run(view):
    """A path that raises when built or timed (SwinIR's bf16 at a size it was not built at raised
    "mat1 and mat2 must have the same dtype") ended `auto` with a traceback before any image. It is
    now never the pick, the reason line says why, and the cached measurement keeps it so."""
    from srtrt.errors import SrtrtError

    def make(name, precision):
        if precision == "bf16":
            raise RuntimeError("mat1 and mat2 must have the same dtype\n(a second line)")
        return Counted(TorchBackend(view, "cpu", precision))
    sha = "f" * 64  # a model of its own: the module's cache holds SHA's measurements
    seconds, took, *_ = measured.cached_seconds(sha, PATHS, make, WINDOW)
    assert took > 0 and measured.fastest(seconds, PATHS) == ("torch", "fp32")
    line = measured.figures(seconds, WINDOW, ("torch", "fp32"))
    assert "torch fp32 " in line and "torch bf16 failed (RuntimeError: mat1 and mat2 must have the same dtype)" in line
    again, took, *_ = measured.cached_seconds(sha, PATHS, make, WINDOW)
    assert took is None and isinstance(again["torch bf16"], measured.Failed) and again["torch fp32"] == seconds["torch fp32"]
    with pytest.raises(SrtrtError, match="no path runs this model here: torch bf16 RuntimeError: x; torch fp32 "):
        measured.fastest({"torch bf16": measured.Failed("RuntimeError: x"), "torch fp32": measured.Failed("y")}, PATHS)


def test_a_path_that_could_not_write_its_files_is_measured_again_next_run(view):
    """A cache disk that was full when `auto` first measured made openvino "failed" for good: every
    later run read the failure and took a slower path. A failure to write is the disk's state, not
    the path's: the measurement that holds one is measured again."""
    from srtrt.errors import CannotWrite

    full = [True]

    def make(name, precision):
        if precision == "bf16" and full[0]:
            raise CannotWrite("No space left on device", "graph.onnx")
        return Counted(TorchBackend(view, "cpu", precision))
    sha = "e" * 64
    seconds, took, *_ = measured.cached_seconds(sha, PATHS, make, WINDOW)
    assert took > 0 and isinstance(seconds["torch bf16"], measured.Failed)
    full[0] = False  # space freed
    again, took, *_ = measured.cached_seconds(sha, PATHS, make, WINDOW)
    assert took > 0 and not isinstance(again["torch bf16"], measured.Failed)
    third, took, *_ = measured.cached_seconds(sha, PATHS, make, WINDOW)
    assert took is None and third == again  # a clean measurement is kept as before


def test_a_measurement_taken_while_other_programs_kept_the_cpu_busy_is_taken_again(view, monkeypatch):
    """With other programs busy on every core, `auto` timed openvino int8 and bf16 716 and 721 ms a
    window (124 and 228 ms idle) and kept bf16 for every later run. A measurement taken while this
    process's threads waited for a CPU is used, said, and taken again by the next run, each path
    keeping its best figure, until one is taken on an idle host or BUSY_LOOKS were taken."""
    sha, looks = "b" * 64, []
    with reported_busy(monkeypatch):
        for _ in range(measured.BUSY_LOOKS):
            looks.append(measured.cached_seconds(sha, PATHS, maker(view), WINDOW))
            assert looks[-1].took > 0, "a busy look is never the last while fewer than BUSY_LOOKS were taken"
    for look in looks[:-1]:
        assert look.busy.startswith("taken while other programs kept the CPU busy (this process's threads waited ")
        assert look.busy.endswith("% of their time for it): measured again next run")
    kept = looks[-1]
    assert kept.busy == f"taken while other programs kept the CPU busy, at each of {measured.BUSY_LOOKS} looks " \
                        "(each path's best figure kept)"
    for name in kept.seconds:  # the best of the looks
        assert kept.seconds[name] <= min(look.seconds[name] for look in looks[:-1])
    again = measured.cached_seconds(sha, PATHS, maker(view), WINDOW)
    assert again.took is None and again.seconds == kept.seconds and again.busy == kept.busy


def test_a_look_on_an_idle_host_after_a_busy_one_is_kept(view, monkeypatch):
    sha = "a" * 64
    with reported_busy(monkeypatch):
        busy = measured.cached_seconds(sha, PATHS, maker(view), WINDOW)
    assert busy.took > 0 and busy.busy.endswith("measured again next run")
    with reported_busy(monkeypatch, 0.0):  # the next look on an idle host, whatever else this host runs meanwhile
        idle = measured.cached_seconds(sha, PATHS, maker(view), WINDOW)
    assert idle.took > 0 and idle.busy == ""
    assert all(idle.seconds[name] <= busy.seconds[name] for name in idle.seconds)  # each path keeps its best look
    again = measured.cached_seconds(sha, PATHS, maker(view), WINDOW)
    assert again.took is None and again.seconds == idle.seconds and again.busy == ""


def _entries(cache_root) -> tuple[object, dict]:
    path = cache_root / "receptive_field" / f"{SHA}.json"
    return path, json.loads(path.read_text())


def test_a_foreign_or_damaged_entry_is_measured_again(view, tmp_path, monkeypatch):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    measured.cached_seconds(SHA, PATHS, maker(view), WINDOW)
    path, stored = _entries(tmp_path)
    (kind, entry), = ((k, v) for k, v in stored["results"].items() if k.startswith("speed-"))
    for damage in ({"identity": {**entry["identity"], "cpu": "another CPU"}},   # copied from another machine
                   {"seconds": {"torch bf16": 0.001}},                           # a candidate missing
                   {"seconds": {"torch bf16": -1.0, "torch fp32": 0.5}},         # nonsense figures
                   {"seconds": {"torch bf16": True, "torch fp32": True}},        # booleans read as 1 s
                   {"first_call_only": None},                                    # was a TypeError
                   {"busy_looks": "1"}, {"busy_looks": -1}, {"busy_looks": True}, {"busy_looks": 10 ** 9}):
        stored["results"][kind] = {**entry, **damage}
        path.write_text(json.dumps(stored))
        seconds, took, *_ = measured.cached_seconds(SHA, PATHS, maker(view), WINDOW)
        assert took and sorted(seconds) == ["torch bf16", "torch fp32"] and min(seconds.values()) > 0


def test_another_window_threads_or_candidate_set_is_another_measurement(view):
    measured.cached_seconds(SHA, PATHS, maker(view), WINDOW)
    assert measured.cached_seconds(SHA, PATHS, maker(view), (32, 32))[1]
    assert measured.cached_seconds(SHA, list(reversed(PATHS)), maker(view), WINDOW)[1] is None  # the same set
    assert measured.cached_seconds(SHA, PATHS[1:], maker(view), WINDOW)[1]
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    try:
        assert measured.cached_seconds(SHA, PATHS, maker(view), WINDOW)[1]
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ a folder of many small sizes

def test_shape_class_of_a_run():
    small_distinct = [(100 + i, 80 + 2 * i) for i in range(10)]
    assert measured.shape_class_of(small_distinct) == measured.MANY_SIZES
    assert measured.shape_class_of(small_distinct[:7]) == measured.LARGE        # too few images to matter
    assert measured.shape_class_of([(120, 90)] * 10) == measured.LARGE           # one size: compiled once, then reused
    assert measured.shape_class_of([(2048, 1536)] * 6 + small_distinct[:4]) == measured.LARGE  # mostly big


def test_a_folders_shape_class_is_read_from_its_image_headers(tmp_path):
    from PIL import Image

    from srtrt.engine.batch.files import shape_class

    files = []
    for i in range(9):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (60 + 7 * i, 40 + 3 * i)).save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert shape_class(files + [tmp_path / "broken.png", tmp_path / "missing.png"]) == measured.MANY_SIZES
    assert shape_class(files[:5]) == measured.LARGE


def test_new_shapes_are_timed_with_their_set_up_after_one_warm_up_image(view):
    backend = Counted(TorchBackend(view, "cpu", "fp32"))
    seconds = measured.time_new_shapes(backend, (1, 1))
    assert seconds > 0 and backend.calls == 1 + len(measured.NEW_SHAPES)
    backend.calls = 0
    measured.time_new_shapes(backend, (1, 1), best_so_far=1e-9)  # behind after its first timed image: stops
    assert backend.calls == 2


def test_each_shape_class_is_its_own_measurement(view):
    sha = "d" * 64
    measured.cached_seconds(sha, PATHS, maker(view), WINDOW)
    _, took, *_ = measured.cached_seconds(sha, PATHS, maker(view), (1, 1), timer=measured.time_new_shapes,
                                      shape_class=measured.MANY_SIZES)
    assert took is not None
    assert measured.cached_seconds(sha, PATHS, maker(view), WINDOW)[1] is None  # the large class kept


def test_run_options_refuse_an_unknown_shape_class():
    from srtrt.engine.batch.options import RunOptions
    from srtrt.errors import SrtrtError

    assert RunOptions(shape_class="many-sizes").backend_key != RunOptions().backend_key
    with pytest.raises(SrtrtError, match="shape_class must be one of large, many-sizes"):
        RunOptions(shape_class="tiny")


def test_the_guard_measures_a_model_on_content_as_large_as_its_minimum_side(monkeypatch, own_srtrt_cache, tmp_path):
    """The guard's content was 96 LR pixels whatever the model's minimum side, which a model needing
    more failed on, as if its precision did not agree; calibrate's simulation rounded the side itself."""
    from dataclasses import replace

    from srtrt import zoo
    from srtrt.engine.backends import agreement
    from srtrt.engine.toolchain import mixed_int8

    sides = []
    real = zoo.reference_image
    monkeypatch.setattr(zoo, "reference_image", lambda side, *a, **k: sides.append(side) or real(side, *a, **k))
    pytest.importorskip("spandrel")
    from spandrel.architectures.Compact import Compact

    import srtrt

    from conftest import save_community_models

    path = save_community_models(tmp_path, {"c": lambda: Compact(num_feat=8, num_conv=2, upscale=2)})["c"]
    view = srtrt.load_model(str(path))
    view.facts = replace(view.facts, minimum=100, multiple_of=8)
    sides.clear()
    agreement.measured_agreement(view, "torch", "bf16", lambda: TorchBackend(view, "cpu", "bf16"))
    mixed_int8.selection_images([], 3, multiple_of=8, minimum=100)
    assert sides == [104] * (1 + len(mixed_int8.REFERENCE_SEEDS))
