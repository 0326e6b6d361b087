"""The video encoder: codec choice, and a thread that turns upscaled RGB frames into segment files.

Each segment is a closed, self-contained MP4 holding only the video stream (MP4 keeps both
pts and dts exactly, unlike Matroska, so segments join later without re-encoding). A segment
is written under a temporary name and renamed when its encoder is flushed, so a segment file
that exists is whole; `on_segment` then records it (the resume manifest).

Frames keep the input's timestamps: the encoder's time base is the input stream's and every
frame carries its own pts and duration, so variable frame rate survives.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import queue
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from srtrt.atomic import commit, temp_name
from srtrt.engine.video import CODECS
from srtrt.engine.video.colour import Colour
from srtrt.engine.video.hdr import WRITES_HDR, HdrMetadata
from srtrt.engine.video.planes import bit_depth, rgb_to_frame
from srtrt.engine.video.source import ffmpeg_reason, file_url
from srtrt.errors import SrtrtError

# Measured defaults (README, "Video"): constant quality, each codec's own scale.
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libsvtav1": 30, "libvpx-vp9": 31, "h264_nvenc": 21, "hevc_nvenc": 23}
DEFAULT_PRESET = {"libx264": "medium", "libx265": "fast", "libsvtav1": "8", "libvpx-vp9": None,
                  "h264_nvenc": "p5", "hevc_nvenc": "p5"}
# The --crf each codec takes: x264 and x265 (and NVENC's cq) stop at 51; x265 refuses more with its own
# lines on stderr, x264 took 52-63 without a word
CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libsvtav1": (0, 63), "libvpx-vp9": (0, 63),
              "h264_nvenc": (0, 51), "hevc_nvenc": (0, 51)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
SVT_AV1_MIN_SIDE = 32  # the SVT-AV1 in PyAV 18 never returns from its flush below ~28 pixels a side
ABORT_WAIT_S = 30     # an abort waits this long for the encoder thread to close its segment
STAND_IN_SIDE = 128  # the encoder's size where it is opened only to check it (x265 needs 64 or more)
QUEUE_FRAMES = 2  # upscaled frames waiting for the encoder (each is a full output frame)
DTS_LEAD_SECONDS = 10  # a decode time this far before its presentation time is no reordering delay
_END = object()


@dataclass(frozen=True)
class EncoderSettings:
    codec: str
    pix_fmt: str
    width: int
    height: int
    time_base: Fraction
    rate: Fraction
    colour: Colour
    options: dict = field(default_factory=dict)
    sample_aspect: Fraction | None = None  # the input's pixel shape, kept (source.sample_aspect)

    @property
    def bits(self) -> int:
        return bit_depth(self.pix_fmt)


class FramesTooSmall(SrtrtError):
    """A codec's refusal of frames under its least side; the caller, who knows the container, advises."""


SMALL_FRAME_CODECS = ("libx264", "libvpx-vp9")  # encoders with no least side of their own


def _pix_fmts(codec: str) -> set[str]:
    return {f.name for f in (av.Codec(codec, "w").video_formats or ())}


def chroma_layout(pix_fmt: str) -> str:
    """"444", "422" or "420": `pix_fmt`'s chroma resolution, by its planes rather than its name (full-range
    yuvj422p, semi-planar nv16); 4:2:0 for a format without chroma (grey, RGB) or another layout (4:1:1)."""
    fmt = av.VideoFormat(pix_fmt)
    if fmt.is_rgb or len(fmt.components) < 3:
        return "420"
    return {(16, 16): "444", (8, 16): "422"}.get((fmt.chroma_width(16), fmt.chroma_height(16)), "420")


def default_codec(container_format: str, bits: int) -> str:
    if container_format == "webm":
        return "libvpx-vp9"
    return "libx265" if bits > 8 else "libx264"


