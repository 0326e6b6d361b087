"""The TensorRT-RTX backend: a TensorRT-RTX plan run like the TensorRT backend (same class, same
torch buffers and streams), with what TensorRT-RTX adds at load and run time:

- Validity first: `Runtime.get_engine_validity` reads the plan's header and says whether it can
  run on this GPU, driver and runtime; an invalid plan is refused with one line naming every
  reason bit (VALIDITY_REASONS), a suboptimal one is loaded and says so in `describe()`.
- The runtime (JIT) cache: at load TensorRT-RTX specialises the portable plan for this GPU; that
  work is kept in a file beside the plan, per GPU model (engine_cache.runtime_cache_path),
  read at start and written back after each new tile shape is prepared and at close.
- Built-in CUDA graphs (`cuda_graph_strategy = WHOLE_GRAPH_CAPTURE`, on by default): TensorRT-RTX
  captures after its shape-specialised kernels exist; the backend keeps one fixed input and
  output buffer per stream and tile shape so the captured addresses stay valid.
- Kernel specialisation EAGER: the runtime's windows are a few static shapes (core + 2*margin,
  and the image itself when smaller), so each is compiled once, in `prepare()` before its first
  batch, rather than run on fallback kernels while a background compile catches up (LAZY).

TensorRT-RTX targets RTX-class GPUs (consumer and workstation Ampere, Ada, Blackwell); it does
not target Hopper (H100/H200), where the TensorRT backend is the engine. Every
`import tensorrt_rtx` is inside a function.
"""
from __future__ import annotations

import torch

from srtrt import atomic
from srtrt.engine.backends.tensorrt_backend import TensorRTBackend
from srtrt.engine.toolchain import engine_cache
from srtrt.errors import SrtrtError

# Every `rtx` name this module uses; tests/test_tensorrt_rtx.py checks them against the
# installed tensorrt_rtx.
RTX_NAMES_USED = (
    "get_engine_validity", "EngineValidity", "VALID", "SUBOPTIMAL", "INVALID", "EngineInvalidityDiagnostics",
    "create_runtime_config", "create_runtime_cache", "deserialize", "serialize", "set_runtime_cache",
    "cuda_graph_strategy", "CudaGraphStrategy", "WHOLE_GRAPH_CAPTURE", "DISABLED",
    "dynamic_shapes_kernel_specialization_strategy", "DynamicShapesKernelSpecializationStrategy", "EAGER",
    "LAZY", "NONE", "create_execution_context",
)
# One clause per EngineInvalidityDiagnostics bit: what it means and what to do.
VALIDITY_REASONS = {
    "VERSION_MISMATCH": "it was built by another TensorRT-RTX version: run `srtrt build --tensorrt rtx` again",
    "UNSUPPORTED_CC": "its compute capabilities do not include this GPU's ({sm}): "
                      "run `srtrt build --tensorrt rtx --cc {cc}`, or use TensorRT where TensorRT-RTX has no target",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is older than this TensorRT-RTX needs: update the driver",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is older than the plan needs: install the tensorrt-rtx wheel built "
                        "for this machine's CUDA",
    "INSUFFICIENT_GPU_MEMORY": "this GPU has too little memory for it: build with a smaller --tile or --max-batch",
    "MALFORMED_ENGINE": "the plan is malformed: run `srtrt build --tensorrt rtx` again",
    "CUDA_ERROR": "CUDA failed while reading the GPU's properties: check that the NVIDIA driver works (nvidia-smi)",
}
SPECIALIZATION = ("eager", "lazy", "none")


def validity_reasons(rtx, diagnostics: int, compute_capability) -> list[str]:
    """The VALIDITY_REASONS clauses for the bits set in `diagnostics` (unknown bits are named too)."""
    major, minor = compute_capability
    reasons, known = [], 0
    for name, text in VALIDITY_REASONS.items():
        bit = int(getattr(rtx.EngineInvalidityDiagnostics, name))
        known |= bit
        if diagnostics & bit:
            reasons.append(text.format(sm=engine_cache.sm(compute_capability), cc=f"{major}.{minor}"))
    if diagnostics & ~known:
        reasons.append(f"TensorRT-RTX gave reason bits {diagnostics & ~known:#x}, which srtrt does not know")
    return reasons


