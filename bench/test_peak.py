"""The device's measured matrix-math peak: square matmuls per dtype, in TFLOP/s (int8: TOP/s).

The report divides each model case's FLOPs per second by the peak of the dtype it computes in
("percent of peak"). A measured peak, not a datasheet one: it is what this machine's BLAS
(oneDNN/MKL on a CPU, cuBLAS on a GPU) reaches on large, well-shaped matrices.
"""
from __future__ import annotations

import contextlib

import pytest
import run_mode
import torch

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
if CUDA:
    PEAKS = ["fp16", "bf16", "tf32", "fp32"]
    SIZE, PER_ROUND = (1024, 2) if MODE.name == "smoke" else (8192, 20)
else:
    from srtrt.hardware import cpu_has_fast_bf16

    # fp16 matmul on a CPU is emulated, and so is bf16 without AVX512-BF16/AMX (a 4096² bf16 matmul
    # ran for minutes on an AVX2 Zen 3): no case computes in them there
    PEAKS = ["bf16", "fp32"] if cpu_has_fast_bf16() else ["fp32"]
    # int8 x int8 -> int32 (torch._int_mm: oneDNN's u8/s8 GEMM, VNNI or AMX where the CPU has them):
    # the ceiling of OpenVINO's int8 convolutions, measured on every CPU as int8 is timed on every CPU
    PEAKS.insert(0, "int8")
    SIZE, PER_ROUND = {"smoke": (256, 1), "quick": (2048, 2), "full": (4096, 2)}[MODE.name]


@contextlib.contextmanager
def matmul_precision(name: str):
    """tf32 lets cuBLAS round fp32 inputs to TF32 on tensor cores; fp32 forbids it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _operands(name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "int8":
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.randint(-128, 128, (SIZE, SIZE), dtype=torch.int8, generator=generator).to(device)
                     for _ in range(2))
    return tuple(torch.randn(SIZE, SIZE, device=device).to(DTYPES[name]) for _ in range(2))


@pytest.mark.parametrize("name", PEAKS)
def test_matmul_peak(benchmark, name, device):
    a, b = _operands(name, device)
    mm = torch._int_mm if name == "int8" else torch.mm
    try:
        mm(a[:64, :64], b[:64, :64])
    except RuntimeError as e:  # a torch build without an int8 GEMM on this device
        pytest.skip(f"{name} matmul does not run here: {(str(e).splitlines() or [''])[0]}")

    def run():
        for _ in range(PER_ROUND):
            mm(a, b)
        if CUDA:
            torch.cuda.synchronize()

    flop = 2 * SIZE ** 3 * PER_ROUND
    benchmark.group = "matmul peak"
    benchmark.extra_info.update(kind="peak", dtype=name, n=SIZE, matmuls_per_round=PER_ROUND,
                                flop_per_round=flop, device=device.type)
    with matmul_precision(name):
        benchmark.pedantic(run, rounds=max(3, MODE.rounds), iterations=1, warmup_rounds=1)
    benchmark.extra_info["tflops_best"] = round(flop / benchmark.stats.stats.min / 1e12, 3)
