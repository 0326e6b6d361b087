"""The colour under fully transparent pixels, filled from the visible ones before the network.

A file stores some colour under alpha 0, often black, and nobody sees it until an upscaler
blends it in: the network mixes it into the visible edge, and the upscaled alpha makes that edge
half transparent, so a white logo on transparent black came out with a dark fringe (mean edge
colour 121 instead of 255). Only pixels with alpha 0 are changed, so nothing visible in the input
changes colour.

The fill is pull-push (the mip-map fill texture tools call alpha bleeding): visible colour is
averaged down a pyramid of 2x2 blocks, and each hidden pixel takes the finest level that has
colour near it. It is done once on the whole LR image, before tiling, so tiles still equal the
whole-image pass.
"""
from __future__ import annotations

import numpy as np


def fill_hidden_colour(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """`pixels` (H x W x C) with every pixel whose alpha is 0 given a colour pulled from the visible
    pixels around it; the same array when nothing is hidden or nothing is visible."""
    if alpha is None:
        return pixels
    visible = alpha > 0
    if visible.all() or not visible.any():
        return pixels
    # The first level is summed in integers: a float copy of a 4K image would cost more than the rest.
    levels = [(_halved(np.where(visible[:, :, None], pixels, 0)).astype(np.float32),
               _halved(visible).astype(np.float32))]
    while max(levels[-1][1].shape) > 1:
        levels.append((_halved(levels[-1][0]), _halved(levels[-1][1])))
    colour = None
    for summed, weight in reversed(levels):
        known = weight > 0
        here = np.zeros_like(summed)
        np.divide(summed, weight[:, :, None], out=here, where=known[:, :, None])
        if colour is not None:  # hidden here: the coarser level's colour
            coarse = colour.repeat(2, axis=0).repeat(2, axis=1)[:summed.shape[0], :summed.shape[1]]
            here = np.where(known[:, :, None], here, coarse)
        colour = here
    # at full size every hidden pixel takes its 2x2 block's colour
    blocks = np.round(colour).astype(pixels.dtype).repeat(2, axis=0).repeat(2, axis=1)
    filled = pixels.copy()
    np.copyto(filled, blocks[:pixels.shape[0], :pixels.shape[1]], where=~visible[:, :, None])
    return filled


def _halved(plane: np.ndarray) -> np.ndarray:
    """Sums of 2x2 blocks (a zero row or column added to an odd side); integers summed as uint32."""
    height, width = plane.shape[:2]
    if height % 2 or width % 2:
        plane = np.pad(plane, [(0, height % 2), (0, width % 2)] + [(0, 0)] * (plane.ndim - 2))
    shape = (plane.shape[0] // 2, 2, plane.shape[1] // 2, 2, *plane.shape[2:])
    return plane.reshape(shape).sum(axis=(1, 3), dtype=np.float32 if plane.dtype.kind == "f" else np.uint32)
