"""`--precision auto` follows the quality guard's measurements, never a guess."""
from __future__ import annotations

import torch

from srtrt.engine.backends.precision import QUALITY_GUARD_DB, auto_precision, passes_guard

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_measured_path_within_guard_is_chosen():
    guard = {"torch-cpu-bf16": {"delta_db": -0.01}}
    precision, why = auto_precision("torch", CPU, guard, fast_bf16_cpu=True)
    assert precision == "bf16" and "-0.010 dB" in why


def test_measured_path_outside_guard_falls_back_to_fp32():
    guard = {"torch-cpu-bf16": {"delta_db": -(QUALITY_GUARD_DB + 0.02)}}
    precision, why = auto_precision("torch", CPU, guard, fast_bf16_cpu=True)
    assert precision == "fp32" and "outside" in why


def test_cpu_without_fast_bf16_stays_fp32():
    guard = {"torch-cpu-bf16": {"delta_db": 0.0}}
    assert auto_precision("torch", CPU, guard, fast_bf16_cpu=False)[0] == "fp32"


def test_unmeasured_path_uses_the_worst_measurement_of_its_format():
    guard = {"onnxruntime-cpu-fp16": {"delta_db": -0.001}, "torch-cpu-bf16": {"delta_db": -0.2}}
    assert auto_precision("torch", CUDA, guard) == ("fp16", auto_precision("torch", CUDA, guard)[1])
    ok, why = passes_guard("torch", "cuda", "fp16", guard)
    assert ok and "onnxruntime-cpu-fp16" in why
    ok, _ = passes_guard("torch", "cuda", "bf16", guard)
    assert not ok  # bf16 measured outside the guard elsewhere: not used on the GPU either


def test_no_measurement_means_fp32():
    assert auto_precision("torch", CUDA, {})[0] == "fp32"
    assert auto_precision("onnxruntime", CPU, {})[0] == "fp32"
