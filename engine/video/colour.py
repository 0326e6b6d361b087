"""YUV <-> RGB with the stream's own matrix and range, never swscale's default (BT.601, no range).

A video's pixels are Y'CbCr under one of a few matrices (BT.601, BT.709, BT.2020, ...) and in
limited (16-235 for 8 bits) or full range; getting either wrong shifts every colour. The
network sees RGB, so frames are converted here, in torch (vectorised, threads, no GIL), with
the coefficients read from the stream's tags. Conversion back uses the same matrix and range,
and the output stream is tagged with them, so a player undoes exactly what was done.

Untagged streams follow players' convention: BT.601 below 720 lines, BT.709 from 720 up; the
output is then tagged with the matrix that was used, since at 4x it would otherwise be read as
HD (BT.709) whatever the source was.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# AVColorSpace codes -> (Kr, Kb); the constant-luminance BT.2020 variant is rare and read as NCL.
BT709, UNSPECIFIED, BT470BG, SMPTE170M, SMPTE240M, BT2020_NCL, BT2020_CL, FCC = 1, 2, 5, 6, 7, 9, 10, 4
COEFFICIENTS = {
    BT709: (0.2126, 0.0722),
    BT470BG: (0.299, 0.114),
    SMPTE170M: (0.299, 0.114),
    FCC: (0.30, 0.11),
    SMPTE240M: (0.212, 0.087),
    BT2020_NCL: (0.2627, 0.0593),
    BT2020_CL: (0.2627, 0.0593),
}
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2


@dataclass(frozen=True)
class Colour:
    """How a stream's samples map to RGB: the matrix (AVColorSpace code) and full or limited range,
    plus the primaries and transfer tags, carried through untouched."""

    matrix: int
    full_range: bool
    primaries: int = 2
    transfer: int = 2

    @property
    def coefficients(self) -> tuple[float, float]:
        return COEFFICIENTS.get(self.matrix, COEFFICIENTS[BT709])

    @property
    def range_code(self) -> int:
        return RANGE_FULL if self.full_range else RANGE_LIMITED


def stream_colour(colorspace: int, color_range: int, primaries: int, transfer: int, height: int,
                  pix_fmt: str) -> Colour:
    """The colour a decoder's tags describe, with the conventions for missing tags filled in."""
    matrix = colorspace if colorspace in COEFFICIENTS else (SMPTE170M if height < 720 else BT709)
    full = color_range == RANGE_FULL or (color_range == RANGE_UNSPECIFIED and pix_fmt.startswith("yuvj"))
    return Colour(matrix, full, primaries, transfer)


def _levels(bits: int, full: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma centre, chroma span) in code values."""
    if full:
        top = float((1 << bits) - 1)
        return 0.0, top, float(1 << (bits - 1)), top
    unit = float(1 << (bits - 8))
    return 16 * unit, 219 * unit, 128 * unit, 224 * unit


def _tensor(plane: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(plane)).to(torch.float32)


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, bits: int, colour: Colour, out_dtype) -> np.ndarray:
    """Planes (H x W luma, subsampled chroma) -> H x W x 3 RGB of `out_dtype` (uint8 or uint16, full scale).

    Chroma is upsampled bilinearly (centre sited) before the matrix, so edges stay as sharp as
    the source carries them.
    """
    kr, kb = colour.coefficients
    kg = 1.0 - kr - kb
    y0, ys, c0, cs = _levels(bits, colour.full_range)
    h, w = y.shape
    luma = (_tensor(y) - y0) / ys
    chroma = (torch.stack([_tensor(u), _tensor(v)]) - c0) / cs
    if chroma.shape[1:] != (h, w):
        sy, sx = -(-h // chroma.shape[1]), -(-w // chroma.shape[2])
        chroma = F.interpolate(chroma[None], scale_factor=(sy, sx), mode="bilinear", align_corners=False)[0, :, :h, :w]
    cb, cr = chroma[0], chroma[1]
    r = luma + 2 * (1 - kr) * cr
    b = luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / kg
    top = float(np.iinfo(out_dtype).max)
    rgb = torch.stack([r, g, b], -1).clamp_(0, 1).mul_(top).round_()
    return rgb.to(torch.int32).numpy().astype(out_dtype)


def rgb_to_yuv(rgb: np.ndarray, bits: int, colour: Colour, subsampling: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """H x W x 3 RGB (uint8 or uint16, full scale) -> (Y, Cb, Cr) integer planes of `bits` bits;
    chroma averaged over each (sy, sx) block (an odd edge averages what it has)."""
    kr, kb = colour.coefficients
    y0, ys, c0, cs = _levels(bits, colour.full_range)
    top = float(np.iinfo(rgb.dtype).max)
    x = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()).to(torch.float32).div_(top)
    r, g, b = x.unbind(-1)
    luma = kr * r + (1 - kr - kb) * g + kb * b
    chroma = torch.stack([(b - luma) / (2 * (1 - kb)), (r - luma) / (2 * (1 - kr))])
    sy, sx = subsampling
    if (sy, sx) != (1, 1):
        chroma = F.avg_pool2d(chroma[None], (sy, sx), ceil_mode=True)[0]
    peak = float((1 << bits) - 1)
    dtype = np.uint8 if bits <= 8 else np.uint16

    def code(t: torch.Tensor, offset: float, span: float) -> np.ndarray:
        return t.mul(span).add_(offset).round_().clamp_(0, peak).to(torch.int32).numpy().astype(dtype)

    return code(luma, y0, ys), code(chroma[0], c0, cs), code(chroma[1], c0, cs)
