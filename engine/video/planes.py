"""PyAV frames <-> numpy planes, with the colour conversion of `colour` in between.

Planar YUV (yuv420p, yuv422p10le, ...) is read straight from the frame's buffers; packed or
semi-planar YUV (nv12, p010, yuyv422) is first repacked by swscale into planar YUV of the same
matrix and range (no colour arithmetic happens there); RGB, grey and palette frames need no
matrix and are read as RGB.
"""
from __future__ import annotations

import av
import numpy as np

from srtrt.engine.video.colour import Colour, rgb_to_yuv, yuv_to_rgb


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


def subsampling(pix_fmt: str) -> tuple[int, int]:
    """(vertical, horizontal) chroma subsampling of a planar YUV format."""
    frame = av.VideoFrame(16, 16, pix_fmt)
    return frame.planes[0].height // frame.planes[1].height, frame.planes[0].width // frame.planes[1].width


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """An encoder-ready frame in planar YUV `pix_fmt`, tagged with `colour`."""
    h, w = rgb.shape[:2]
    bits = bit_depth(pix_fmt)
    frame = av.VideoFrame(w, h, pix_fmt)
    dtype = np.uint8 if bits <= 8 else np.uint16
    for plane, values in zip(frame.planes, rgb_to_yuv(rgb, bits, colour, subsampling(pix_fmt))):
        _plane_array(plane, dtype)[...] = values
    frame.colorspace = colour.matrix
    frame.color_range = colour.range_code
    return frame
