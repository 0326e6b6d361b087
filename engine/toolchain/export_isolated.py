"""ONNX export of a community model in a child process, with a fallback exporter.

torch.export takes srtrt's own networks, but some community architectures crash it outright
(SPAN, whose convolutions fuse their weights inside forward, dies with SIGSEGV in torch 2.14's
fake-tensor tracing): no exception to catch, the process is gone. So a community model is
exported by a child process that loads the same file, with torch.export and the TorchScript
tracer in turn (the tracer first for the graphs the cache keeps; the child checks every graph's
fp32 trace against the module: see `quick`); the parent sees an exit status. What fails is one
line naming the architecture and the stage, and `auto` then runs the model on torch.

Window-attention transformers (SwinIR, HAT) do not export with dynamic H and W: a Python branch
on the input size (the window partition's padding) is traced into a Reshape (SwinIR #145). A
graph exported at one static shape computes them exactly, so `shape` asks for that: one file per
window shape. Models whose facts say `static_export_only` (zoo.STATIC_EXPORT_ONLY) skip the dynamic attempt, and a failed dynamic
attempt is remembered beside the cached graph it would have been (NAME.onnx.failed), so the next
process does not spend the minutes again.

    python -m srtrt.engine.toolchain.export_isolated MODEL OUT.onnx PRECISION POLYPHASE EXPORTER NONCOMMERCIAL SHAPE \
        CALIBRATION
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from srtrt.atomic import partials_of
from srtrt.errors import CannotWrite, SrtrtError

TIMEOUT_S = 900  # a 23-block RRDBNet exports in about a minute on 2 cores

UNTRACED = "a size it was not traced at"  # how the child's check says a dynamic graph holds at one size only
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # torch.export colours its messages

_failed: dict[tuple, tuple] = {}  # (weights, precision, polyphase, shape or None) -> (why, lasting): tried once a process


CANNOT_WRITE = 75  # the child's exit status when the graph could not be written (EX_TEMPFAIL)


def export_community(view, path: Path, precision: str, polyphase: bool,
                     shape: tuple[int, int, int, int] | None = None, quick: bool = False) -> Path:
    """Export `view` (a nets.CommunityView loaded from `view.source`) to `path`, with dynamic N, H, W
    or, given `shape`, fixed at that (N, C, H, W); one line if no exporter can.

    quick: a graph for this machine's backends (the cache), not a file handed on: it is traced by
    the TorchScript exporter first (a 23-block RRDBNet: 28 s against 51 s through torch.export, a
    Compact 5 s against 9 s, child start-up and check included; OpenVINO runs both graphs alike),
    whose constants the child's check catches: every graph's fp32 trace is run against the module at
    a size it was not traced at."""
    key = (view.checkpoint_sha256, precision, polyphase, shape)  # one window shape failing says nothing of another
    if key in _failed:
        raise ExportFailed(*_failed[key], view.source)
    failures, of_the_machine = [], False
    exporters = ("torchscript", "dynamo") if quick else ("dynamo", "torchscript")
    for exporter in exporters:
        command = [sys.executable, "-m", __name__, str(view.source), str(path), precision, str(int(polyphase)), exporter,
                   str(int(view.allow_noncommercial)), "x".join(map(str, shape)) if shape else "dynamic",
                   # the int8 ranges this graph is named after (_onnx_path), not whatever the child finds stored
                   json.dumps(view.int8_calibration) if precision == "int8" else "-"]
        try:
            done = _run_child(command, path)
        except subprocess.TimeoutExpired:
            failures.append(f"{exporter}: no result in {TIMEOUT_S} s")
            of_the_machine = True
            continue
        if done.returncode == 0 and path.is_file():
            return path
        if done.returncode == CANNOT_WRITE:  # the disk, not the model: no other exporter is tried, nothing remembered
            raise CannotWrite(_cause(done), path)
        failures.append(f"{exporter}: {_cause(done)}")
        of_the_machine |= done.returncode < 0  # a signal: the OOM killer, a user's kill
        if exporter == "dynamo" and UNTRACED in failures[-1]:
            break  # the tracer bakes in more of the input size than torch.export, never less
    stage = "" if shape is None else f" at a static {'x'.join(map(str, shape[2:]))} window"
    _failed[key] = (f"{view.facts.architecture} does not export to ONNX{stage} ({'; '.join(failures)})",
                    not of_the_machine)
    raise ExportFailed(*_failed[key], view.source)


class ExportFailed(SrtrtError):
    """No exporter took the model. `lasting`: every exporter refused it with an error of its own,
    which the next process would meet again; a child killed (the OOM killer) or out of time says
    more of this machine at this moment than of the model."""

    def __init__(self, message: str, lasting: bool, path=None):
        super().__init__(message, path)
        self.lasting = lasting


def _run_child(command: list[str], path: Path) -> subprocess.CompletedProcess:
    """Run the exporter child to its end. Whatever ends this process's wait (Ctrl-C, SIGTERM, the
    timeout) kills the child first and removes the files it was writing beside `path`: an orphan
    would go on and write `path` after the command had ended."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            out, err = child.communicate(timeout=TIMEOUT_S)
        except BaseException:
            child.kill()
            child.wait()
            for leftover in (_float_graph(path, child.pid),
                             *path.parent.glob(partials_of(path.name, child.pid))):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            raise
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def _float_graph(out: Path, pid: int) -> Path:
    """The fp32 graph the child `pid` writes beside `out` first (two processes never share it)."""
    return out.with_name(f".{out.name}.{pid}.fp32.onnx")


