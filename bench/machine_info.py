"""What machine a benchmark ran on: the device (GPU or CPU) and the library versions.

Used by bench/conftest.py (pytest-benchmark's machine info), by the quality guard (its
`measured_on` string) and by bench/gpu.sh (`python bench/machine_info.py --slug` names the
result file). Importing it never imports TensorRT or ONNX Runtime; their versions come from
package metadata.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys

import torch

from srtrt import hardware

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
# A package can be published under several distribution names (tensorrt-cu12, ...).
DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
    "triton": ("triton",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"),
}


def package_version(name: str) -> str:
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent" if importlib.util.find_spec(name) is None else "unknown"


def versions() -> dict:
    return {name: package_version(name) for name in DISTRIBUTIONS} | {"python": sys.version.split()[0]}


def cpu_info() -> dict:
    flags = hardware.cpu_flags()
    return {
        "kind": "cpu",
        "name": hardware.cpu_model(),
        "generation": hardware.cpu_generation(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "cores": hardware.usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gpu_info(index: int = 0) -> dict:
    props = torch.cuda.get_device_properties(index)
    return {
        "kind": "cuda",
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
    }


def main_device() -> str:
    """The device the benchmarks measure: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_info() -> dict:
    return gpu_info() if main_device() == "cuda" else cpu_info()


def describe(info: dict | None = None) -> str:
    """One line, e.g. 'NVIDIA H200 (sm 9.0, driver 570.1)' or 'AMD EPYC (2 cores; avx512f, avx512_bf16)'."""
    info = info or device_info()
    if info["kind"] == "cuda":
        return f"{info['name']} (sm {info['compute_capability']}, driver {info['driver']})"
    flags = ", ".join(info["flags"]) or "no AVX-512"
    generation = f"{info['generation']}, " if info.get("generation") else ""
    return f"{info['name']} ({generation}{info['cores']} cores; {flags})"


def slug(info: dict | None = None) -> str:
    """A file-name-safe device name: 'cuda-nvidia-h200', 'cpu-amd-epyc-f25m17-2c' (the CPU's family and
    model tell generations apart that share a model name)."""
    info = info or device_info()
    name = re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")
    if info["kind"] != "cuda" and info.get("generation"):
        name += "-f{}m{}".format(*re.findall(r"\d+", info["generation"])[:2])
    return f"cuda-{name}" if info["kind"] == "cuda" else f"cpu-{name}-{info['cores']}c"


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="This machine's device and library versions, as JSON.")
    parser.add_argument("--slug", action="store_true", help="print only the name result files take (bench/gpu.sh)")
    if parser.parse_args().slug:
        print(slug())
    else:
        print(json.dumps({"device": device_info(), "versions": versions()}, indent=2))
