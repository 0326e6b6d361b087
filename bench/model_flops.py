"""The SRResNet's floating-point work, counted analytically from its config.

Only convolutions count (they are all but a fraction of a percent of the work): each one costs
2*k*k*Cin*Cout multiply-adds per output pixel at the resolution it runs at. 'Same' padding
keeps every conv's output as large as its input, so the work is linear in the LR pixel count:
about 4.44 GFLOP per 1000 LR pixels for the default x4 network (16 blocks, 64 channels).
"""
from __future__ import annotations

import math

from srtrt.engine.datapath import tiles as tiling
from srtrt.nets import SRResNetConfig


def conv_flop(k: int, cin: int, cout: int, pixels: int) -> int:
    return 2 * k * k * cin * cout * pixels


def flop_per_lr_pixel(config: SRResNetConfig) -> int:
    c = config.channels
    total = conv_flop(config.head_kernel, 3, c, 1)
    total += config.blocks * 2 * conv_flop(3, c, c, 1)    # two convs per residual block
    total += conv_flop(3, c, c, 1)                         # the conv after the body
    area = 1
    for _ in range(int(math.log2(config.scale))):          # each x2 step convolves C -> 4C, then shuffles
        total += conv_flop(3, c, 4 * c, area)
        area *= 4
    total += conv_flop(config.tail_kernel, c, 3, area)     # the tail runs at the output resolution
    return total


def image_flop(config: SRResNetConfig, height: int, width: int) -> int:
    """The work of one whole-image pass."""
    return flop_per_lr_pixel(config) * height * width


def tiled_flop(config: SRResNetConfig, plan: tiling.TilePlan) -> tuple[int, int]:
    """(FLOPs actually computed, number of windows) for the runtime's own plan of an image
    (`TiledUpscaler.plan`: one window for a small image, balanced tiles, the cheapest split).

    Every window has the plan's one shape, so margins computed twice are counted twice.
    """
    wh, ww = plan.window_shape
    return flop_per_lr_pixel(config) * wh * ww * len(plan), len(plan)
