"""pytest-benchmark setup for bench/: run modes, machine info, the model and the workloads.

`pytest bench/` measures; the unit suite (`pytest`, testpaths = tests) never collects this
folder. Results go to bench/results/<device>.json (full) or <device>-quick.json unless
--benchmark-json names another file; a run of a selection (some files, -k, -m) goes to
bench/results/partial/ (ignored by git) instead, so it never replaces a whole run's report; smoke runs write
nothing unless asked.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the helper modules beside this file

import machine_info as probe  # noqa: E402
import run_mode  # noqa: E402
import workloads  # noqa: E402

RESULTS = BENCH / "results"
ALLOCATOR = pytest.StashKey[str]()


def pytest_addoption(parser):
    group = parser.getgroup("srtrt benchmarks")
    group.addoption("--quick", action="store_true",
                    help=f"a few minutes on a 2-core CPU: fewer rounds and cases (or {run_mode.QUICK_ENV}=1)")
    group.addoption("--smoke", action="store_true",
                    help=f"tiny inputs, one round: checks the code paths only (or {run_mode.SMOKE_ENV}=1)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # the process runs under the allocator policy `srtrt` itself sets (every case alike, baselines too)
    from srtrt.engine.batch.allocator import keep_freed_buffers

    config.stash[ALLOCATOR] = "srtrt policy (engine/batch/allocator.py)" if keep_freed_buffers() else "default"
    # Modules read the mode while they are collected, so it travels in the environment.
    if config.getoption("--quick", False):
        os.environ[run_mode.QUICK_ENV] = "1"
    if config.getoption("--smoke", False):
        os.environ[run_mode.SMOKE_ENV] = "1"
    mode = current_mode()
    option = config.option
    saving = mode.name != "smoke" and not getattr(option, "benchmark_disable", False)
    if getattr(option, "benchmark_json", None) is None and saving:
        suffix = "" if mode.full else f"-{mode.name}"
        folder = RESULTS / "partial" if _selection(config) else RESULTS
        folder.mkdir(parents=True, exist_ok=True)
        option.benchmark_json = folder / f"{probe.slug()}{suffix}.json"


def _selection(config) -> bool:
    """Whether this run measures part of bench/ only: named files or tests, -k or -m."""
    option = config.option
    if getattr(option, "keyword", "") or getattr(option, "markexpr", ""):
        return True
    return any(Path(arg.split("::")[0]).resolve() != BENCH for arg in config.args)


def current_mode() -> run_mode.Mode:
    return run_mode.current(torch.cuda.is_available())


def weights_label() -> str:
    from srtrt.checkpoint import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        return "embedded default model"
    return "random weights, default config (the embedded model is absent; speed does not depend on weights)"


def pytest_benchmark_update_machine_info(config, machine_info):
    device = probe.device_info()
    machine_info["srtrt"] = {
        "device": device,
        "describe": probe.describe(device),
        "slug": probe.slug(device),
        "versions": probe.versions(),
        "mode": current_mode().name,
        "weights": weights_label(),
        "allocator": config.stash.get(ALLOCATOR, "default"),
    }
    if device["kind"] == "cuda":  # fp32 convolutions run on TF32 tensor cores when this is on
        machine_info["srtrt"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def mode() -> run_mode.Mode:
    return current_mode()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(probe.main_device())


@pytest.fixture(scope="session")
def view():
    """The default-config SRResNet x4: the embedded model when present, else random weights."""
    import srtrt
    from srtrt.errors import SrtrtError
    from srtrt.nets import InferenceView, SRResNet, SRResNetConfig

    try:
        model = srtrt.load_model()
    except SrtrtError:
        torch.manual_seed(0)
        model = InferenceView(SRResNet(SRResNetConfig())).eval()
    model.bench_weights = weights_label()
    return model


@pytest.fixture(scope="session")
def workload(mode):
    """workload(name) -> the Workload for this mode; built once per session."""
    made = {}

    def get(name: str) -> workloads.Workload:
        if name not in made:
            made[name] = workloads.make(name, mode.name)
        return made[name]

    return get


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Exported ONNX files and other per-session artefacts."""
    return tmp_path_factory.mktemp("srtrt-bench")
