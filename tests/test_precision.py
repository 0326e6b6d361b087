"""`--precision auto` and `--backend auto` on the CPU follow this model's quality-guard measurements, never a guess."""
from __future__ import annotations

import torch

import srtrt
from srtrt.engine.backends import CPU_ORDER, cpu_choice
from srtrt.engine.backends.precision import (
    GUARD_FORMAT,
    GUARD_VERSION,
    QUALITY_GUARD_DB,
    UNMEASURED,
    _guard_file,
    auto_precision,
    measured_paths,
    passes_guard,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHA, OTHER_SHA = "a" * 64, "b" * 64
NO_OPENVINO = (False, "openvino is not installed (pip install openvino)")


def guard(paths: dict, sha: str = SHA) -> dict:
    """A guard document holding `paths` ({"torch-cpu-bf16": {"delta_db": ...}, ...}) for one model."""
    return {"format": GUARD_FORMAT, "version": GUARD_VERSION, "models": {sha: {"model": "test", "paths": paths}}}


def test_an_unmeasured_model_says_so_on_a_cpu_without_bf16_units_too():
    """The guard's missing measurement is the reason on any CPU (it was hidden behind the bf16 one)."""
    for fast in (True, False):
        assert auto_precision("torch", CPU, OTHER_SHA, guard({}), fast_bf16_cpu=fast) == ("fp32", f"fp32 ({UNMEASURED})")


def test_measured_path_within_guard_is_chosen():
    g = guard({"torch-cpu-bf16": {"delta_db": -0.01}})
    precision, why = auto_precision("torch", CPU, SHA, g, fast_bf16_cpu=True)
    assert precision == "bf16" and "-0.010 dB" in why


def test_measured_path_outside_guard_falls_back_to_fp32():
    g = guard({"torch-cpu-bf16": {"delta_db": -(QUALITY_GUARD_DB + 0.02)}})
    precision, why = auto_precision("torch", CPU, SHA, g, fast_bf16_cpu=True)
    assert precision == "fp32" and "outside" in why


def test_cpu_without_fast_bf16_stays_fp32():
    g = guard({"torch-cpu-bf16": {"delta_db": 0.0}})
    precision, why = auto_precision("torch", CPU, SHA, g, fast_bf16_cpu=False)
    assert precision == "fp32" and "neither AVX512-BF16 nor AMX" in why


def test_unmeasured_path_uses_the_worst_measurement_of_its_format():
    g = guard({"onnxruntime-cpu-fp16": {"delta_db": -0.001}, "torch-cpu-bf16": {"delta_db": -0.2}})
    precision, why = auto_precision("torch", CUDA, SHA, g)
    assert precision == "fp16"
    assert why == "fp16 changes Set5 Y-PSNR by -0.001 dB (measured as onnxruntime-cpu-fp16), within the ±0.05 dB guard"
    ok, why = passes_guard("torch", "cuda", "fp16", SHA, g)
    assert ok and "onnxruntime-cpu-fp16" in why
    ok, _ = passes_guard("torch", "cuda", "bf16", SHA, g)
    assert not ok  # bf16 measured outside the guard elsewhere: not used on the GPU either


def test_tensorrt_on_the_gpu_is_never_offered_bf16_which_its_plans_are_not_built_at():
    """fp16 outside the guard and bf16 within it: torch took bf16, and so did TensorRT, whose
    engine cache builds fp16 and fp32 only; `srtrt run --backend tensorrt` then failed."""
    g = guard({"torch-cuda-fp16": {"delta_db": -0.3}, "torch-cuda-bf16": {"delta_db": -0.01}})
    assert auto_precision("torch", CUDA, SHA, g)[0] == "bf16"
    precision, why = auto_precision("tensorrt", CUDA, SHA, g)
    assert precision == "fp32" and "fp16 changes Set5 Y-PSNR by -0.300 dB" in why and "bf16" not in why


def test_exact_refuses_a_proxy():
    g = guard({"torch-cpu-bf16": {"delta_db": -0.001}})
    ok, why = passes_guard("openvino", "cpu", "bf16", SHA, g, exact=True)
    assert not ok and why == "openvino-cpu-bf16 has no quality-guard measurement for this model"


def test_no_measurement_means_fp32():
    assert auto_precision("torch", CUDA, SHA, {})[0] == "fp32"
    assert auto_precision("onnxruntime", CPU, SHA, {})[0] == "fp32"


def test_another_models_measurement_is_never_used():
    g = guard({"torch-cpu-bf16": {"delta_db": -0.001}, "torch-cuda-fp16": {"delta_db": 0.0}}, sha=OTHER_SHA)
    assert measured_paths(SHA, g) == {}
    for device in (CPU, CUDA):
        assert auto_precision("torch", device, SHA, g, fast_bf16_cpu=True) == ("fp32", f"fp32 ({UNMEASURED})")
    ok, why = passes_guard("torch", "cpu", "bf16", SHA, g)
    assert not ok and why == UNMEASURED


def test_the_shipped_guard_file_is_read_and_keyed_by_sha256():
    doc = _guard_file()
    assert doc["format"] == GUARD_FORMAT and doc["version"] == GUARD_VERSION
    for sha, model in doc["models"].items():
        assert len(sha) == 64 and model["paths"]["torch-cpu-fp32"]["delta_db"] == 0.0


# ------------------------------------------------------------------ --backend auto without CUDA

MEASURED = {"torch-cpu-fp32": {"delta_db": 0.0}, "torch-cpu-bf16": {"delta_db": -0.006},
            "openvino-cpu-fp32": {"delta_db": 0.0}, "openvino-cpu-bf16": {"delta_db": -0.004}}


def test_order_is_fastest_first_and_ends_with_the_reference():
    assert CPU_ORDER[:2] == [("openvino", "int8"), ("openvino", "bf16")] and CPU_ORDER[-1] == ("torch", "fp32")


def test_auto_picks_openvino_int8_where_it_is_calibrated_and_passes():
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04}}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True)
    assert (name, precision) == ("openvino", "int8")
    assert why == ("the first allowed in CPU_ORDER (not timed); allowed by the quality guard: "
                   "int8 changes Set5 Y-PSNR by -0.040 dB, within the ±0.05 dB guard")


