"""The torch backend with its forward pass captured in CUDA graphs (a benchmark case only).

One graph per (CUDA stream, input shape): the runtime alternates streams, and a graph's
output buffer is reused by its next replay, so two streams must never share one. A graph is
captured after two ordinary passes on a side stream (cuDNN picks its algorithms and Triton
compiles its kernels there), then replayed for every later batch of that shape. Each graph holds
its own memory pool, so past MAX_GRAPHS (a folder of many sizes) new shapes run uncaptured.
"""
from __future__ import annotations

import torch

from srtrt.engine.backends.torch_backend import TorchBackend

MAX_GRAPHS = 16  # as the TensorRT backend keeps


class GraphedTorchBackend(TorchBackend):
    name = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self._graphs = {}  # (stream handle, shape) -> (graph, static input, static output)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        key = (torch.cuda.current_stream(self.device).cuda_stream, tuple(x.shape))
        if key not in self._graphs and len(self._graphs) >= MAX_GRAPHS:
            return super().infer(x)
        x = x.to(self.device, self.stored, non_blocking=True)  # what TorchBackend.infer feeds the module
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        graph, static_in, static_out = self._graphs.get(key) or self._capture(key, x)
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, key, x: torch.Tensor):
        static_in = x.clone()
        caller = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model(static_in)
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the runtime's reader and assembler threads keep pinning buffers and
        # waiting on events while this thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.model(static_in)
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def describe(self) -> str:
        return super().describe()[:-1] + ", CUDA graphs)"