def available() -> tuple[bool, str]:
    from srtrt.engine.backends.tensorrt_backend import available as flavour_available

    return flavour_available("rtx")


class TensorRTRTXBackend(TensorRTBackend):
    name = "tensorrt-rtx"
    flavour = "rtx"
    graphs_label = "built-in CUDA graphs"

    def __init__(self, plan, device=None, *, cuda_graphs: bool = True, specialization: str = "eager"):
        if specialization not in SPECIALIZATION:
            raise SrtrtError(f"kernel specialisation must be one of {', '.join(SPECIALIZATION)}, not {specialization!r}")
        self.specialization = specialization
        super().__init__(plan, device, cuda_graphs=cuda_graphs)
        self.notes.append(f"kernel specialisation {specialization}")

    # -- flavour hooks ------------------------------------------------------------------------

    def _check_blob(self, blob: bytes) -> None:
        rtx = self._trt
        validity, diagnostics = self._runtime.get_engine_validity(blob)
        if validity == rtx.EngineValidity.VALID:
            return
        reasons = validity_reasons(rtx, int(diagnostics), self.gpu[1]) or ["TensorRT-RTX gave no reason"]
        here = f"{self.gpu[0]} ({engine_cache.sm(self.gpu[1])})"
        if validity == rtx.EngineValidity.SUBOPTIMAL:
            self.notes.append(f"suboptimal here: {'; '.join(reasons)}")
            return
        raise SrtrtError(f"TensorRT-RTX cannot run this plan on {here}: {'; '.join(reasons)}", self.plan)

    def _after_load(self) -> None:
        rtx = self._trt
        config = self._engine.create_runtime_config()
        config.cuda_graph_strategy = (rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if self.cuda_graphs
                                      else rtx.CudaGraphStrategy.DISABLED)
        strategies = rtx.DynamicShapesKernelSpecializationStrategy
        config.dynamic_shapes_kernel_specialization_strategy = {
            "eager": strategies.EAGER, "lazy": strategies.LAZY, "none": strategies.NONE}[self.specialization]
        self.runtime_cache_path = engine_cache.runtime_cache_path(self.plan, *self.gpu)
        with torch.cuda.device(self.device):  # deserialize checks the blob against the current CUDA context
            self._runtime_cache = config.create_runtime_cache()
            if self.runtime_cache_path.is_file():
                if not self._runtime_cache.deserialize(self.runtime_cache_path.read_bytes()):
                    self.notes.append("runtime cache from another driver or version: rebuilt")
            config.set_runtime_cache(self._runtime_cache)
        self._runtime_config = config
        self._saved_cache = None

    def _create_context(self):
        return self._engine.create_execution_context(self._runtime_config)

    @property
    def _uses_torch_graphs(self) -> bool:
        return False  # TensorRT-RTX captures and replays its own

    # -----------------------------------------------------------------------------------------

    def prepare(self, batch: int, height: int, width: int) -> None:
        super().prepare(batch, height, width)  # with CUDA graphs: one run of the shape, so its kernels exist
        self.save_runtime_cache()

    def save_runtime_cache(self) -> None:
        """Write the runtime cache beside the plan when it changed (atomically; best effort)."""
        cache = getattr(self, "_runtime_cache", None)
        if cache is None:
            return
        blob = bytes(cache.serialize())
        if not blob or blob == self._saved_cache:
            return
        try:
            atomic.write_bytes(self.runtime_cache_path, blob)
            self._saved_cache = blob
        except OSError:
            pass  # a read-only cache folder costs the next start its JIT work, nothing else

    def close(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self.save_runtime_cache()
        super().close()
        self._runtime_config = None
        self._runtime_cache = None
