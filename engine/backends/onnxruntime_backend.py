"""ONNX Runtime backend: runs an exported graph (fp32 or fp16 I/O) on the CPU EP, or CUDA/TensorRT EPs when installed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from srtrt.engine.backends.base import Backend, activation_bytes_per_pixel, defaults_for_budget
from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET
from srtrt.errors import SrtrtError


def available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, 'onnxruntime is not installed (pip install "srtrt[onnx]")'
    return True, "onnxruntime " + onnxruntime.__version__


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, scale: int, radius: int, device: str = "cpu",
                 threads: int | None = None):
        ok, why = available()
        if not ok:
            raise SrtrtError(why)
        import onnxruntime as ort

        from srtrt.engine.toolchain import ort_custom_op
        from srtrt.engine.toolchain.onnx_io import metadata

        # Fused graphs carry PixelShufflePReLU nodes, which need the custom-op library.
        opts = ort_custom_op.session_options() if metadata(onnx_path).get("fused") else ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SrtrtError("onnxruntime here has no CUDA provider (pip install onnxruntime-gpu)")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.own_threads = not device.startswith("cuda")  # ONNX Runtime's intra-op pool on the CPU
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.precision = "fp16" if self.input_dtype == np.float16 else "fp32"
        self.scale, self.radius = scale, radius
        self.path = Path(onnx_path)
        # Sized like the torch CPU backend for the default 64-channel network (ORT allocates fp32 internally).
        self.defaults = defaults_for_budget(CPU_ACTIVATION_BUDGET, activation_bytes_per_pixel(64, scale, 4), radius)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        (y,) = self.session.run([self.output_name], {self.input_name: feed})
        return torch.from_numpy(y)

    def describe(self) -> str:
        return f"onnxruntime ({self.precision}, {'+'.join(self.session.get_providers())}, {self.path.name})"
