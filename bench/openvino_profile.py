"""Where OpenVINO spends the time, per precision: the per-layer profile of what `srtrt run` compiles.

    python bench/openvino_profile.py [--precision bf16 int8 int8-prelu ...] [--model NAME|PATH] [--runs N] [--json PATH]

Each precision's backend is made as `srtrt run --backend openvino --precision P` makes it
(backends.create_backend: the same graph, polyphase tail and CPU hints), with OpenVINO's
PERF_COUNT on, for the window the runtime uses on the 2K-output workload (LR 512x384, one
window). After a warm-up the runs are timed, and the last run's per-layer timings are grouped by
layer type and by kernel (OpenVINO's exec type, e.g. brgconv_avx512_amx_I8, jit_avx512_bf16,
ref_...): the convolutions' time by number format, the Reorders (layout and precision
conversions) and the element-wise layers (residual adds, activations) around them. It answers
"why is int8 slower (or faster) than bf16 on this CPU" with the kernels that ran, not a guess.

`int8-prelu` is the int8 graph as it was before the PRelu rewrite (quantize.QDQ_FORM 1: each
PRelu between int8 convs kept, so OpenVINO fuses it and the next quantize into the conv), for
the before/after on a CPU with AMX, where those fused convs left AMX.

Prints a table per precision and a comparison; writes bench/results/openvino-profile-<device>.json
(the CPU and the library versions with it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from machine_info import cpu_info, describe, slug, versions  # noqa: E402
from workloads import make  # noqa: E402

TOP = 12  # kernel rows printed per precision


def number_format(exec_type: str) -> str:
    """The number format a kernel name says it computes in (OpenVINO CPU plugin naming)."""
    name = exec_type.lower()
    for fmt, marks in (("int8", ("i8", "int8", "u8")), ("bf16", ("bf16",)), ("f32", ("f32", "fp32"))):
        if any(mark in name for mark in marks):
            return fmt
    return "other"


def summarise(layers) -> dict:
    """Per-layer ProfilingInfo (or objects with its fields) -> milliseconds by layer type, by kernel and,
    for convolutions, by number format; plus the Reorders' count and time."""
    by_type, by_kernel, conv_by_format = defaultdict(float), defaultdict(float), defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for layer in layers:
        status = str(getattr(layer, "status", "EXECUTED"))
        if not status.endswith("EXECUTED"):
            continue  # NOT_RUN, OPTIMIZED_OUT: fused into a neighbour
        ms = layer.real_time.total_seconds() * 1e3
        node_type, exec_type = str(layer.node_type), str(layer.exec_type)
        total += ms
        by_type[node_type] += ms
        counts[node_type] += 1
        by_kernel[f"{node_type} / {exec_type}"] += ms
        if node_type == "Convolution":
            conv_by_format[number_format(exec_type)] += ms
    ordered = lambda d: dict(sorted(((k, round(v, 3)) for k, v in d.items()), key=lambda kv: -kv[1]))  # noqa: E731
    return {"profile_ms": round(total, 3), "by_type": ordered(by_type), "layers_by_type": dict(counts),
            "by_kernel": ordered(by_kernel), "convolution_ms_by_format": ordered(conv_by_format),
            "reorders": {"count": counts.get("Reorder", 0), "ms": round(by_type.get("Reorder", 0.0), 3)}}


def layer_rows(backend) -> list[dict]:
    """Every executed layer of the last inference, slowest first: its kernel and time, and from the
    compiled (runtime) model the precision it ran in and the graph nodes fused into it -- which
    convolutions took which kernel, and what was fused into the ones that left AMX."""
    def field(info, key: str) -> str:
        return str(info[key].astype(str)) if key in info else ""

    runtime = {}
    if backend._last is not None:
        for op in backend._last.get_compiled_model().get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            runtime[op.get_friendly_name()] = {"runtime_precision": field(info, "runtimePrecision"),
                                               "output_precisions": field(info, "outputPrecisions"),
                                               "fused": field(info, "originalLayersNames")}
    rows = []
    for layer in backend.layer_profile():
        if not str(layer.status).endswith("EXECUTED"):
            continue
        rows.append({"name": layer.node_name, "type": str(layer.node_type), "kernel": str(layer.exec_type),
                     "ms": round(layer.real_time.total_seconds() * 1e3, 3), **runtime.get(layer.node_name, {})})
    return sorted(rows, key=lambda row: -row["ms"])


