"""PyAV frames <-> numpy planes, with the colour conversion of `colour` in between.

Planar YUV (yuv420p, yuv422p10le, ...) is read straight from the frame's buffers; packed or
semi-planar YUV (nv12, p010, yuyv422) is first repacked by swscale into planar YUV of the same
matrix and range (no colour arithmetic happens there); RGB, grey and palette frames need no
matrix and are read as RGB.
"""
from __future__ import annotations

import functools

import av
import numpy as np
import torch
import torch.nn.functional as F

from srtrt.engine.video import colour as spaces
from srtrt.engine.video.colour import Colour, rgb_to_yuv, yuv_to_rgb

# swscale's matrix numbers for the AVColorSpace codes colour.py knows
_SWS_MATRIX = {spaces.BT709: 1, spaces.FCC: 4, spaces.BT470BG: 5, spaces.SMPTE170M: 5, spaces.SMPTE240M: 7,
               spaces.BT2020_NCL: 9, spaces.BT2020_CL: 9}


def bit_depth(pix_fmt: str) -> int:
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def _direct_yuv(fmt: av.VideoFormat) -> bool:
    """Planar YUV with one component per plane, little-endian: its planes are read as they are."""
    name = fmt.name
    return (name.startswith("yuv") and fmt.is_planar and not fmt.is_big_endian
            and len({c.plane for c in fmt.components}) == len(fmt.components))


def _plane_array(plane, dtype) -> np.ndarray:
    """A writable H x W view of one plane (line padding excluded)."""
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // itemsize)
    return rows[:, :plane.width]


def frame_to_rgb(frame: av.VideoFrame, colour: Colour) -> np.ndarray:
    """H x W x 3 RGB: uint8 for 8-bit sources, uint16 (full 16-bit scale) for deeper ones."""
    fmt = frame.format
    bits = max(c.bits for c in fmt.components)
    out_dtype = np.uint8 if bits <= 8 else np.uint16
    if not fmt.name.startswith(("yuv", "nv", "p0", "p2", "p4", "y2", "uyv", "yuy", "yvy")):
        return frame.to_ndarray(format="rgb24" if bits <= 8 else "rgb48le")
    if not _direct_yuv(fmt):  # repack only; same matrix and range
        frame = frame.reformat(format="yuv444p" if bits <= 8 else "yuv444p16le")
        bits = 8 if bits <= 8 else 16
    dtype = np.uint8 if bits <= 8 else np.uint16
    y, u, v = (_plane_array(frame.planes[i], dtype) for i in range(3))
    return yuv_to_rgb(y, u, v, bits, colour, out_dtype)


@functools.cache
def subsampling(pix_fmt: str) -> tuple[int, int]:
    """(vertical, horizontal) chroma subsampling of a planar YUV format."""
    frame = av.VideoFrame(16, 16, pix_fmt)
    return frame.planes[0].height // frame.planes[1].height, frame.planes[0].width // frame.planes[1].width


def _swscale_yuv(rgb: np.ndarray, colour: Colour, sub: tuple[int, int]) -> tuple[np.ndarray, ...] | None:
    """8-bit limited-range Y'CbCr by swscale told the matrix, at 16 bits, then chroma box-averaged
    and every plane rounded to 8 bits here; None where swscale is not exact enough.

    For 8-bit RGB to limited range this is within one code value of `rgb_to_yuv` (every matrix,
    measured; rounding once, at the end, keeps chroma unbiased) and twice as fast, and colour
    conversion is most of an encoder thread's own time at 4x sizes. Full range (chroma off by half
    a step) and 10-bit output (off by two) stay with `rgb_to_yuv`.
    """
    if rgb.dtype != np.uint8 or colour.full_range or colour.matrix not in _SWS_MATRIX:
        return None
    deep = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
        format="yuv444p16le", dst_colorspace=_SWS_MATRIX[colour.matrix], dst_color_range=spaces.RANGE_LIMITED)
    y, u, v = (_plane_array(p, np.uint16) for p in deep.planes)
    return _to_8_bits(y, (1, 1)), _to_8_bits(u, sub), _to_8_bits(v, sub)


def _to_8_bits(plane: np.ndarray, sub: tuple[int, int]) -> np.ndarray:
    """A 16-bit plane's (sy, sx) block means, rounded to 8 bits (limited range: code x 256)."""
    sy, sx = sub
    h, w = plane.shape
    if h % sy or w % sx:  # an odd edge averages what it has
        blocks = F.avg_pool2d(torch.from_numpy(plane.astype(np.float32))[None], sub, ceil_mode=True)[0]
        return blocks.div_(256).round_().clamp_(0, 255).to(torch.uint8).numpy()
    count = sy * sx  # strided integer sums: several times faster than pooling in floats
    total = sum(plane[i::sy, j::sx].astype(np.uint32) for i in range(sy) for j in range(sx))
    return ((total + count * 128) // (count * 256)).astype(np.uint8)


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """An encoder-ready frame in planar YUV `pix_fmt`, tagged with `colour`."""
    h, w = rgb.shape[:2]
    bits = bit_depth(pix_fmt)
    frame = av.VideoFrame(w, h, pix_fmt)
    dtype = np.uint8 if bits <= 8 else np.uint16
    sub = subsampling(pix_fmt)
    planes = (_swscale_yuv(rgb, colour, sub) if bits <= 8 else None) or rgb_to_yuv(rgb, bits, colour, sub)
    for plane, values in zip(frame.planes, planes):
        _plane_array(plane, dtype)[...] = values
    frame.colorspace = colour.matrix
    frame.color_range = colour.range_code
    return frame
