"""Small images of many sizes share one static window: a sheet.

A folder of small photos, each of a size not seen before, costs a path that compiles per shape
(OpenVINO's AMX kernels are made per shape) a compile per image, and leaves a fast backend at
half its speed (issue 24). Here such images are laid side by side on sheets of one fixed shape,
so one compiled model runs them all, and each image's output is cut out of the sheet's.

Exact, not approximate: the network runs with a mask (1 on an image's pixels, 0 elsewhere) that
multiplies the input of every convolution (backend `infer_masked`). So every convolution reads
zeros around an image, as the network's own zero padding gives it in a whole-image pass, and
images `gap` pixels apart never see each other (`gap` is the widest border any one convolution
reads, in LR pixels: registry.ModelFacts.sheet_gap). Elementwise steps, residual additions and
pixel shuffles move nothing across pixels, so each cut-out equals the image's whole-image pass.

`pack` lays images out (a skyline packing, tallest first), `compose` builds a sheet's input and mask, and
`cut` takes one image's output rows out of the sheet's.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from srtrt.engine.datapath.runtime import NotFinite, all_finite


@dataclass(frozen=True)
class Placement:
    """Image `index` (into the sizes given to `pack`) at LR rows [top, top+height), columns [left, left+width)."""

    index: int
    top: int
    left: int
    height: int
    width: int


def fits(size: tuple[int, int], sheet: tuple[int, int]) -> bool:
    return size[0] <= sheet[0] and size[1] <= sheet[1]


def pack(sizes: list[tuple[int, int]], sheet: tuple[int, int], gap: int, align: int = 1) -> list[Placement]:
    """Places for as many of `sizes` ((height, width), each fitting the sheet) as one sheet holds,
    at least `gap` pixels apart: a skyline packing, each image put where its top edge lands
    highest (then leftmost), in the order (tallest, widest, largest or longest side first) that
    covers most of the sheet. Images left out go on a later sheet.

    Each image is packed as a (height + gap) x (width + gap) block on a sheet `gap` larger than
    the real one, so neighbours are `gap` apart and an image may touch the sheet's far edges.
    `align`: every image starts on multiples of it (a network that pixel-unshuffles by it sees
    each image on the grid of its own pass), packed in units of `align` pixels."""
    for h, w in sizes:
        if not fits((h, w), sheet):
            raise ValueError(f"an image of {h}x{w} does not fit a {sheet[0]}x{sheet[1]} sheet")
    if align > 1:
        units = [(-(-h // align), -(-w // align)) for h, w in sizes]
        placed = pack(units, (sheet[0] // align, sheet[1] // align), -(-gap // align))
        return [Placement(p.index, p.top * align, p.left * align, *sizes[p.index]) for p in placed]
    layouts = [_skyline(sizes, sorted(range(len(sizes)), key=key), sheet, gap) for key in (
        lambda i: (-sizes[i][0], -sizes[i][1]),             # tallest first
        lambda i: (-sizes[i][1], -sizes[i][0]),             # widest first
        lambda i: -sizes[i][0] * sizes[i][1],               # largest first
        lambda i: -max(sizes[i]))]                          # longest side first
    best = max(layouts, key=lambda placed: sum(p.height * p.width for p in placed))
    return sorted(best, key=lambda p: p.index)


def _skyline(sizes: list[tuple[int, int]], order: list[int], sheet: tuple[int, int], gap: int) -> list[Placement]:
    height, width = sheet[0] + gap, sheet[1] + gap
    skyline = [(0, width, 0)]  # segments (left, length, top of what is stacked there), left to right
    placed: list[Placement] = []
    for i in order:
        h, w = sizes[i]
        best = None
        for k, (left, _, _) in enumerate(skyline):
            if left + w + gap > width:
                break
            top, end, j = 0, left + w + gap, k
            while j < len(skyline) and skyline[j][0] < end:
                top = max(top, skyline[j][2])
                j += 1
            if top + h + gap <= height and (best is None or (top, left) < best[:2]):
                best = (top, left)
        if best is None:
            continue
        top, left = best
        placed.append(Placement(i, top, left, h, w))
        skyline = _raised(skyline, left, w + gap, top + h + gap)
    return placed


def _raised(skyline: list[tuple[int, int, int]], left: int, length: int, top: int) -> list[tuple[int, int, int]]:
    """The skyline with [left, left + length) raised to `top`; neighbouring segments of one height merged."""
    end, pieces = left + length, []
    for x, n, y in skyline:
        if x < left:
            pieces.append((x, min(n, left - x), y))
        if x + n > end:
            start = max(x, end)
            pieces.append((start, x + n - start, y))
    pieces.append((left, length, top))
    merged: list[tuple[int, int, int]] = []
    for x, n, y in sorted(pieces):
        if merged and merged[-1][2] == y and merged[-1][0] + merged[-1][1] == x:
            merged[-1] = (merged[-1][0], merged[-1][1] + n, y)
        else:
            merged.append((x, n, y))
    return merged


def compose(pixels: list[np.ndarray], placements: list[Placement],
            sheet: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The sheet's network input (1, 3, H, W) float32 in [0, 1], zero between images, and its
    mask (1, 1, H, W): 1 on images' pixels. `pixels[p.index]` is an H x W x 3 uint8 or uint16 image."""
    x = torch.zeros(1, 3, *sheet)
    mask = torch.zeros(1, 1, *sheet)
    for p in placements:
        values = pixels[p.index]
        image = torch.from_numpy(values.astype(np.float32)).permute(2, 0, 1)
        x[0, :, p.top:p.top + p.height, p.left:p.left + p.width] = image.div_(float(np.iinfo(values.dtype).max))
        mask[0, :, p.top:p.top + p.height, p.left:p.left + p.width] = 1
    return x, mask


def cut(output: torch.Tensor, p: Placement, scale: int, dtype) -> np.ndarray:
    """Image p's output, (H*scale) x (W*scale) x 3 of `dtype`, from the sheet's (1, 3, Hs, Ws)
    float output: clamped to [0, 1] and rounded as the tiled runtime quantises; NotFinite where
    the part holds NaN or infinity, as there."""
    part = output[0, :, p.top * scale:(p.top + p.height) * scale, p.left * scale:(p.left + p.width) * scale]
    if not all_finite(part):
        raise NotFinite()
    part = part.float().clamp(0, 1).permute(1, 2, 0)
    if np.issubdtype(dtype, np.integer):
        part = part.mul(float(np.iinfo(dtype).max)).round_()
        # uint16 is held in int32 on its way (torch has no uint16 arithmetic on every build)
        return part.to(torch.int32).numpy().astype(dtype)
    return part.contiguous().numpy()


def masks_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`mask` (N, 1, H, W) at a layer's resolution: repeated for a layer `height / H` times finer
    (after pixel shuffles), subsampled for a coarser one (images sit on that layer's grid)."""
    h = mask.shape[2]
    if height == h:
        return mask
    if height > h:
        f = height // h
        return mask.repeat_interleave(f, 2).repeat_interleave(f, 3)
    f = h // height
    return mask[:, :, ::f, ::f]


@contextlib.contextmanager
def masking(module: nn.Module, mask: torch.Tensor):
    """Within the block, every nn.Conv2d of `module` reads its input multiplied by `mask`
    (N, 1, H, W) at that input's resolution (masks_at): a torch network run on a sheet."""
    def masked(_conv, inputs):
        x = inputs[0]
        return (x * masks_at(mask, x.shape[2], x.shape[3]).to(x.dtype),)

    hooks = [m.register_forward_pre_hook(masked) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
