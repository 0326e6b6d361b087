"""PyAV frames <-> numpy planes, with the colour conversion of `colour` in between.

Planar YUV (yuv420p, yuv422p10le, ...) is read straight from the frame's buffers; packed or
semi-planar YUV (nv12, p010, yuyv422) is first repacked by swscale into planar YUV of the same
matrix and range (no colour arithmetic happens there); RGB, grey and palette frames need no
matrix and are read as RGB.
"""
from __future__ import annotations

import functools
import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from srtrt.engine.video import colour as spaces
from srtrt.engine.video.colour import Colour, rgb_to_yuv, yuv_to_rgb

# swscale's matrix numbers for the AVColorSpace codes colour.py knows
_SWS_MATRIX = {spaces.BT709: 1, spaces.FCC: 4, spaces.BT470BG: 5, spaces.SMPTE170M: 5, spaces.SMPTE240M: 7,
               spaces.BT2020_NCL: 9, spaces.BT2020_CL: 9}


# libswscale 9.5 (FFmpeg 8) converts RGB rows that are not a multiple of 16 pixels wide wrongly now and
# then: 8 luma samples of one row up to ~100 levels off (23 % of random 4:2:0 sizes, measured against
# rgb_to_yuv; none of 400 once the rows are padded to a multiple of 16). So swscale gets padded rows;
# 4:2:2 (its chroma still wrong at 25 % of sizes, padded) and frames under SWS_MIN_HEIGHT rows (one
# chroma row: 40-60 levels off) go to rgb_to_yuv.
SWS_WIDTH_MULTIPLE = 16
SWS_MIN_HEIGHT = 4
SWS_SUBSAMPLING = {(2, 2), (1, 1)}  # (vertical, horizontal): 4:2:0 and 4:4:4


class _PerThread(threading.local):
    """What each thread keeps for swscale: a reformatter, whose context (1 ms to make at 1080p, not to
    be shared between threads) lasts while the sizes and formats stay, and `_padded_source`'s frame."""

    def __init__(self):
        self.reformatter = VideoReformatter()
        self.source: av.VideoFrame | None = None


_THREAD = _PerThread()


def _padded_source(rgb: np.ndarray) -> av.VideoFrame:
    """This thread's RGB frame, `rgb`'s height and its width rounded up to SWS_WIDTH_MULTIPLE, holding
    `rgb` with its last column repeated to the right. Kept between calls: a frame of FFmpeg's own
    (padded lines) refilled costs 1.3 ms less at 1080p than a new one."""
    h, w = rgb.shape[:2]
    width = -(-w // SWS_WIDTH_MULTIPLE) * SWS_WIDTH_MULTIPLE
    source = _THREAD.source
    if source is None or (source.height, source.width) != (h, width):
        source = _THREAD.source = av.VideoFrame(width, h, "rgb24")
    plane = source.planes[0]
    pixels = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)[:, :width * 3].reshape(h, width, 3)
    pixels[:, :w] = rgb
    pixels[:, w:] = rgb[:, -1:]
    return source


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
    if fmt.name.startswith("gray") and frame.color_range == spaces.RANGE_LIMITED:
        return _limited_grey_to_rgb(frame, bits, out_dtype)
    if not fmt.name.startswith(("yuv", "nv", "p0", "p2", "p4", "y2", "uyv", "yuy", "yvy")):
        return frame.to_ndarray(format="rgb24" if bits <= 8 else "rgb48le")
    if not _direct_yuv(fmt):  # repack only; same matrix and range
        frame = _THREAD.reformatter.reformat(frame, format="yuv444p" if bits <= 8 else "yuv444p16le")
        bits = 8 if bits <= 8 else 16
    dtype = np.uint8 if bits <= 8 else np.uint16
    y, u, v = (_plane_array(frame.planes[i], dtype) for i in range(3))
    return yuv_to_rgb(y, u, v, bits, colour, out_dtype)