def choose_settings(codec: str, crf: int | None, preset: str | None, source_pix_fmt: str, bits: int,
                    width: int, height: int, time_base: Fraction, rate: Fraction | None, colour: Colour,
                    path, sample_aspect: Fraction | None = None, hdr: HdrMetadata | None = None) -> EncoderSettings:
    """The encoder for an output of `width` x `height`: the source's chroma layout and bit depth
    where the codec has them, else 4:2:0 of the nearest depth it has."""
    if codec not in CODECS:
        raise SrtrtError(f"unknown codec {codec!r} (use one of {', '.join(CODECS)})")
    if codec.endswith("_nvenc"):
        import torch

        if not torch.cuda.is_available():
            raise SrtrtError(f"{codec} needs an NVIDIA GPU; none is available (use libx264 or libx265)")
    least = {"libx265": 64,  # x265 4.2 corrupts memory below its 64-pixel block
             "libsvtav1": SVT_AV1_MIN_SIDE}.get(codec, 0)  # its flush never returns (160x24, 20x96)
    if min(width, height) < least:
        raise FramesTooSmall(f"{codec} cannot encode {width}x{height} frames (under {least} pixels)", path)
    available = _pix_fmts(codec)
    # the source's depth, else the deepest below it the codec has (x265: 12 and 10 bits; SVT-AV1: 10)
    depths = [f"{d}le" for d in (12, 10) if bits > 8 and (d <= bits or d == 10)] + [""]
    layout = chroma_layout(source_pix_fmt)
    odd = width % 2 or height % 2
    wanted = [f for depth in depths for f in (f"yuv{layout}p{depth}", f"yuv420p{depth}")]
    if odd:  # 4:2:0 and 4:2:2 need even sizes
        wanted = [f"yuv444p{depth}" for depth in depths]
    pix_fmt = next((f for f in wanted if f in available), None)
    if pix_fmt is None:
        raise SrtrtError(f"{codec} cannot encode a {width}x{height} frame "
                         f"({'odd sizes need 4:4:4, which it lacks' if odd else 'no suitable pixel format'})", path)
    options = {}
    crf = DEFAULT_CRF[codec] if crf is None else crf
    low, high = CRF_RANGES[codec]
    if not low <= crf <= high:
        raise SrtrtError(f"{codec} takes --crf {low}-{high}, not {crf}")
    preset = DEFAULT_PRESET[codec] if preset is None else preset
    if codec in ("libx264", "libx265") and preset not in X26X_PRESETS:
        # checked here: x264 and x265 print their own refusal on stderr, twice, beside srtrt's line
        raise SrtrtError(f"{codec} has no preset {preset!r} (use one of {', '.join(X26X_PRESETS)})")
    if codec.endswith("_nvenc"):
        options.update(rc="vbr", cq=str(crf), b="0")
    else:
        options["crf"] = str(crf)
    if codec == "libvpx-vp9":
        options.update(b="0", row_mt="1", deadline="good", **({"cpu-used": preset} if preset else {"cpu-used": "2"}))
    elif preset:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    if codec == "libsvtav1":
        options["svtav1-params"] = "enable-hdr=0"
    if hdr is not None and codec in WRITES_HDR:
        key = WRITES_HDR[codec]
        options[key] = ":".join(filter(None, [options.get(key), hdr.encoder_params(codec)]))
    return EncoderSettings(codec, pix_fmt, width, height, time_base, rate or Fraction(24), colour, options,
                           sample_aspect)


def add_video_stream(container, settings: EncoderSettings, width: int | None = None, height: int | None = None):
    """The encoder's stream in `container` (at `width` x `height` instead of the settings' for a stand-in)."""
    stream = container.add_stream(settings.codec, rate=settings.rate, options=dict(settings.options))
    stream.width, stream.height, stream.pix_fmt = width or settings.width, height or settings.height, settings.pix_fmt
    cc = stream.codec_context
    cc.time_base = settings.time_base
    cc.colorspace, cc.color_range = settings.colour.matrix, settings.colour.range_code
    cc.color_primaries, cc.color_trc = settings.colour.primaries, settings.colour.transfer
    if settings.sample_aspect:
        cc.sample_aspect_ratio = settings.sample_aspect
    return stream


@contextlib.contextmanager
def svt_errors_only():
    """SVT-AV1 prints its whole configuration at info level when an encoder opens, reading SVT_LOG
    then: errors only, while srtrt encodes; the caller's environment is as it was afterwards."""
    said = os.environ.get("SVT_LOG")
    if said is None:
        os.environ["SVT_LOG"] = "1"
    try:
        yield
    finally:
        if said is None:
            os.environ.pop("SVT_LOG", None)


def check_encoder(settings: EncoderSettings, path) -> None:
    """Open the encoder once at a small size (in Matroska, which holds every codec here), so options
    it refuses (a preset of another codec's) fail in one line before any frame is decoded."""
    try:
        with svt_errors_only(), av.open(io.BytesIO(), "w", format="matroska") as out:
            add_video_stream(out, settings, STAND_IN_SIDE, STAND_IN_SIDE)
            out.start_encoding()
    except (ValueError, av.FFmpegError) as e:
        asked = ", ".join(f"{k}={v}" for k, v in settings.options.items() if k in ("preset", "crf", "cpu-used", "cq"))
        raise SrtrtError(f"{settings.codec} refuses its settings ({asked}; {ffmpeg_reason(e)})", path) from None


