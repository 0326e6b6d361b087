"""The throughput cases: what each one runs, and when a machine can run it.

Three families, all on the same uint8 LR image of a workload:
- bicubic x4 (torch `interpolate` on the main device, PIL on the CPU): the floor;
- eager: the naive PyTorch baseline (the inference view as loaded, BatchNorm unfolded, NCHW
  fp32, the whole image in one call under inference_mode);
- srtrt: a backend behind the tiled runtime (TiledUpscaler), uint8 in, uint8 out, exactly as
  `srtrt run` drives it, with the backend's default tile and batch unless the case sets them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import model_flops
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from workloads import Workload

from srtrt.engine.datapath.runtime import Band, Planes, TiledUpscaler
from srtrt.hardware import cpu_has_fast_bf16


@dataclass(frozen=True)
class Case:
    id: str
    group: str                 # bicubic | baseline | srtrt | tile-sweep | batch-sweep
    backend: str               # torch-interpolate | pil | eager | torch | openvino | onnxruntime | tensorrt
    precision: str = "fp32"
    channels_last: bool = True
    fused_op: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    polyphase: bool = True     # the polyphase tail srtrt runs on the CPU (False: the plain network, for the ratio)
    core: int | None = None    # LR core per tile; None: the backend's default; 0: the whole image
    batch: int | None = None   # tiles per call; None: the backend's default
    big_on_cpu: bool = False   # also run on the 2K-input workload when the device is a CPU
    needs: tuple[str, ...] = ()

    def options(self) -> dict:
        return {k: getattr(self, k) for k in ("channels_last", "fused_op", "compile", "cuda_graphs")}


@dataclass
class Runner:
    run: Callable[[], None]
    info: dict = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def best_precision(device_type: str) -> str:
    if device_type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def throughput_cases(device_type: str, mode: str) -> list[Case]:
    cases = [
        Case("bicubic-torch", "bicubic", "torch-interpolate", big_on_cpu=True),
        Case("bicubic-pil", "bicubic", "pil", big_on_cpu=True),
        Case("eager-fp32-nchw", "baseline", "eager", channels_last=False, big_on_cpu=True),
    ]
    if device_type == "cpu":
        best = best_precision("cpu")
        cases += [
            Case("torch-fp32", "srtrt", "torch", "fp32"),
            Case("torch-bf16", "srtrt", "torch", "bf16", big_on_cpu=True, needs=("fast-bf16",)),
            Case("torch-bf16-plain", "srtrt", "torch", "bf16", polyphase=False, needs=("fast-bf16",)),
            Case(f"torch-{best}-compile", "srtrt", "torch", best, compile=True, needs=("compiler",)),
            Case("openvino-fp32", "srtrt", "openvino", "fp32", needs=("openvino",)),
            Case("openvino-bf16", "srtrt", "openvino", "bf16", big_on_cpu=True, needs=("openvino", "fast-bf16")),
            Case("openvino-int8", "srtrt", "openvino", "int8", needs=("openvino",)),
            Case("openvino-bf16-plain", "srtrt", "openvino", "bf16", polyphase=False, needs=("openvino", "fast-bf16")),
            Case("onnxruntime-fp32", "srtrt", "onnxruntime", "fp32", needs=("onnxruntime",)),
            # what `--backend auto --precision auto` runs: its pick, against the cases above (report.py)
            Case("auto", "srtrt", "auto", "auto"),
        ]
    else:
        cases += [
            Case("torch-fp32", "srtrt", "torch", "fp32"),
            Case("torch-fp16", "srtrt", "torch", "fp16"),
            Case("torch-fp16-fused", "srtrt", "torch", "fp16", fused_op=True, needs=("triton",)),
            Case("torch-bf16-fused", "srtrt", "torch", "bf16", fused_op=True, needs=("triton",)),
            Case("torch-fp16-fused-graphs", "srtrt", "torch", "fp16", fused_op=True, cuda_graphs=True,
                 needs=("triton",)),
            Case("torch-fp16-fused-compile", "srtrt", "torch", "fp16", fused_op=True, compile=True,
                 needs=("triton",)),
            Case("onnxruntime-fp32", "srtrt", "onnxruntime", "fp32", needs=("onnxruntime-cuda",)),
            Case("tensorrt-fp16", "srtrt", "tensorrt", "fp16", needs=("tensorrt",)),
            Case("tensorrt-fp32", "srtrt", "tensorrt", "fp32", needs=("tensorrt",)),
        ]
    return cases


def sweep_cases(device_type: str, mode: str) -> list[Case]:
    """Tile and batch sweeps of the best torch path. On a CPU they run on the 2K-output image,
    where the tile overhead shows; on a GPU on the 2K-input image, which needs many tiles."""
    best = best_precision(device_type)
    fused = device_type == "cuda"
    needs = ("triton",) if fused else ()
    if device_type == "cuda":
        cores, core_for_batches, batches = [256, 512, 1024], 512, [1, 8]
    elif mode == "full":
        cores, core_for_batches, batches = [96, 384, 0], 128, [1, 2, 4]
    else:
        cores, core_for_batches, batches = [0], 128, [2]
    cases = [Case(f"torch-{best}-tile{core or 'whole'}", "tile-sweep", "torch", best, fused_op=fused, core=core,
                  needs=needs) for core in cores]
    cases += [Case(f"torch-{best}-tile{core_for_batches}-batch{b}", "batch-sweep", "torch", best, fused_op=fused,
                   core=core_for_batches, batch=b, needs=needs) for b in batches]
    if device_type == "cpu":
        cases += openvino_sweep_cases(mode)
    return cases


def openvino_sweep_cases(mode: str) -> list[Case]:
    """The sweep behind the openvino backend's tile defaults (engine/backends/openvino_backend.py)."""
    best = best_precision("cpu")
    needs = ("openvino",) + (("fast-bf16",) if best == "bf16" else ())
    cores, batches = ([96, 192, 384, 0], [1, 2, 4]) if mode == "full" else ([0], [2])
    cases = [Case(f"openvino-{best}-tile{core or 'whole'}", "tile-sweep", "openvino", best, core=core, needs=needs)
             for core in cores]
    cases += [Case(f"openvino-{best}-tile128-batch{b}", "batch-sweep", "openvino", best, core=128, batch=b,
                   needs=needs) for b in batches]
    return cases


