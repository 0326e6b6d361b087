"""Throughput of every case on the two workloads, plus tile-size and batch sweeps.

Each benchmark times one image per round (`pedantic`, one iteration, one warm-up round that
also absorbs torch.compile, CUDA-graph capture and engine set-up) and records in extra_info
what the report needs: workload, output megapixels, backend, precision, the FLOPs actually
computed (tiles' margins included) and which measured matmul peak they compare to.
"""
from __future__ import annotations

import cases
import model_flops
import pytest
import run_mode
import torch

CUDA = torch.cuda.is_available()
DEVICE_TYPE = "cuda" if CUDA else "cpu"
MODE = run_mode.current(CUDA)
WORKLOADS = ["2k-output", "2k-input"]
SWEEP_WORKLOAD = "2k-input" if CUDA else "2k-output"
MEMORY_HEADROOM = 0.8  # eager runs only when its estimated peak fits in this share of free memory


def workload_skip_reason(case: cases.Case, workload_name: str) -> str | None:
    """Bounds the run time: a 2K-input pass takes minutes on a small CPU, and torch.compile
    compiles once per window shape (a minute or more each)."""
    if workload_name != "2k-input" or MODE.name == "smoke":
        return None
    if case.compile:
        return "torch.compile is measured on the 2K-output image only (one compilation per window shape)"
    if DEVICE_TYPE != "cpu":
        return None
    if MODE.name == "quick":
        return "quick mode on a CPU: the 2K-input image runs only in the pipeline benchmark"
    if not case.big_on_cpu:
        return "on a CPU the 2K-input image runs only bicubic, eager (when it fits in memory), torch and openvino bf16"
    return None


def measure(benchmark, case: cases.Case, workload, view, device, workdir, rounds: int) -> None:
    if case.backend == "eager":
        need = cases.eager_peak_bytes(view.generator.config, workload.height, workload.width)
        have = cases.available_memory(device)
        if need > MEMORY_HEADROOM * have:
            pytest.skip(f"a whole-image eager pass needs about {need / 2**30:.0f} GiB, {device} has "
                        f"{have / 2**30:.0f} GiB free (the tiled runtime exists for this)")
    runner = cases.build_runner(case, view, workload, device, workdir)
    try:
        benchmark.group = f"{workload.name}: {case.group}"
        benchmark.extra_info.update(
            kind="throughput", case=case.id, group=case.group, backend=case.backend, precision=case.precision,
            options=case.options(), peak_key=cases.peak_key(case, device), weights=view.bench_weights,
            image_gflop=model_flops.image_flop(view.generator.config, workload.height, workload.width) / 1e9,
            **workload.info(), **runner.info)
        benchmark.pedantic(runner.run, rounds=rounds, iterations=1, warmup_rounds=1)
    finally:
        runner.close()
        if CUDA:
            torch.cuda.empty_cache()


@pytest.mark.parametrize("workload_name", WORKLOADS)
@pytest.mark.parametrize("case", cases.throughput_cases(DEVICE_TYPE, MODE.name), ids=lambda c: c.id)
def test_throughput(benchmark, case, workload_name, workload, view, device, workdir):
    reason = workload_skip_reason(case, workload_name) or cases.missing(case, device)
    if reason:
        pytest.skip(reason)
    rounds = MODE.big_rounds if workload_name == "2k-input" else MODE.rounds
    measure(benchmark, case, workload(workload_name), view, device, workdir, rounds)


@pytest.mark.parametrize("case", cases.sweep_cases(DEVICE_TYPE, MODE.name), ids=lambda c: c.id)
def test_sweep(benchmark, case, workload, view, device, workdir):
    reason = cases.missing(case, device)
    if reason:
        pytest.skip(reason)
    rounds = MODE.big_rounds if SWEEP_WORKLOAD == "2k-input" else MODE.rounds
    measure(benchmark, case, workload(SWEEP_WORKLOAD), view, device, workdir, rounds)