def test_auto_skips_int8_without_calibration_and_says_why():
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04}}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True, calibrated=False)
    assert (name, precision) == ("openvino", "bf16") and "int8 not used (the model has no int8 calibration)" in why


def test_int8_is_timed_on_a_cpu_without_bf16_units():
    """No CPU flag rules int8 out: on an AVX2-only CPU it ran 2.6x faster than openvino fp32, which
    only timing it shows."""
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04}}
    avx2_like = {("openvino", "int8"): 1.6, ("openvino", "fp32"): 2.6, ("torch", "fp32"): 3.0}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=False, timer=timer_of(avx2_like, asked := []))
    assert asked == [[("openvino", "int8"), ("openvino", "fp32"), ("torch", "fp32")]]
    assert (name, precision) == ("openvino", "int8") and "int8 not used" not in why


def test_an_int8_measurement_of_other_ranges_does_not_count():
    """The guard's int8 entry names the calibration it measured: a model recalibrated since is not judged by it."""
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04, "calibration": "0123abcd"}}
    name, precision, _ = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True, calibration="0123abcd")
    assert (name, precision) == ("openvino", "int8")
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True, calibration="feedbeef")
    assert (name, precision) == ("openvino", "bf16")
    assert "openvino int8 not used (openvino-cpu-int8 was measured with other int8 ranges than this model's (feedbeef)" in why


def test_the_shipped_models_int8_guard_entries_name_their_calibration():
    from srtrt import checkpoint
    from srtrt.engine.backends.precision import measured_paths
    from srtrt.engine.toolchain.quantize import calibration_digest

    for name in checkpoint.embedded_models():
        view = srtrt.load_model(name)
        if view.int8_calibration:
            entry = measured_paths(view.checkpoint_sha256)["openvino-cpu-int8"]
            assert entry["calibration"] == calibration_digest(view.int8_calibration), name


def test_int8_outside_the_guard_falls_back_to_bf16():
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.2}}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True)
    assert (name, precision) == ("openvino", "bf16") and "openvino int8 not used (int8 changes" in why


def test_auto_picks_openvino_bf16_where_it_passes():
    name, precision, why = cpu_choice(SHA, guard=guard(MEASURED), fast_bf16_cpu=True)
    assert (name, precision) == ("openvino", "bf16")
    assert why == ("the first allowed in CPU_ORDER (not timed); allowed by the quality guard: "
                   "bf16 changes Set5 Y-PSNR by -0.004 dB, within the ±0.05 dB guard; "
                   "openvino int8 not used (openvino-cpu-int8 has no quality-guard measurement for this model)")