# ----------------------------------------------------------------------------- availability

def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(case: Case, device: torch.device) -> str | None:
    """Why this machine cannot run the case, or None."""
    for need in case.needs:
        if need == "fast-bf16" and not cpu_has_fast_bf16():
            return "this CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated"
        if need == "compiler" and not _has_c_compiler():
            return "torch.compile on the CPU needs a C++ compiler"
        if need == "triton" and not _has("triton"):
            return "triton is not installed"
        if need == "openvino" and not _has("openvino"):
            return "openvino is not installed"
        if need == "onnxruntime" and not _has("onnxruntime"):
            return "onnxruntime is not installed"
        if need == "onnxruntime-cuda" and not _ort_has_cuda():
            return "onnxruntime here has no CUDA execution provider"
        if need == "tensorrt":
            from srtrt.engine.backends.tensorrt_backend import available

            ok, why = available()
            if not ok:
                return why
    return None


def _has_c_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _ort_has_cuda() -> bool:
    if not _has("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def eager_peak_bytes(config, height: int, width: int, element_bytes: int = 4) -> int:
    """The eager pass's largest moment: the last upsample's conv output, its shuffle and its
    PReLU output alive together, each C * scale^2 * H * W elements."""
    return 3 * config.channels * config.scale ** 2 * height * width * element_bytes


# ---------------------------------------------------------------------------------- runners

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _float_input(workload: Workload, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(workload.lr).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return x.contiguous().to(device)


def _bicubic_torch(workload: Workload, device: torch.device, scale: int) -> Runner:
    x = _float_input(workload, device)

    def run():
        F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
        _sync(device)

    return Runner(run, {"device": device.type})


def _bicubic_pil(workload: Workload, scale: int) -> Runner:
    img = Image.fromarray(workload.lr)
    size = (workload.width * scale, workload.height * scale)
    return Runner(lambda: img.resize(size, Image.Resampling.BICUBIC), {"device": "cpu"})


def _eager(view, workload: Workload, device: torch.device) -> Runner:
    model = view.to(device).eval()
    x = _float_input(workload, device)

    def run():
        with torch.inference_mode():
            model(x)
        _sync(device)

    config = view.generator.config
    flop = model_flops.image_flop(config, workload.height, workload.width)
    return Runner(run, {"device": device.type, "model_gflop": flop / 1e9, "windows": 1},
                  close=lambda: view.to("cpu"))


def make_backend(case: Case, view, device: torch.device, workdir: Path):
    if case.backend == "auto":
        from srtrt.engine.backends import create_backend

        with srtrt_cache(auto_cache(workdir)):  # measured in this session, not read from an older one
            selection = create_backend("auto", view=view, device=str(device))
        selection.backend.auto_reason = selection.reason  # what it measured, for the report
        return selection.backend
    if case.backend == "torch":
        if case.cuda_graphs:
            from cuda_graphs import GraphedTorchBackend as cls
        else:
            from srtrt.engine.backends.torch_backend import TorchBackend as cls
        # On a GPU the backend's own default (no polyphase tail: the fused op does the shuffles there).
        polyphase = None if case.polyphase else False
        return cls(view, device, case.precision, channels_last=case.channels_last, compile=case.compile,
                   fused_op=case.fused_op, polyphase=polyphase)
    if case.backend == "openvino":
        from srtrt.engine.backends.openvino_backend import OpenVinoBackend

        graph = "int8" if case.precision == "int8" else "fp32"  # bf16 is a compile hint on the fp32 graph
        return OpenVinoBackend(_onnx_file(view, graph, workdir, fused=False, polyphase=case.polyphase),
                               view.scale, view.radius,
                               precision=case.precision, channels=view.generator.config.channels)
    if case.backend == "onnxruntime":
        from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(_onnx_file(view, case.precision, workdir, fused=False), view.scale, view.radius,
                                  device=str(device))
    if case.backend == "tensorrt":
        return _tensorrt_backend(case, view, device, workdir)
    raise ValueError(f"unknown backend {case.backend}")


def auto_cache(workdir: Path) -> Path:
    """The srtrt cache the `auto` throughput case measures into: this session's, never an older one."""
    return workdir / "auto-cache"


@contextlib.contextmanager
def srtrt_cache(folder: Path):
    """SRTRT_CACHE pointed at `folder` for the duration."""
    before = os.environ.get("SRTRT_CACHE")
    os.environ["SRTRT_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("SRTRT_CACHE", None)
        else:
            os.environ["SRTRT_CACHE"] = before


def _onnx_file(view, precision: str, workdir: Path, fused: bool, polyphase: bool = False) -> Path:
    """Exported once per session and form (the export takes a while on a CPU); the OpenVINO
    cases run the polyphase graph, as srtrt's openvino backend does."""
    from srtrt.engine.toolchain.export import export_onnx

    path = workdir / f"model-{precision}{'-fused' if fused else ''}{'-polyphase' if polyphase else ''}.onnx"
    if not path.exists():
        export_onnx(view, path, precision=precision, fused=fused, polyphase=polyphase)
    return path


def _tensorrt_backend(case: Case, view, device: torch.device, workdir: Path):
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend
    from srtrt.engine.toolchain import trt_build

    core = case.core or 512
    plan, _ = trt_build.build(onnx_path=str(_onnx_file(view, case.precision, workdir, fused=True)),
                              precision=case.precision, tile=core, max_batch=case.batch or 4, progress=False)
    return TensorRTBackend(plan, device, cuda_graphs=case.cuda_graphs)


def _srtrt(case: Case, view, workload: Workload, device: torch.device, workdir: Path) -> Runner:
    backend = make_backend(case, view, device, workdir)
    upscaler = TiledUpscaler(backend, core=case.core, batch=case.batch)
    s = view.scale
    out = np.empty((workload.height * s, workload.width * s, 3), np.uint8)
    planes = Planes(workload.lr)

    def keep(band: Band):
        out[band.y0:band.y0 + band.colour.shape[0]] = band.colour

    plan = upscaler.plan(workload.height, workload.width)  # what run() computes, not a bare tiling of the image
    flop, windows = model_flops.tiled_flop(view.generator.config, plan)
    info = {"device": device.type, "model_gflop": flop / 1e9, "windows": windows,
            "core": 0 if windows == 1 else plan.core,
            "margin": upscaler.margin, "batch": upscaler.batch, "describe": backend.describe(),
            "picked": f"{backend.name}-{backend.precision}"}
    if hasattr(backend, "auto_reason"):
        info["auto_reason"] = backend.auto_reason
    return Runner(lambda: upscaler.run(planes, keep, np.uint8), info, close=backend.close)


def build_runner(case: Case, view, workload: Workload, device: torch.device, workdir: Path) -> Runner:
    if case.backend == "torch-interpolate":
        return _bicubic_torch(workload, device, view.scale)
    if case.backend == "pil":
        return _bicubic_pil(workload, view.scale)
    if case.backend == "eager":
        return _eager(view, workload, device)
    return _srtrt(case, view, workload, device, workdir)


def peak_key(case: Case, device: torch.device) -> str | None:
    """Which measured matmul peak this case's arithmetic compares to."""
    if case.group == "bicubic":
        return None
    if case.precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"  # cuDNN runs fp32 convolutions on TF32 tensor cores unless told not to
    return case.precision