def _open_segment(path: str, settings: EncoderSettings):
    container = av.open(file_url(path), "w", format="mp4")
    try:
        stream = add_video_stream(container, settings)
    except BaseException:
        container.close()
        raise
    return container, stream


class SegmentEncoder:
    """A thread encoding `put` frames into numbered segment files; `cut()` closes the current one.

    `on_segment(path, first_index, frames, end_pts)` runs on the thread after each segment is renamed into
    place. Errors surface from `put`, `cut` or `finish` in the caller's thread.
    """

    def __init__(self, settings: EncoderSettings, segment_path, on_segment, path_for_errors):
        self.settings, self._segment_path, self._on_segment = settings, segment_path, on_segment
        self._source = path_for_errors
        self._frame_ticks = max(1, round(1 / (settings.rate * settings.time_base)))  # a frame without a duration
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="srtrt-video-encode")
        self._thread.start()

    def put(self, frame) -> None:
        self._send(("frame", frame))

    def cut(self, number: int) -> None:
        """Frames from now on go into segment `number`."""
        self._send(("cut", number))

    def finish(self, stop_check=None) -> None:
        """Wait for the last segment to be closed; `stop_check` is asked while waiting (it may raise to stop)."""
        self._send(_END)
        while self._thread.is_alive():
            self._thread.join(0.1)
            if stop_check:
                stop_check()
        self._raise()

    def abort(self) -> None:
        """Stop now; the segment in progress is deleted, closed ones stay. An encoder stuck inside its
        library is left behind (the thread is a daemon) rather than waited for."""
        self._send(("abort", None), check=False)
        self._thread.join(ABORT_WAIT_S)

    def _send(self, item, check: bool = True) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.05)
                break
            except queue.Full:
                pass
        if check:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        current = None  # (container, stream, temp, number, first index, frames, last dts, end pts)
        item = None
        try:
            while (item := self._queue.get()) is not _END:
                kind, value = item
                if kind == "abort":
                    break
                if kind == "cut":
                    current = self._close(current)
                    number = value
                    continue
                if current is None:
                    temp = temp_name(self._segment_path(number))
                    container, stream = _open_segment(temp, self.settings)
                    current = [container, stream, temp, number, value.index, 0, None, None]
                self._encode(current, value)
            else:
                current = self._close(current)
        except BaseException as e:
            self._error = _one_line(e, self._source)
            # drain until the producer's last item, so it never blocks (the end itself may be what failed)
            while item is not _END and (item := self._queue.get()) is not _END and item[0] != "abort":
                pass
        finally:
            if current is not None:  # aborted or failed: the segment in progress is discarded
                with contextlib.suppress(Exception):
                    current[0].close()
                with contextlib.suppress(OSError):
                    os.unlink(current[2])

    def _encode(self, current, frame) -> None:
        container, stream = current[0], current[1]
        out = rgb_to_frame(frame.rgb, self.settings.pix_fmt, self.settings.colour)
        out.pts, out.time_base = frame.pts, self.settings.time_base
        if frame.duration:
            out.duration = frame.duration
        container.mux(_plausible_dts(stream.encode(out), current))
        current[5] += 1
        current[7] = frame.pts + (frame.duration or self._frame_ticks)  # frames arrive in presentation order

    def _close(self, current):
        if current is None:
            return None
        container, stream, temp, number, first, frames, _, end = current
        container.mux(_plausible_dts(stream.encode(), current))
        container.close()
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        final = self._segment_path(number)
        commit(temp, final)
        self._on_segment(Path(final), first, frames, end)
        return None


def _plausible_dts(packets: list, current: list) -> list:
    """Packets with a decode time the muxer takes: x265 hands a one-frame encode out with an
    uninitialised dts (-1.7e18 seen), which MP4 refuses. A dts after its pts, or more than
    DTS_LEAD_SECONDS before it, becomes that pts, or one tick after the segment's last dts
    (`current[6]`) if the pts is not later."""
    for packet in packets:
        if packet.dts is not None and packet.pts is not None:
            if not packet.pts - DTS_LEAD_SECONDS / packet.time_base <= packet.dts <= packet.pts:
                last = current[6]
                packet.dts = packet.pts if last is None or packet.pts > last else last + 1
            current[6] = packet.dts
    return packets


def _one_line(e: BaseException, source) -> BaseException:
    if isinstance(e, SrtrtError) or not isinstance(e, Exception):
        return e
    if disk_full(e):
        return SrtrtError("disk full while encoding", source)
    return SrtrtError(f"encoding failed ({ffmpeg_reason(e)})", source)


def disk_full(e: BaseException) -> bool:
    """Whether `e` is a full disk: ENOSPC, or FFmpeg's text for it (an error that does not carry the errno)."""
    return isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)
