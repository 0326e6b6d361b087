"""`torch.ops.srtrt.pixel_shuffle_prelu`: the fused kernel as a torch operator.

CUDA tensors run the Triton kernel; CPU tensors (and CUDA without triton) run the plain
torch reference, so importing this module never needs triton. The op is a `triton_op`, so
torch.compile can see the kernel inside it and torch.export keeps it as one node.
`fuse_upsample` swaps a generator's shuffle + PReLU steps (as the architecture registry
lists them) for the op (the torch backend on CUDA).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.library import triton_op, wrap_triton

from . import pixel_shuffle_prelu as kernel_source

OP_NAME = "srtrt::pixel_shuffle_prelu"


@triton_op(OP_NAME, mutates_args=())
def pixel_shuffle_prelu(x: torch.Tensor, alpha: torch.Tensor, r: int) -> torch.Tensor:
    """PReLU(PixelShuffle(r)(x)) with per-channel (C) or shared (1) slopes; the output in x's
    memory order (NCHW or channels_last), so a channels_last network pays no layout copies."""
    if x.device.type == "cuda" and kernel_source.HAVE_TRITON:
        out = kernel_source.empty_output(x, r, kernel_source.is_channels_last(x))
        return kernel_source.launch(wrap_triton(kernel_source.pixel_shuffle_prelu_kernel), x, alpha, r, out)
    order = torch.channels_last if kernel_source.is_channels_last(x) else torch.contiguous_format
    return kernel_source.reference(x, alpha, r).contiguous(memory_format=order)  # as the fake says


@pixel_shuffle_prelu.register_fake
def _(x: torch.Tensor, alpha: torch.Tensor, r: int) -> torch.Tensor:
    # Shape, dtype and memory order: lets torch.export and torch.compile trace without running a kernel.
    return kernel_source.empty_output(x, r, kernel_source.is_channels_last(x))


class FusedUpsampleBlock(nn.Module):
    """An UpsampleBlock whose PixelShuffle(r) + PReLU run as one op (same weights, same result)."""

    def __init__(self, conv: nn.Conv2d, act: nn.PReLU, upscale: int):
        super().__init__()
        self.conv = conv
        self.act = act  # kept as a module so state_dict keys match the unfused block
        self.upscale = upscale

    def forward(self, x):
        return torch.ops.srtrt.pixel_shuffle_prelu(self.conv(x), self.act.weight, self.upscale)


def fuse_upsample(model: nn.Module) -> nn.Module:
    """A copy of `model` (a registered generator or its InferenceView) with every upsample step fused."""
    from srtrt import registry

    fused = copy.deepcopy(model)
    wrapped = hasattr(fused, "generator")
    generator = fused.generator if wrapped else fused
    steps = registry.of(generator).upsample_steps(generator)
    if not steps:
        raise ValueError("model has no upsample step to fuse")
    for step in steps:
        parent_name, _, child = step.module.rpartition(".")
        parent = generator.get_submodule(parent_name) if parent_name else generator
        setattr(parent, child, FusedUpsampleBlock(step.conv, step.prelu, step.upscale))
    return fused