def test_auto_falls_back_to_torch_bf16_when_openvino_bf16_fails_the_guard():
    paths = {**MEASURED, "openvino-cpu-bf16": {"delta_db": -0.09}}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True)
    assert (name, precision) == ("torch", "bf16")
    assert "openvino bf16 not used (bf16 changes Set5 Y-PSNR by -0.090 dB, outside" in why


def test_auto_without_bf16_hardware_uses_openvino_fp32_and_says_why():
    name, precision, why = cpu_choice(SHA, guard=guard(MEASURED), fast_bf16_cpu=False)
    assert (name, precision) == ("openvino", "fp32")
    assert "bf16 not used (this CPU has neither AVX512-BF16 nor AMX" in why


def test_auto_without_openvino_falls_back_to_torch_and_says_why():
    name, precision, why = cpu_choice(SHA, openvino=NO_OPENVINO, guard=guard(MEASURED), fast_bf16_cpu=True)
    assert (name, precision) == ("torch", "bf16")
    assert why.endswith("; openvino is not installed (pip install openvino)")


def test_auto_needs_a_measurement_of_openvino_itself():
    """A reduced precision on OpenVINO is judged by OpenVINO's own measurement, not torch's."""
    paths = {k: v for k, v in MEASURED.items() if k.startswith("torch")}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True)
    assert (name, precision) == ("torch", "bf16")
    assert "openvino bf16 not used (openvino-cpu-bf16 has no quality-guard measurement for this model)" in why
    assert "openvino int8 not used (openvino-cpu-int8 has no quality-guard measurement for this model)" in why


def test_fp32_on_openvino_needs_no_guard_measurement():
    """OpenVINO told f32 computes what the reference computes: it competes as `--precision fp32` has it do."""
    paths = {k: v for k, v in MEASURED.items() if k.startswith("torch")}
    name, precision, _ = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=False, timer=timer_of(AMX_LIKE, asked := []))
    assert (name, precision) == ("openvino", "fp32") and asked == [[("openvino", "fp32"), ("torch", "fp32")]]


def test_auto_for_an_unmeasured_model_times_the_fp32_paths_with_the_reason():
    """A checkpoint the guard has not measured runs fp32, on the faster backend (it went straight to torch,
    2x slower than OpenVINO's fp32 here); the reason line says why nothing else was tried."""
    name, precision, why = cpu_choice(SHA, guard=guard(MEASURED, sha=OTHER_SHA), fast_bf16_cpu=True,
                                      timer=timer_of(AMX_LIKE, asked := []))
    assert (name, precision) == ("openvino", "fp32") and asked == [[("openvino", "fp32"), ("torch", "fp32")]]
    assert why == f"fastest here, timed 2; fp32, as the reference computes; {UNMEASURED}"
    assert UNMEASURED == ("no quality-guard measurement for this model; bench/quality_guard.py --model PATH, in "
                          "srtrt's source tree, measures one")
    assert cpu_choice(SHA, openvino=NO_OPENVINO, guard=guard(MEASURED, sha=OTHER_SHA), fast_bf16_cpu=True)[:2] == \
        ("torch", "fp32")


def test_auto_with_a_precision_asked_takes_the_fastest_backend_for_it():
    assert cpu_choice(SHA, "fp32", guard={})[:2] == ("openvino", "fp32")
    assert cpu_choice(SHA, "bf16", NO_OPENVINO, guard={})[:2] == ("torch", "bf16")


def test_fp16_asked_on_the_cpu_runs_on_onnxruntime():
    """`--precision fp16` alone was refused in the torch backend's words, though onnxruntime runs it."""
    import pytest

    pytest.importorskip("onnxruntime")
    name, precision, why = cpu_choice(SHA, "fp16", guard={})
    assert (name, precision) == ("onnxruntime", "fp16") and why.startswith("as asked")


# ------------------------------------------------------------------ the measured pick (measured.py)

