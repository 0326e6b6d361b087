"""The reference backend: the PyTorch inference view on CPU or CUDA.

Speed comes from folded BatchNorm, channels_last, a reduced precision where the device does it
natively (bf16 on CPUs with AVX512-BF16/AMX, fp16 or bf16 on CUDA), the polyphase tail on the
CPU (the 9x9 conv to 3 channels at full resolution as a conv to 12 channels at half resolution,
nets.polyphase_tail; bench/ measures it against the plain graph), the fused Triton
pixel-shuffle+PReLU op on CUDA, and optionally torch.compile.
"""
from __future__ import annotations

import copy

import torch

from srtrt import registry
from srtrt.engine.backends.base import (
    Backend,
    activation_bytes_per_pixel,
    defaults_for_budget,
)
from srtrt.engine.datapath.sheets import masking
from srtrt.nets import CommunityView, InferenceView

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_ACTIVATION_BUDGET = 1_500_000_000   # keeps `srtrt run` on any image under ~2.5 GB resident
CUDA_ACTIVATION_BUDGET = 8_000_000_000


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, view: InferenceView, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = True, compile: bool = False, fused_op: bool | None = None,
                 polyphase: bool | None = None):
        self.device = torch.device(device)
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, not {precision!r}")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 on the CPU is emulated and slow; use bf16 or fp32")
        facts = view.facts
        if refusal := facts.refusal(precision):
            raise ValueError(refusal)
        self.precision, self.dtype = precision, DTYPES[precision]
        self.scale, self.radius = view.scale, view.radius
        self.channels, self.minimum, self.multiple_of = facts.channels, facts.minimum, facts.multiple_of
        self.grid = facts.grid
        self.architecture = facts.architecture
        self.channels_last = channels_last
        arch = registry.of(view.generator)
        generator = arch.fold_batchnorm(copy.deepcopy(view.generator))
        if polyphase is None:  # measured on CPUs (bench/ torch-bf16 vs torch-bf16-plain); GPUs keep the fused op
            polyphase = self.device.type == "cpu"
        polyphase = polyphase and arch.rewrites_tail
        if polyphase:
            generator = arch.polyphase_tail(generator)
        self.polyphase = polyphase
        if fused_op is None:  # on a GPU wherever the model has a shuffle + PReLU step (community models: none)
            fused_op = self.device.type == "cuda" and bool(arch.upsample_steps(generator))
        if fused_op:
            from srtrt.kernels.torch_op import fuse_upsample
            generator = fuse_upsample(generator)  # the steps that still shuffle (all but the last when polyphase)
        self.fused_op = fused_op
        # A community network in bf16 runs under autocast, its weights kept fp32: SwinIR and GRL build
        # masks and position tables in fp32 inside forward for a size other than the one they were
        # built at, which a module cast to bf16 then meets ("mat1 and mat2 must have the same dtype").
        self.autocast = precision == "bf16" and isinstance(view, CommunityView)
        self.stored = torch.float32 if self.autocast else self.dtype  # the module's weights and its input
        model = view.with_generator(generator).to(self.device, self.stored).eval()
        if channels_last:
            _to_channels_last(model)
        self.model = torch.compile(model, dynamic=False) if compile else model
        self.compiled = compile
        self.runs_masks = not compile  # sheets.masking hooks every nn.Conv2d; a compiled graph would not see them
        bpp = activation_bytes_per_pixel(view.facts.feature_channels, self.scale, self.dtype.itemsize)
        if self.device.type == "cuda":  # batches of 4 large windows keep a GPU busy; memory is plentiful
            self.defaults = defaults_for_budget(CUDA_ACTIVATION_BUDGET, bpp, self.radius, batch=4)
        else:  # one window at a time, as large as the budget allows: less overlap to recompute
            self.defaults = defaults_for_budget(CPU_ACTIVATION_BUDGET, bpp, self.radius, batch=1)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.stored, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            return self.model(x)

    @torch.inference_mode()
    def infer_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.runs_masks:
            return super().infer_masked(x, mask)
        with masking(self.model, mask.to(self.device)):
            return self.infer(x)

    def describe(self) -> str:
        extras = [e for e, on in (("channels_last", self.channels_last), ("polyphase tail", self.polyphase),
                                  ("fused Triton op", self.fused_op), ("torch.compile", self.compiled),
                                  ("bf16 autocast", self.autocast)) if on]
        return f"torch ({self.precision}, {self.device}{', ' + ', '.join(extras) if extras else ''})"


def _to_channels_last(model: torch.nn.Module) -> None:
    """Its 4-D weights in channels_last, the others as they are: Module.to(memory_format=...) refuses a
    model holding any tensor of another rank (FFTformer's 5-D frequency filters)."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
