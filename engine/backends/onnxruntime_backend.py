"""ONNX Runtime backend: runs an exported graph (fp32 or fp16 I/O) on the CPU EP, or CUDA/TensorRT EPs when installed."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from srtrt.engine.backends.base import (
    Backend,
    OnnxGraphs,
    PerShapeGraphs,
    activation_bytes_per_pixel,
    defaults_for_budget,
)
from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET
from srtrt.errors import SrtrtError

KEEP_SESSIONS = 4  # per-shape graphs held loaded at once (a window-attention model's static graphs)


def available() -> tuple[bool, str]:
    try:
        onnxruntime = import_onnxruntime()
    except ImportError:
        return False, 'onnxruntime is not installed (pip install "srtrt[onnx]")'
    return True, "onnxruntime " + onnxruntime.__version__


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off: where a home it cannot write keeps no device id,
    its import printed a coloured line of its own, into pipes too. The environment is as it was after."""
    before = os.environ.get("ORT_DISABLE_TELEMETRY")
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    try:
        import onnxruntime
    finally:
        if before is None:
            del os.environ["ORT_DISABLE_TELEMETRY"]
        else:
            os.environ["ORT_DISABLE_TELEMETRY"] = before
    return onnxruntime


class OnnxRuntimeBackend(PerShapeGraphs, Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike | OnnxGraphs, scale: int, radius: int, device: str = "cpu",
                 threads: int | None = None):
        ok, why = available()
        if not ok:
            raise SrtrtError(why)
        ort = import_onnxruntime()
        self._ort, self.threads = ort, threads
        self.providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SrtrtError("onnxruntime here has no CUDA provider (pip install onnxruntime-gpu)")
            self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
        self.own_threads = not device.startswith("cuda")  # ONNX Runtime's intra-op pool on the CPU
        self.graphs = onnx_path if isinstance(onnx_path, OnnxGraphs) else OnnxGraphs(dynamic=Path(onnx_path))
        self.path = self.graphs.label
        # a graph fixed at one window shape per (N, h, w) (window-attention models), the most recent last
        self._static: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        self.session = None
        if self.graphs.dynamic is not None:
            self.session = self._open(self.graphs.dynamic)
        elif self.graphs.first is not None:  # loaded now: a graph ONNX Runtime refuses is one line before any image
            n, self.channels, h, w = self.graphs.first
            self._session_for(n, h, w)
        self.scale, self.radius = scale, radius
        # Sized like the torch CPU backend for the default 64-channel network (ORT allocates fp32 internally).
        self.defaults = defaults_for_budget(CPU_ACTIVATION_BUDGET, activation_bytes_per_pixel(64, scale, 4), radius)

    def _open(self, path: Path):
        from srtrt.engine.toolchain import ort_custom_op
        from srtrt.engine.toolchain.onnx_io import metadata

        ort = self._ort
        # Fused graphs carry PixelShufflePReLU nodes, which need the custom-op library.
        opts = ort_custom_op.session_options() if metadata(path).get("fused") else ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        session = ort.InferenceSession(str(path), opts, providers=self.providers)
        inp = session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.precision = "fp16" if self.input_dtype == np.float16 else "fp32"
        return session

    def _session_for(self, batch: int, height: int, width: int):
        if self.graphs.dynamic is not None:
            return self.session
        shape = (batch, height, width)
        if shape not in self._static:
            self._static[shape] = self._open(self.graphs.static((batch, self.channels, height, width)))
            while len(self._static) > KEEP_SESSIONS:
                self._static.popitem(last=False)
        self._static.move_to_end(shape)
        self.session = self._static[shape]
        return self.session

    def prepare(self, batch: int, height: int, width: int) -> None:
        self._session_for(batch, height, width)  # a per-shape graph is exported and loaded before the image

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session_for(*x.shape[:1], *x.shape[2:])
        feed = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        (y,) = session.run([self.output_name], {self.input_name: feed})
        return torch.from_numpy(y)

    def describe(self) -> str:
        providers = "+".join(self.session.get_providers()) if self.session is not None else self.providers[0]
        return f"onnxruntime ({self.precision}, {providers}, {self.path.name})"
