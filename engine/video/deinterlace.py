"""Interlaced frames made whole before they are upscaled (FFmpeg's bwdif, one frame out per frame in).

An interlaced frame holds two fields, each every other line, captured half a frame apart: upscaled
as one picture, anything moving turns into combs four times as tall, and the fields can no
longer be separated afterwards. bwdif rebuilds each field's missing lines from its neighbours in
space and time (the previous and next frames), so the network sees whole pictures; the frame
rate, frame count and timestamps stay the input's.

Modes (options.DEINTERLACE_MODES): "auto" deinterlaces the frames the decoder flags as interlaced,
"on" every frame (for video flagged wrong), "off" none.
"""
from __future__ import annotations

import collections

import av

from srtrt.errors import SrtrtError

SMALLEST = (3, 4)  # the width and height bwdif takes at least
FIELD_ORDERS = {2: "top field first", 3: "bottom field first", 4: "top field coded first, shown second",
                5: "bottom field coded first, shown second"}


def field_order(stream, first: av.VideoFrame) -> str | None:
    """How `stream` is interlaced, in words, or None when its first frame and header say progressive."""
    said = stream.codec_context.field_order
    if isinstance(said, int) and said in FIELD_ORDERS:
        return FIELD_ORDERS[said]
    return "interlaced" if first.interlaced_frame else None


def applies(field_order: str | None, mode: str) -> bool:
    return mode == "on" or mode == "auto" and field_order is not None


def check_size(width: int, height: int, field_order: str | None, mode: str, path) -> None:
    if applies(field_order, mode) and (width < SMALLEST[0] or height < SMALLEST[1]):
        raise SrtrtError(f"{width}x{height} frames are too small to deinterlace (bwdif takes {SMALLEST[0]}x{SMALLEST[1]} "
                         "or more); --deinterlace off upscales them as they are", path)


def what_happens(field_order: str | None, mode: str) -> str:
    """The run's words for what `mode` does to a video interlaced as `field_order` (None: progressive)."""
    if mode == "on":
        return "every frame deinterlaced (bwdif, --deinterlace on)"
    if field_order is None:
        return ""
    if mode == "off":
        return f"interlaced ({field_order}) but upscaled as whole frames (--deinterlace off)"
    return f"interlaced ({field_order}): deinterlaced (bwdif)"


def deinterlaced(frames, stream, mode: str, path):
    """`frames` (decoded from `stream`, in presentation order) with their fields made whole; each
    keeps its own timestamp, duration and keyframe flag (bwdif halves the time base and delays by
    one frame, so they are carried across by order)."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    bwdif = graph.add("bwdif", f"mode=send_frame:parity=auto:deint={'all' if mode == 'on' else 'interlaced'}")
    sink = graph.add("buffersink")
    source.link_to(bwdif)
    bwdif.link_to(sink)
    waiting = collections.deque()  # (pts, duration, key) of the frames inside the filter
    try:
        graph.configure()
        for frame in _with_end(frames):
            if frame is not None:
                waiting.append((frame.pts, frame.duration, frame.key_frame))
            graph.push(frame)
            while waiting:
                try:
                    whole = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    break
                whole.pts, whole.duration, whole.key_frame = waiting.popleft()
                yield whole
    except (av.FFmpegError, ValueError) as e:
        from srtrt.engine.video.source import ffmpeg_reason  # source reads frames through this module

        raise SrtrtError(f"cannot deinterlace ({ffmpeg_reason(e)}); --deinterlace off upscales the frames as they are",
                         path) from None


def _with_end(frames):
    yield from frames
    yield None  # flushes the filter