def timer_of(seconds: dict, asked: list | None = None):
    """A timer that reports fixed figures per path (what measured.cached_seconds would measure),
    recording which paths it was asked to time."""
    def timer(paths):
        if asked is not None:
            asked.append(list(paths))
        chosen = min(paths, key=lambda p: seconds[p])
        return chosen, f"timed {len(paths)}"
    return timer


AMX_LIKE = {("openvino", "int8"): 0.74, ("openvino", "bf16"): 0.52, ("torch", "bf16"): 0.95,
            ("openvino", "fp32"): 2.7, ("torch", "fp32"): 8.9}   # int8 behind bf16 (the Xeon of issue 24)
VNNI_LIKE = {("openvino", "int8"): 0.74, ("openvino", "bf16"): 1.20, ("torch", "bf16"): 2.04,
             ("openvino", "fp32"): 2.69, ("torch", "fp32"): 5.64}  # int8 ahead (a Zen 4 EPYC)


def test_the_timer_decides_among_every_path_the_guard_allows():
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04}}
    for figures, expected in ((AMX_LIKE, ("openvino", "bf16")), (VNNI_LIKE, ("openvino", "int8"))):
        asked = []
        name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True,
                                      timer=timer_of(figures, asked))
        assert (name, precision) == expected
        assert asked == [CPU_ORDER]  # all five: each allowed by the guard (torch fp32 is the reference)
        assert why.startswith(f"fastest here, timed 5; allowed by the quality guard: {precision} changes Set5")


def test_the_timer_never_sees_a_path_the_guard_refuses_or_the_cpu_lacks():
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.2}, "torch-cpu-bf16": {"delta_db": -0.09}}
    asked = []
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True,
                                  timer=timer_of({**AMX_LIKE, ("torch", "bf16"): 0.01}, asked))
    assert asked == [[("openvino", "bf16"), ("openvino", "fp32"), ("torch", "fp32")]]
    assert (name, precision) == ("openvino", "bf16")
    assert "openvino int8 not used" in why and "torch bf16 not used" in why
    asked.clear()  # a CPU without bf16 units, int8 outside the guard: the fp32 paths only
    cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=False, timer=timer_of(AMX_LIKE, asked))
    assert asked == [[("openvino", "fp32"), ("torch", "fp32")]]


def test_one_allowed_path_is_not_timed():
    name, precision, why = cpu_choice(SHA, openvino=NO_OPENVINO, guard=guard(MEASURED), fast_bf16_cpu=False,
                                  timer=timer_of({}, asked := []))
    assert (name, precision) == ("torch", "fp32") and asked == [] and why.startswith("fp32, the reference")


def test_a_precision_asked_is_kept_and_its_backends_are_timed():
    asked = []
    name, precision, why = cpu_choice(SHA, "bf16", guard={}, timer=timer_of({**AMX_LIKE, ("torch", "bf16"): 0.1}, asked))
    assert (name, precision) == ("torch", "bf16") and asked == [[("openvino", "bf16"), ("torch", "bf16")]]
    assert "as asked" in why
    assert cpu_choice(SHA, "int8", guard={}, timer=timer_of({}, asked := []))[:2] == ("openvino", "int8") and asked == []


def test_backend_openvino_with_precision_auto_times_openvino_precisions_only():
    """`--backend openvino --precision auto` took bf16 without a look at int8, which the guard allowed
    and which ran faster: its precisions are timed as `auto` times every path."""
    paths = {**MEASURED, "openvino-cpu-int8": {"delta_db": -0.04}}
    amx_like = {("openvino", "int8"): 0.9, ("openvino", "bf16"): 1.3, ("openvino", "fp32"): 4.0}
    name, precision, why = cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True, only="openvino",
                                      timer=timer_of(amx_like, asked := []))
    assert asked == [[("openvino", "int8"), ("openvino", "bf16"), ("openvino", "fp32")]]
    assert (name, precision) == ("openvino", "int8") and why.startswith("fastest here")
    slow_int8 = {**amx_like, ("openvino", "int8"): 2.0}
    assert cpu_choice(SHA, guard=guard(paths), fast_bf16_cpu=True, only="openvino",
                      timer=timer_of(slow_int8, []))[:2] == ("openvino", "bf16")
    # a model the guard has not measured: the backend asked for, in fp32
    assert cpu_choice(SHA, guard={}, fast_bf16_cpu=True, only="openvino")[:2] == ("openvino", "fp32")
