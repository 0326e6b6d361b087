"""Open a video, describe its video stream, and decode its frames to RGB on a thread.

`probe` reads what the rest of the pipeline needs once (size, bit depth, colour, rotation,
time base, the header's frame count); `FrameReader` decodes in the background into
a bounded queue (a few frames, so memory does not grow with the video) and hands over RGB
frames with their own timestamps (a duplicate or backward one moved one tick past the previous
frame's, which encoders require). A decode error fails the video at the frame it happened,
never silently skipping frames.
"""
from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from srtrt.engine.video.colour import Colour, stream_colour
from srtrt.engine.video.deinterlace import applies, deinterlaced, field_order
from srtrt.engine.video.hdr import HdrMetadata, read_hdr, side_data
from srtrt.engine.video.planes import frame_to_rgb
from srtrt.errors import SrtrtError

QUEUE_FRAMES = 4  # decoded frames waiting for the network: enough to hide decode jitter
_END = object()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    bits: int
    pix_fmt: str
    colour: Colour
    time_base: Fraction
    rate: Fraction | None       # average frame rate (for the encoder's rate control and ETA)
    frames: int                 # from the container header; 0 when it does not say
    duration: float | None      # seconds from the first frame to where the header says the video ends
    duration_slack: float       # how far short the frames may end: 0 for a stream's own duration, 1 s for a container's
    start: float                # the first frame's time, seconds
    display_matrix: tuple | None  # the rotation/flip side data, 9 int32
    sample_aspect: Fraction | None = None  # a pixel's width over its height (anamorphic video); None: square or unsaid
    hdr: HdrMetadata | None = None  # HDR10 mastering display and light levels, from the first frame
    field_order: str | None = None  # how it is interlaced, in words; None: progressive
    frames_counted: bool = False  # `frames` counts every stored frame (an MP4/MOV sample table; AVI's index may not)
    riff_cut: tuple[int, int] | None = None  # an AVI shorter than its RIFF chunks say: (bytes there, bytes announced)
    alpha: bool = False           # the frames carry transparency (an alpha plane, or WebM's VP9 alpha side stream)


@dataclass
class Frame:
    index: int
    pts: int
    duration: int  # in the stream's time base; 0 when unknown
    key: bool
    rgb: np.ndarray
    moved: bool = False  # its timestamp was moved one tick after the frame before's (repeated or backward)


def file_url(path) -> str:
    """`path` as FFmpeg must be given a file: absolute, since a relative name whose start reads
    as a protocol ("10:30.mp4", "file:a.mp4") is opened as that protocol's URL instead."""
    return os.path.abspath(os.fspath(path))


def open_input(path: Path):
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would wait for a writer, deaf to SIGTERM
        raise SrtrtError("not a regular file (a pipe or a device); save the video to a file first", path)
    try:
        return av.open(file_url(path), metadata_errors="replace")
    except (av.FFmpegError, UnicodeDecodeError, OSError) as e:
        raise SrtrtError(f"cannot open as video ({ffmpeg_reason(e)})", path) from None


def ffmpeg_reason(e: BaseException) -> str:
    """An error's cause in one short line, without the file name FFmpeg's errors carry (a temporary one)."""
    return " ".join(str(getattr(e, "strerror", None) or e).split())[:160]


def video_stream(container, path: Path):
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise SrtrtError("no video stream", path)
    return streams[0]


