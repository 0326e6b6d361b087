"""ONNX export of a community model in a child process, with a fallback exporter.

torch.export takes srtrt's own networks, but some community architectures crash it outright
(SPAN, whose convolutions fuse their weights inside forward, dies with SIGSEGV in torch 2.14's
fake-tensor tracing): no exception to catch, the process is gone. So a community model is
exported by a child process that loads the same file, first with torch.export, then with the
TorchScript tracer; the parent sees an exit status. What fails is one line naming the
architecture and the stage, and `auto` then runs the model on torch.

    python -m srtrt.engine.toolchain.export_isolated MODEL OUT.onnx PRECISION POLYPHASE EXPORTER NONCOMMERCIAL
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from srtrt.errors import SrtrtError

TIMEOUT_S = 900  # a 23-block RRDBNet exports in about a minute on 2 cores


_failed: dict[tuple, str] = {}  # (weights, precision, polyphase) -> why, so one process tries each once


def export_community(view, path: Path, precision: str, polyphase: bool) -> Path:
    """Export `view` (a nets.CommunityView loaded from `view.source`) to `path`; one line if no exporter can."""
    key = (view.checkpoint_sha256, precision, polyphase)
    if key in _failed:
        raise SrtrtError(_failed[key], view.source)
    failures = []
    for exporter in ("dynamo", "torchscript"):
        command = [sys.executable, "-m", __name__, str(view.source), str(path), precision, str(int(polyphase)), exporter,
                   str(int(view.allow_noncommercial))]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            failures.append(f"{exporter}: no result in {TIMEOUT_S} s")
            continue
        if done.returncode == 0 and path.is_file():
            return path
        failures.append(f"{exporter}: {_cause(done)}")
    _failed[key] = f"{view.facts.architecture} does not export to ONNX ({'; '.join(failures)})"
    raise SrtrtError(_failed[key], view.source)


def _cause(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"the exporter crashed ({signal.Signals(-done.returncode).name})"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _child(model: str, out: str, precision: str, polyphase: str, exporter: str, noncommercial: str) -> int:
    import srtrt
    from srtrt.engine.toolchain.export import export_onnx

    try:
        view = srtrt.load_model(model, allow_noncommercial=noncommercial == "1")
        export_onnx(view, out, precision=precision, polyphase=polyphase == "1", exporter=exporter)
        if precision == "fp32":
            _check_at_another_size(view, Path(out))
    except Exception as e:  # the parent reads the last line of stderr
        Path(out).unlink(missing_ok=True)
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 2
    return 0


def _check_at_another_size(view, path: Path) -> None:
    """The graph must compute the network at a size it was not traced at: exporters bake Python
    branches on the input size into the graph (SwinIR's and HAT's window partition), and such a
    graph would fail, or be wrong, on every window but the traced one. Checked with OpenVINO,
    which runs the graph afterwards, against the module in fp32."""
    import numpy as np
    import torch

    from srtrt.engine.backends.openvino_backend import shared_core
    from srtrt.engine.toolchain.export import example_shape

    _, channels, side, _ = example_shape(view)
    step = max(view.facts.multiple_of, 1)
    x = torch.rand(1, channels, side + step, side + 2 * step)
    model = shared_core().read_model(str(path))
    model.reshape({model.inputs[0]: list(x.shape)})
    got = shared_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
    with torch.inference_mode():
        want = view(x).numpy()
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-3):
        raise ValueError(f"the graph is wrong at {x.shape[2]}x{x.shape[3]}, a size it was not traced at")


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:7]))