def _limited_grey_to_rgb(frame: av.VideoFrame, bits: int, out_dtype) -> np.ndarray:
    """A grey frame tagged limited range ("tv": black 16, white 235 at 8 bits) as full-scale RGB. PyAV's
    own conversion reads grey as full range whatever the tag: black came out as 16, and the output,
    tagged limited, took that 16 for a dark grey (a 16..235 ramp was written as 30..218)."""
    y = _plane_array(frame.planes[0], np.uint8 if bits <= 8 else np.uint16).astype(np.float32)
    offset, span = 16 << (bits - 8), 219 << (bits - 8)
    top = np.iinfo(out_dtype).max
    grey = np.clip(np.rint((y - offset) * (top / span)), 0, top).astype(out_dtype)
    return np.repeat(grey[:, :, None], 3, axis=2)


@functools.cache
def subsampling(pix_fmt: str) -> tuple[int, int]:
    """(vertical, horizontal) chroma subsampling of a planar YUV format."""
    frame = av.VideoFrame(16, 16, pix_fmt)
    return frame.planes[0].height // frame.planes[1].height, frame.planes[0].width // frame.planes[1].width


@functools.cache  # asked once per frame: the format lookup (and its exception) once per format
def _deep_twin(pix_fmt: str) -> str | None:
    """The 16-bit format with `pix_fmt`'s planes and subsampling (yuv420p -> yuv420p16le), or None."""
    try:
        return av.VideoFormat(f"{pix_fmt}16le").name
    except (ValueError, av.FFmpegError):
        return None


def _swscale_into(frame: av.VideoFrame, rgb: np.ndarray, colour: Colour) -> bool:
    """Fill `frame` (8-bit planar YUV) with limited-range Y'CbCr of `rgb` by swscale told the
    matrix: converted and chroma area-averaged at 16 bits, each plane rounded once to 8 bits here.
    False (nothing written) where swscale is not exact enough.

    For 8-bit RGB to limited range this is within one code value of `rgb_to_yuv` with no bias
    (every matrix, 4:2:0 and 4:4:4, measured: mean difference < 0.01 code values; swscale's own
    8-bit output rounds twice and sits 0.05 low in chroma), and 2.3x faster than converting at
    full chroma resolution and averaging in numpy, which matters: colour conversion is most of
    an encoder thread's own time at 4x sizes with a fast preset. Full range (chroma off by half a
    step), 10-bit output (off by two), sizes not a multiple of the chroma block (swscale's
    area filter then differs at the edge) and the cases SWS_SUBSAMPLING and SWS_MIN_HEIGHT leave
    out (wrong outright) stay with `rgb_to_yuv`.
    """
    name = frame.format.name
    deep_format = _deep_twin(name) if name.startswith("yuv") else None
    if rgb.dtype != np.uint8 or colour.full_range or colour.matrix not in _SWS_MATRIX or deep_format is None:
        return False
    (sy, sx), (h, w) = subsampling(name), rgb.shape[:2]
    if h % sy or w % sx or h < SWS_MIN_HEIGHT or (sy, sx) not in SWS_SUBSAMPLING:
        return False
    # the padding's chroma blocks lie right of the picture's (w is a multiple of the block), and are cut off
    deep = _THREAD.reformatter.reformat(_padded_source(rgb), format=deep_format, dst_colorspace=_SWS_MATRIX[colour.matrix],
                                   dst_color_range=spaces.RANGE_LIMITED, interpolation="AREA")
    for source, target in zip(deep.planes, frame.planes):
        # limited range tops out at 240 << 8, so adding half a step stays inside uint16
        visible = _plane_array(target, np.uint8)
        rounded = _plane_array(source, np.uint16)[:, :visible.shape[1]] + np.uint16(128)
        np.right_shift(rounded, 8, out=visible, casting="unsafe")
    return True


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """An encoder-ready frame in planar YUV `pix_fmt`, tagged with `colour`."""
    h, w = rgb.shape[:2]
    bits = bit_depth(pix_fmt)
    frame = av.VideoFrame(w, h, pix_fmt)
    if not (bits <= 8 and _swscale_into(frame, rgb, colour)):
        dtype = np.uint8 if bits <= 8 else np.uint16
        for plane, values in zip(frame.planes, rgb_to_yuv(rgb, bits, colour, subsampling(pix_fmt))):
            _plane_array(plane, dtype)[...] = values
    frame.colorspace = colour.matrix
    frame.color_range = colour.range_code
    return frame