def probe(path: Path) -> VideoInfo:
    """Facts about the video stream; decodes the first frame (for its rotation and format)."""
    with open_input(path) as container:
        stream = video_stream(container, path)
        first = next(_decoded(container, stream, path), None)
        if first is None:
            raise SrtrtError("video stream has no decodable frame", path)
        cc = stream.codec_context
        pix_fmt = first.format.name
        colour = stream_colour(first.colorspace or cc.colorspace, first.color_range or cc.color_range,
                               cc.color_primaries, cc.color_trc, first.height, pix_fmt)
        display = None
        for side in side_data(first):
            if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
                display = tuple(np.frombuffer(bytes(side), "<i4").tolist())
        start = float((first.pts or 0) * stream.time_base)
        ends, slack = _announced_end(container, stream)
        duration = None if ends is None else max(ends - start, 0.0)
        return VideoInfo(first.width, first.height, max(c.bits for c in first.format.components), pix_fmt, colour,
                         stream.time_base, stream.average_rate or stream.guessed_rate, stream.frames or 0, duration,
                         slack, start, display, sample_aspect(stream), read_hdr(first), field_order(stream, first),
                         frames_counted="mp4" in container.format.name.split(","),
                         riff_cut=riff_cut(path) if "avi" in container.format.name.split(",") else None,
                         alpha=any(c.is_alpha for c in first.format.components)
                         or {k.lower(): v for k, v in stream.metadata.items()}.get("alpha_mode") == "1")


def riff_cut(path: Path) -> tuple[int, int] | None:
    """(bytes in the file, bytes its RIFF chunks announce) when an AVI ends inside one of them, else
    None. FFmpeg re-estimates a cut AVI's duration from the data left and its frame count may hold
    dropped frames, so neither shows the cut; the RIFF sizes (one chunk, or AVIX chunks after it
    past 1 GB) do. A writer that never filled a size in (0) announces nothing."""
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as file:
        while offset + 8 <= size:
            file.seek(offset)
            head = file.read(8)
            if head[:4] != b"RIFF":
                return None
            length = int.from_bytes(head[4:8], "little")
            if length and offset + 8 + length > size:
                return size, offset + 8 + length
            if not length:
                return None
            offset += 8 + length + (length & 1)
    return None


def sample_aspect(stream) -> Fraction | None:
    """The shape of `stream`'s pixels (a DVD's 720x480 shows 16:9 through 32:27-wide pixels): the
    container's word first, then the bitstream's, as FFmpeg's players take it. An upscale by the same
    factor in both directions keeps it."""
    for said in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if said and said > 0:
            return Fraction(said)
    return None


def _announced_end(container, stream) -> tuple[float | None, float]:
    """(where the header says the video ends, in seconds, or None; how far short the frames may end).

    The stream's own duration counts from the stream's start, which may precede its first decodable
    frame (a file cut before a keyframe). FFmpeg's Matroska tag is where the stream ends. The
    container's duration is its longest stream's: it stands for the video's only when no other
    stream reaches it (audio that runs on past the video is no sign of a cut file)."""
    if stream.duration:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base), 0.0
    if (tagged := _tagged_duration(stream)) is not None:
        return tagged, 0.0
    if not container.duration:
        return None, 0.0
    ends, slack = ((container.start_time or 0) + container.duration) / 1e6, 1.0
    if _another_stream_reaches(container, stream, ends - slack):
        return None, 0.0
    return ends, slack


def _another_stream_reaches(container, video, seconds: float) -> bool:
    """Whether a stream other than `video` has a packet ending at `seconds` or later (read from a
    few seconds before it: a seek, not a pass over the file)."""
    others = [s for s in container.streams if s is not video and s.type in ("audio", "subtitle", "video")]
    if not others:
        return False
    try:
        container.seek(max(0, int((seconds - 5) * 1e6)), backward=True, any_frame=True)
        for packet in container.demux(others):
            if packet.pts is not None and packet.time_base and \
                    float((packet.pts + (packet.duration or 0)) * packet.time_base) >= seconds:
                return True
    except (av.FFmpegError, ValueError, OSError):
        pass  # unreadable near its end: let the frames decide
    return False