@contextlib.contextmanager
def int8_graph_form(name: str):
    """For `int8-prelu`: quantize_onnx writes the form-1 graph (PRelu kept; its own cache name)."""
    if name != "int8-prelu":
        yield
        return
    from srtrt.engine.toolchain import quantize

    saved = quantize.QDQ_FORM, quantize._prelu_as_max
    quantize.QDQ_FORM, quantize._prelu_as_max = 1, lambda nodes, initializers: nodes
    try:
        yield
    finally:
        quantize.QDQ_FORM, quantize._prelu_as_max = saved


def profile(name: str, model: str | None, window_lr: np.ndarray, runs: int) -> dict:
    """One precision: its backend as `srtrt run` makes it, timed and profiled on one window."""
    from srtrt.engine.backends import create_backend
    from srtrt.engine.datapath.runtime import TiledUpscaler

    if name == "int8-prelu":
        import srtrt
        from srtrt.nets import CommunityView

        if isinstance(srtrt.load_model(model), CommunityView):  # exported by a child the patch does not reach
            raise SystemExit("int8-prelu profiles srtrt's own models only (--model srresnet|srgan|STEM)")
    with int8_graph_form(name):  # the graph is exported by the first inference at the latest
        backend = create_backend("openvino", model, name.split("-")[0], "cpu").backend
        backend.config["PERF_COUNT"] = True
        backend.config.pop("CACHE_DIR", None)  # compile here, with the counters, not from a cached blob
        h, w = TiledUpscaler(backend).plan(*window_lr.shape[:2]).window_shape
        x = torch.from_numpy(window_lr[:h, :w]).permute(2, 0, 1)[None].float().div(255).contiguous()
        backend.prepare(1, h, w)
        backend.infer(x)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.infer(x)
        times.append((time.perf_counter() - start) * 1e3)
    result = {"window": [h, w], "describe": backend.describe(), "runs_ms": [round(t, 1) for t in times],
              "wall_ms": round(statistics.median(times), 1), **summarise(backend.layer_profile()),
              "layers": layer_rows(backend)}
    backend.close()
    return result


def print_table(precision: str, r: dict) -> None:
    print(f"\n{precision}: {r['wall_ms']:.0f} ms a window {r['window'][0]}x{r['window'][1]} (median of "
          f"{len(r['runs_ms'])}), layers sum to {r['profile_ms']:.0f} ms; {r['describe']}")
    print(f"  convolutions by format: {', '.join(f'{k} {v:.0f} ms' for k, v in r['convolution_ms_by_format'].items())}")
    print(f"  reorders: {r['reorders']['count']} taking {r['reorders']['ms']:.0f} ms")
    for kernel, ms in list(r["by_kernel"].items())[:TOP]:
        print(f"  {ms:9.1f} ms {100 * ms / max(r['profile_ms'], 1e-9):5.1f} %  {kernel}")


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of 1 or more")
    return int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--precision", nargs="+", default=["bf16", "int8"], choices=["fp32", "bf16", "int8", "int8-prelu"])
    ap.add_argument("--model", default=None, help="checkpoint path or embedded name (default: the default model)")
    ap.add_argument("--runs", type=_at_least_one, default=3, help="timed runs per precision (the median is kept)")
    ap.add_argument("--json", default=None, help="default: bench/results/openvino-profile-<device>.json")
    args = ap.parse_args()
    info = cpu_info()
    print(f"{describe(info)}; openvino {versions()['openvino']}")
    lr = make("2k-output", "full").lr
    results = {}
    for precision in args.precision:
        results[precision] = profile(precision, args.model, lr, args.runs)
        print_table(precision, results[precision])
    if len(results) > 1:
        base = args.precision[0]
        print("\n" + ", ".join(f"{p} {r['wall_ms'] / results[base]['wall_ms']:.2f}x the time of {base}"
                               for p, r in results.items() if p != base))
    out = Path(args.json) if args.json else BENCH / "results" / f"openvino-profile-{slug(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "versions": versions(), "model": args.model or "default",
                               "measured": time.strftime("%Y-%m-%d %H:%M"), "precisions": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