def _die_with_parent() -> None:
    """Linux: the kernel kills this child if its parent dies without doing so (SIGKILL, the OOM killer)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fails_untraced(error: SrtrtError) -> bool:
    """Whether a dynamic-shape export failed because its graph computes the traced size only (the
    window partition of an architecture not yet in zoo.STATIC_EXPORT_ONLY): a fixed-size export may work."""
    return UNTRACED in str(error)


def static_only(view) -> str | None:
    """Why `view`'s architecture exports only at a fixed size, or None."""
    if view.facts.static_export_only:
        return f"{view.facts.architecture} has no dynamic-shape graph (its window partition is traced at one size)"
    return None


def dynamic_failure(view, path: Path) -> str | None:
    """Why `view` has no dynamic-shape graph at `path` (known for its architecture, or an earlier
    attempt with this torch), or None: worth trying."""
    known = static_only(view)
    if known:
        return known
    import torch

    try:
        memo = json.loads(Path(f"{path}.failed").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return memo.get("why") if isinstance(memo, dict) and memo.get("torch") == torch.__version__ else None


def remember_dynamic_failure(path: Path, why: str) -> None:
    """Beside a cached graph (never a user's `srtrt export` output): its dynamic export failed, and why."""
    import torch

    try:  # a cache that cannot be written costs the next process the attempt, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)  # the first graph of a new cache folder
        Path(f"{path}.failed").write_text(json.dumps({"torch": torch.__version__, "why": why}))
    except OSError:
        pass


def _cause(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"the exporter crashed ({signal.Signals(-done.returncode).name})"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _child(model: str, out: str, precision: str, polyphase: str, exporter: str, noncommercial: str,
           shape: str = "dynamic", calibration: str = "-") -> int:
    import srtrt
    from srtrt.engine.toolchain.export import export_onnx

    _die_with_parent()
    fixed = None if shape == "dynamic" else tuple(int(n) for n in shape.split("x"))
    # The fp32 graph is the one checked against the module: an fp16 trace takes the same Python
    # branches on the input size, and an int8 graph is that fp32 graph quantised. It is written beside
    # `out` and, for fp32, renamed onto it once checked: a failed export leaves a file already there as it was.
    float_graph = _float_graph(Path(out), os.getpid())
    form = dict(polyphase=polyphase == "1", exporter=exporter, dynamic=fixed is None, input_shape=fixed)
    try:
        view = srtrt.load_model(model, allow_noncommercial=noncommercial == "1")
        if calibration != "-":
            view.int8_calibration = json.loads(calibration)
        export_onnx(view, float_graph, precision="fp32", **form)
        _check_against_module(view, float_graph, fixed)
        if precision == "fp32":
            _rename(float_graph, Path(out))
        else:  # written atomically: `out` changes only when the graph is whole
            export_onnx(view, out, precision=precision, **form,
                        float_graph=float_graph if precision == "int8" else None)
    except Exception as e:  # the parent reads the last line of stderr
        if isinstance(e, CannotWrite):
            print(e.why, file=sys.stderr)
            return CANNOT_WRITE
        print(_innermost_cause(e), file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even the unlink of a missing file
            float_graph.unlink()
    return 0


def _rename(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as e:
        raise CannotWrite.of(e, target) from None


def _innermost_cause(error: BaseException) -> str:
    """The exception that started it all, on one line: torch.export wraps the cause (a padding too
    large for the input, an unsupported op) in a generic, coloured header."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _check_against_module(view, path: Path, shape: tuple[int, int, int, int] | None) -> None:
    """A dynamic graph must compute the network at a size it was not traced at: exporters bake Python
    branches on the input size into the graph (SwinIR's and HAT's window partition), and such a
    graph would fail, or be wrong, on every window but the traced one. A static graph is checked at
    its own shape. Checked with OpenVINO, which runs the graph afterwards, against the module in fp32."""
    import numpy as np
    import torch

    from srtrt.engine.backends.openvino_backend import failure_reason, shared_core
    from srtrt.engine.toolchain.export import example_shape

    untraced = shape is None
    if untraced:
        _, channels, side, _ = example_shape(view)
        step = max(view.facts.multiple_of, 1)
        shape = (1, channels, side + step, side + 2 * step)
    x = torch.rand(*shape)
    where = f"{x.shape[2]}x{x.shape[3]}" + (f", {UNTRACED}" if untraced else "")
    try:
        model = shared_core().read_model(str(path))
        model.reshape({model.inputs[0]: list(x.shape)})
        got = shared_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
    except Exception as e:  # OpenVINO's own types; its message names its source files first
        raise ValueError(f"the graph fails at {where} ({failure_reason(e)})") from None
    with torch.inference_mode():
        want = view(x).numpy()
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-3):
        raise ValueError(f"the graph is wrong at {where}")


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:9]))
