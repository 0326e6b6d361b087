"""A folder of photos of many sizes against one big image, through `srtrt run`'s per-file path.

The varied folder (workloads.varied_folder: 120 crops of the samples/big photos, 64-320 px a
side, every size new) and the 2K-output image (LR 512x384) run through the same loop as `srtrt
run` (varied_run.run_files: decode, sheets of small images or tiles, compute, PNG encode,
rename), in one process per path. The whole folder runs ROUNDS times, as one `srtrt run` each
(its small images share sheets across the folder; parts of it would each end on a part-filled
sheet), with the single image between the rounds and at both ends (best of two each time,
averaged), so on a machine whose load drifts (2 cores shared with other work) both rates come
from the same minutes. The first round pays the sheet's compile (a cold cache, as below).
The report is output MP/s of both and their ratio (issue 24's target: >= 0.75); for `auto` also
the ratio to the single image run by what `auto` picks for it alone (`srtrt run big.png`).

`openvino-bf16-static` compiles a static model for every window shape, as the backend did
before the dynamic-shape model for small shapes seen once; the two openvino cases side by side
are the before/after. Each openvino case starts with an empty OpenVINO blob cache (a new
folder's sizes are not in it). Run it alone, and keep the committed results:

    pytest bench/test_varied.py --benchmark-json=bench/results/varied-$(python bench/machine_info.py --slug).json
"""
from __future__ import annotations

import machine_info as probe
import pytest
import run_mode
import torch
import varied_run
import workloads

from srtrt.hardware import cpu_has_fast_bf16

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)
DEVICE = "cuda" if CUDA else "cpu"  # where `srtrt run` computes on this machine
ROUNDS = 2
# ("auto", "auto"): what `srtrt run` picks here (measured at start-up on a CPU, engine/backends/measured.py)
CPU_PATHS = [("auto", "auto", True), ("openvino", "int8", True), ("openvino", "bf16", True),
             ("openvino", "bf16", False), ("torch", "bf16", True)]
CUDA_PATHS = [("auto", "auto", True), ("torch", "fp16", True)]
PATHS = CUDA_PATHS if CUDA else CPU_PATHS


def path_id(path) -> str:
    backend, precision, dynamic = path
    return f"{backend}-{precision}" + ("" if dynamic else "-static")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, workload):
    root = tmp_path_factory.mktemp("varied")
    info = workloads.varied_folder(root / "in", MODE.name)
    single = workloads.write_png(workload("2k-output"), root)
    return sorted((root / "in").glob("*.png")), single, info


def single_mp_per_s(backend, single, out) -> float:
    return max(varied_run.run_files(backend, [single], out)["mp_per_s"] for _ in range(2))


@pytest.mark.parametrize("path", PATHS, ids=path_id)
def test_varied_folder_against_one_image(benchmark, path, inputs, view, tmp_path):
    from srtrt.engine.backends import create_backend
    from srtrt.engine.batch.files import shape_class
    from srtrt.errors import SrtrtError

    name, precision, dynamic = path
    if DEVICE == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
        pytest.skip("bf16 runs in hardware only with AVX512-BF16 or AMX")
    try:
        files = inputs[0]
        kind = shape_class(files) if name == "auto" else "large"  # what `srtrt run` on this folder asks `auto` for
        backend = create_backend(name, precision=precision, device=DEVICE, view=view, shape_class=kind).backend
    except SrtrtError as e:
        pytest.skip(str(e))
    if backend.name == "openvino":
        backend.config["CACHE_DIR"] = str(tmp_path / "openvino-cache")  # cold: a new folder's sizes
        if not dynamic:
            backend.dynamic_pixels = 0
    files, single, info = inputs
    try:
        varied_run.run_files(backend, [single], tmp_path / "warm-up")  # the big image's shape set up
        singles = [single_mp_per_s(backend, single, tmp_path / "single")]
        parts = []

        def folder_between_singles():
            for _ in range(ROUNDS):
                parts.append(varied_run.run_files(backend, files, tmp_path / "folder"))
                singles.append(single_mp_per_s(backend, single, tmp_path / "single"))

        benchmark.group = "varied folder against one image"
        benchmark.pedantic(folder_between_singles, rounds=1, iterations=1, warmup_rounds=0)
        folder = {"seconds": sum(p["seconds"] for p in parts), "output_mp": sum(p["output_mp"] for p in parts)}
        folder["mp_per_s"] = folder["output_mp"] / folder["seconds"]
        one_image = sum(singles) / len(singles)
        if name == "auto":  # the single image as `srtrt run big.png` runs it: auto for one large image
            with create_backend("auto", device=DEVICE, view=view, shape_class="large").backend as alone:
                varied_run.run_files(alone, [single], tmp_path / "warm-up")
                alone_rate, alone_describe = single_mp_per_s(alone, single, tmp_path / "alone"), alone.describe()
            benchmark.extra_info.update(single_default=alone_describe, single_default_mp_per_s=alone_rate,
                                        ratio_to_single_default=folder["mp_per_s"] / alone_rate)
        benchmark.extra_info.update(
            kind="varied", case=path_id(path), backend=name, precision=precision, describe=backend.describe(),
            machine=probe.describe(), weights=view.bench_weights, **info,
            folder_seconds=folder["seconds"], folder_mp_per_s=folder["mp_per_s"],
            single_mp_per_s=one_image, single_each=singles, folder_parts=parts,
            ratio=folder["mp_per_s"] / one_image,
            static_compilations=getattr(backend, "compilations", None),
            dynamic_runs=getattr(backend, "dynamic_runs", None))
        print(f"\n{path_id(path)}: folder {folder['mp_per_s']:.3f} output MP/s ({folder['seconds']:.1f} s), "
              f"one image {one_image:.3f} (from {min(singles):.3f} to {max(singles):.3f}), "
              f"ratio {folder['mp_per_s'] / one_image:.2f}; {probe.describe()}")
        if name == "auto":
            print(f"the one image alone through auto ({alone_describe}): {alone_rate:.3f}, "
                  f"ratio {folder['mp_per_s'] / alone_rate:.2f}")
    finally:
        backend.close()
