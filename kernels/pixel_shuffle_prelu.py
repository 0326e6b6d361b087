"""Pixel shuffle (DepthToSpace, CRD order = torch.nn.PixelShuffle) fused with PReLU.

One Triton kernel serves the torch op (kernels/torch_op.py), the TensorRT plugin and the
AOT-compiled library (kernels/aot.py, CMakeLists.txt). Its argument order is input
pointers, int32 scalars, output pointer: the order TensorRT's AOT plugin launch uses.

Triton is optional: without it only `reference` exists and `HAVE_TRITON` is False.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path still works
    triton = None
    tl = None

HAVE_TRITON = triton is not None
BLOCK = 1024      # output elements per program
NUM_WARPS = 4
INDEX_LIMIT = 2**31  # the kernel indexes in int32: a launch covers fewer elements than this
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def reference(x: torch.Tensor, alpha: torch.Tensor, r: int) -> torch.Tensor:
    """What the kernel computes, in plain torch: PReLU(PixelShuffle(r)(x))."""
    return F.prelu(F.pixel_shuffle(x, r), alpha.reshape(-1).to(x.dtype))


def output_shape(x_shape, r: int) -> tuple[int, int, int, int]:
    n, c, h, w = x_shape
    if c % (r * r):
        raise ValueError(f"pixel shuffle by {r} needs channels divisible by {r * r}, got {c}")
    return n, c // (r * r), h * r, w * r


if HAVE_TRITON:

    @triton.jit
    def pixel_shuffle_prelu_kernel(
        x_ptr,            # (N, C*R*R, H, W), NCHW or channels_last memory order
        alpha_ptr,        # C slopes, or one shared slope
        C,                # output channels
        H,                # input height
        W,                # input width
        total,            # output elements, N*C*H*R*W*R (< INDEX_LIMIT)
        alpha_stride,     # 1: per-channel slope, 0: one shared slope
        y_ptr,            # (N, C, H*R, W*R), NCHW or channels_last memory order
        R: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
        BLOCK: tl.constexpr,
        IN_CHANNELS_LAST: tl.constexpr = False,
    ):
        # Walk the output in its own memory order so the stores are coalesced; the loads
        # gather from R*R input planes.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        OW = W * R
        OH = H * R
        if CHANNELS_LAST:
            c = offs % C
            rest = offs // C
            ow = rest % OW
            rest = rest // OW
            oh = rest % OH
            n = rest // OH
        else:
            ow = offs % OW
            rest = offs // OW
            oh = rest % OH
            rest = rest // OH
            c = rest % C
            n = rest // C
        h = oh // R
        i = oh % R
        w = ow // R
        j = ow % R
        src_channel = (c * R + i) * R + j
        if IN_CHANNELS_LAST:  # read a channels_last input where it lies: no layout copy first
            src = ((n * H + h) * W + w) * (C * R * R) + src_channel
        else:
            src = ((n * (C * R * R) + src_channel) * H + h) * W + w
        v = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(alpha_ptr + c * alpha_stride, mask=mask, other=0.0).to(tl.float32)
        y = tl.where(v > 0, v, v * a)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, alpha: torch.Tensor, r: int) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW tensor, got {x.dim()} dims")
    if x.dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {x.dtype}")
    if r < 1:
        raise ValueError(f"upscale factor must be >= 1, got {r}")
    shape = output_shape(x.shape, r)
    if alpha.numel() not in (1, shape[1]):
        raise ValueError(f"PReLU needs 1 or {shape[1]} slopes, got {alpha.numel()}")
    if x[:1].numel() >= INDEX_LIMIT:  # a batch is split into launches; one image cannot be
        raise ValueError(f"one image of {tuple(x.shape[1:])} is too large for 32-bit indexing")
    return shape


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether `x` lies in channels_last order (NCHW-contiguous wins where both hold: then
    the two orders index the same)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def empty_output(x: torch.Tensor, r: int, channels_last: bool = False) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(output_shape(x.shape, r), dtype=x.dtype, device=x.device, memory_format=fmt)


def launch(kernel, x: torch.Tensor, alpha: torch.Tensor, r: int, out: torch.Tensor) -> torch.Tensor:
    """Run `kernel` (the Triton kernel, or torch's wrap_triton of it) writing into `out`.

    `x` and `out` may each be NCHW-contiguous or channels_last: the kernel reads and writes
    each in its own order. A batch too large for int32 indexing is run in several launches.
    """
    shape = _check(x, alpha, r)
    if tuple(out.shape) != shape or out.dtype != x.dtype:
        raise ValueError(f"out must be {shape} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    if out.is_contiguous():
        channels_last = False
    elif out.is_contiguous(memory_format=torch.channels_last):
        channels_last = True
    else:
        raise ValueError("out must be NCHW-contiguous or channels_last")
    in_channels_last = is_channels_last(x)
    if not in_channels_last:
        x = x.contiguous()
    alpha = alpha.reshape(-1).contiguous()
    if out.numel() == 0:
        return out
    n, c, oh, ow = shape
    per_launch = max(1, (INDEX_LIMIT - 1) // out[:1].numel())  # images per launch
    for first in range(0, n, per_launch):
        # a batch slice of an NCHW or channels_last tensor keeps its order and contiguity
        xs, ys = x[first:first + per_launch], out[first:first + per_launch]
        kernel[(triton.cdiv(ys.numel(), BLOCK),)](
            xs, alpha, c, oh // r, ow // r, ys.numel(), 0 if alpha.numel() == 1 else 1, ys,
            R=r, CHANNELS_LAST=channels_last, BLOCK=BLOCK, IN_CHANNELS_LAST=in_channels_last, num_warps=NUM_WARPS)
    return out


def pixel_shuffle_prelu(x: torch.Tensor, alpha: torch.Tensor, r: int, channels_last: bool = False) -> torch.Tensor:
    """The fused kernel on `x`'s device (a GPU, or the CPU under TRITON_INTERPRET=1)."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed (pip install 'srtrt[triton]')")
    return launch(pixel_shuffle_prelu_kernel, x, alpha, r, empty_output(x, r, channels_last))