def _tagged_duration(stream) -> float | None:
    """Matroska's per-stream DURATION tag (HH:MM:SS.nnnnnnnnn), written by FFmpeg and mkvmerge."""
    try:
        hours, minutes, seconds = stream.metadata.get("DURATION", "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _decoded(container, stream, path: Path, start_pts: int | None = None):
    """Frames of `stream` in presentation order; from the keyframe at `start_pts` when given.

    AVI stores frames in decode order and no presentation times: its demuxer labels each packet
    with its decode slot, so reordered (B-) frames come out carrying their neighbours' times. The
    slots are the frames' times in order, so the n-th frame out gets the n-th packet's slot."""
    stream.thread_type = "AUTO"  # frame threads: several times faster than the default slice threads
    if start_pts is not None:
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
    slots = collections.deque() if container.format.name == "avi" else None
    index = -1
    try:
        for packet in container.demux(stream):
            if slots is not None and packet.size and packet.dts is not None:
                slots.append(packet.dts)
            for frame in packet.decode():
                index += 1
                if slots:
                    frame.pts = slots.popleft()
                yield frame
    except av.FFmpegError as e:
        raise SrtrtError(f"undecodable video after frame {index + 1} ({ffmpeg_reason(e)})", path) from None


class FrameReader:
    """Decodes `path` on a thread into a bounded queue of RGB `Frame`s; iterate it, then `close()`.

    `first_index`/`start_pts` resume at a keyframe whose timestamp was not moved: every frame before
    it has an earlier timestamp, so the frames from the seek's keyframe until the first one at or
    after `start_pts` are decoded but not handed over, and every frame from it on is (a later one
    with a backward timestamp included).
    """

    def __init__(self, path: Path, info: VideoInfo, first_index: int = 0, start_pts: int | None = None,
                 deinterlace: str = "off"):
        self.path, self.info, self._deinterlace = path, info, deinterlace
        self._first_index, self._start_pts = first_index, start_pts
        self.failed = False  # the decoder raised (as opposed to the consumer failing)
        self.nudged = 0  # frames whose timestamp was moved to keep them strictly increasing
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="srtrt-video-decode")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self) -> None:
        index, last_pts, skipping = self._first_index - 1, None, self._start_pts is not None
        try:
            with open_input(self.path) as container:
                stream = video_stream(container, self.path)
                whole = applies(self.info.field_order, self._deinterlace)
                # a resumed run deinterlaces its first frame with the frame before it, as the first run did:
                # decoding starts at the keyframe before that frame (the frames up to it are not handed over)
                seek = self._start_pts - 1 if whole and self._start_pts is not None else self._start_pts
                frames = _decoded(container, stream, self.path, seek)
                if whole:
                    frames = deinterlaced(frames, stream, self._deinterlace, self.path)
                for frame in frames:
                    if skipping and frame.pts is not None and frame.pts < self._start_pts:
                        continue
                    skipping = False
                    index += 1
                    self._check(frame, index)
                    pts, moved = frame.pts, False
                    if last_pts is not None and pts <= last_pts:  # encoders refuse a repeated or backward timestamp
                        pts, moved, self.nudged = last_pts + 1, True, self.nudged + 1
                    last_pts = pts
                    rgb = frame_to_rgb(frame, self.info.colour)
                    if not self._put(Frame(index, pts, frame.duration or 0, bool(frame.key_frame), rgb, moved)):
                        return
        except SrtrtError as e:
            self._put(e)
        except Exception as e:  # a bug or an exotic format: still one line, naming the frame
            self._put(SrtrtError(f"cannot decode frame {index + 1} ({ffmpeg_reason(e)})", self.path))
        self._put(_END)

    def _check(self, frame, index: int) -> None:
        info = self.info
        if (frame.width, frame.height) != (info.width, info.height):
            raise SrtrtError(f"frame {index} changes size to {frame.width}x{frame.height} "
                             f"(from {info.width}x{info.height}); not supported", self.path)
        if frame.pts is None:
            raise SrtrtError(f"frame {index} has no timestamp", self.path)

    def __iter__(self):
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                self.failed = True
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()
