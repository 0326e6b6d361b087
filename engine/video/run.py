"""One video through the image runtime: decode thread -> TiledUpscaler per group of frames -> encoder thread -> join.

    FrameReader (thread)  RGB frames of the input, with their pts, a few at a time
    this thread           groups of consecutive frames through the same TiledUpscaler as an image
                          (so a frame's output equals upscaling that decoded frame as an image,
                          but for the roundings a backend's batch size may change); a group holds
                          as many whole frames as one backend batch has windows for, so frames
                          smaller than the batch still fill it, and at least a few windows, so
                          the runtime's stages overlap across small frames (`group_size`); each
                          frame goes on to the encoder as soon as it is done
    SegmentEncoder        RGB -> YUV (the input's matrix and range), encode, closed segments
    join                  segments + the input's other streams -> the output (temp name, rename)

A new segment starts at an input keyframe once the current one holds `SEGMENT_SECONDS`; the
work folder (`resume`) lists the closed ones, so `resume=True` continues a run that died from
the first missing segment. Without it, a stopped or failed run leaves nothing under the output
name; the work folder is kept after a stop (for --resume) and removed after a failure.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from srtrt.checkpoint import model_files
from srtrt.engine.batch.files import INPUT_ITSELF, writes_over
from srtrt.engine.datapath import imageio
from srtrt.engine.datapath.runtime import Band, Planes
from srtrt.engine.video import pace, remux, resume
from srtrt.engine.video.deinterlace import check_size, what_happens
from srtrt.engine.video.encoder import (
    SMALL_FRAME_CODECS,
    EncoderSettings,
    FramesTooSmall,
    check_encoder,
    choose_settings,
    default_codec,
    svt_errors_only,
)
from srtrt.engine.video.hdr import WRITES_HDR
from srtrt.engine.video.source import FrameReader, VideoInfo, open_input, probe, video_stream
from srtrt.errors import SrtrtError, shown
from srtrt.outputs import check_overwrite

SEGMENT_SECONDS = 2.0  # at most this much work (plus one GOP) is lost when a run dies
MAX_GROUP_FRAMES = 8  # frames through one runtime call at most: their inputs are all held at once
CALL_WINDOWS = 8  # windows one runtime call gets at least (in whole frames), so its stages overlap across frames


@dataclass
class VideoResult:
    destination: Path
    frames: int
    width: int   # input frame size
    height: int
    seconds: float
    note: str = ""  # e.g. the container changed
    resumed: int = 0  # frames a stopped run had done (--resume): not part of this run's fps

    def summary(self, source: Path) -> str:
        size = self.destination.stat().st_size
        written = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"  # a short clip is no "0.0 MB"
        now = self.frames - self.resumed
        rate = f"{now / max(self.seconds, 1e-9):.2f} fps" if now else "every one done by the stopped run"
        return (f"{shown(source)} -> {shown(self.destination)} ({self.frames} frame{'s' * (self.frames != 1)}, {rate}, "
                f"{written})" + (f"; {self.note}" if self.note else ""))


def output_container(source: Path, destination: Path, settings) -> tuple[Path, str]:
    """(destination, note): the requested container when it holds every stream, else .mkv, else the
    input's own (MP4's mov_text subtitles go nowhere else); the note says why it changed and which
    streams no output keeps."""
    with open_input(source) as container:
        video = video_stream(container, source)
        left_out = remux.left_out(container, video)
        why = remux.fits(container, video, destination.suffix.lower(), settings)
        if why is None:
            return destination, left_out
        for suffix in dict.fromkeys([".mkv", source.suffix.lower()]):
            if suffix != destination.suffix.lower() and remux.fits(container, video, suffix, settings) is None:
                fallback = destination.with_suffix(suffix)
                return fallback, "; ".join(filter(None, [f"{why}: written as {fallback.name}", left_out]))
        raise SrtrtError(f"no container holds {settings.codec} with this file's streams ({why})", source)


@dataclass(frozen=True)
class VideoPlan:
    info: VideoInfo
    settings: EncoderSettings
    destination: Path  # the requested file, or its .mkv twin when its container cannot hold the streams
    note: str          # why the container changed, or ""
    losses: tuple[str, ...]  # what of the input the output cannot keep, and why (bit depth, pixel shape, HDR, alpha)


def _written_as(source: Path, destination: Path, settings_for) -> Path | None:
    """The file the video `settings_for()` makes is written to with `source`'s streams: `destination`,
    or the container output_container falls back to; None where the encoder refuses the frames
    itself or no container holds the streams."""
    try:
        settings = settings_for()
        check_encoder(settings, source)
        return output_container(source, destination, settings)[0]
    except SrtrtError:
        return None


def _small_frame_advice(source: Path, destination: Path, settings_for) -> str:
    """What to ask for where the codec asked for refuses small frames: the codecs that keep the
    container asked for (an .mkv no one asked for is none), else the one that takes them and the
    file it would be written as."""
    written = {codec: _written_as(source, destination, partial(settings_for, codec)) for codec in SMALL_FRAME_CODECS}
    held = [codec for codec, path in written.items() if path == destination]
    if held:
        return f"use --codec {' or '.join(held)}"
    for codec, path in written.items():
        if path is not None:
            kept_out = f"no codec keeps {destination.suffix} with this file's streams"
            if writes_over(path, source):  # as advised, the run would refuse to write over its input
                return f"use --codec {codec} and another -o (it is written as {path.name}, the input itself: {kept_out})"
            return f"use --codec {codec} (written as {path.suffix}: {kept_out})"
    return f"no codec srtrt writes holds these frames with this file's streams in {destination.suffix}"


def plan_video(source: Path, destination: Path, options, scale: int) -> VideoPlan:
    """What `source` becomes with these options: its encoder settings and the file it is written to.
    Deterministic, so a batch plans every name before any work and the run writes the same one."""
    info = probe(source)
    imageio.check_size((info.width, info.height), options.decode_limit.get("max_pixels", imageio.DEFAULT_MAX_PIXELS),
                       source, frames=True)
    check_size(info.width, info.height, info.field_order, options.deinterlace, source)
    fmt = remux.FORMATS.get(destination.suffix.lower(), "matroska")
    codec = options.codec or default_codec(fmt, info.bits)

    def settings_for(codec: str, crf: int | None = None, preset: str | None = None) -> EncoderSettings:
        return choose_settings(codec, crf, preset, info.pix_fmt, info.bits, info.width * scale, info.height * scale,
                               info.time_base, info.rate, info.colour, source, info.sample_aspect, info.hdr)

    try:
        settings = settings_for(codec, options.crf, options.preset)
    except FramesTooSmall as small:
        raise SrtrtError(f"{small.cause}; {_small_frame_advice(source, destination, settings_for)}", source) from None
    check_encoder(settings, source)
    destination, note = output_container(source, destination, settings)
    losses = (f"{info.bits}-bit input written as {settings.bits}-bit ({codec} here has no {info.bits}-bit format)"
              if settings.bits < info.bits else "",
              remux.pixel_shape_note(destination, codec, info.sample_aspect),
              f"HDR mastering metadata not kept (PyAV cannot pass it to {codec})"
              if info.hdr is not None and codec not in WRITES_HDR else "",
              "transparency not kept (video outputs are opaque)" if info.alpha else "")
    return VideoPlan(info, settings, destination, note, tuple(filter(None, losses)))


def settled_destination(source: Path, destination: Path, options, scale: int) -> tuple[Path, str]:
    """(the file `source` is written to, why it is not `destination` or ""): a batch's plan, before any work."""
    plan = plan_video(source, destination, options, scale)
    return plan.destination, plan.note


def _computed_by(backend, options) -> tuple:
    """What a frame's values depend on besides the model's files: the backend, its precision and device.
    Not the name --model gave: the files say which model it is (`./m.pth`, `m.pth` and its absolute
    path are one file, and a resume by another of them started over)."""
    return (options.allow_noncommercial, backend.name, backend.precision, str(backend.device).split(":")[0])


def upscale_video(runner, source: Path, destination: Path, on_frame=None, on_total=None,
                  stop_check=None, asked: Path | None = None) -> VideoResult:
    """Upscale every frame of `source` into `destination` (or its .mkv twin; see the result) with a
    `FileRunner`'s backend, options and out-of-memory fallback. `asked`: the name a batch settled
    `destination` from (files.Job.asked): planned from it, the codec stays the one chosen for its
    container (`-o x.webm` of an input with AAC was written as x.mkv in H.264, not VP9)."""
    with svt_errors_only():
        return _upscale_video(runner, source, destination, on_frame, on_total, stop_check, asked)


def _upscale_video(runner, source: Path, destination: Path, on_frame, on_total, stop_check,
                   asked: Path | None) -> VideoResult:
    start = time.perf_counter()
    options = runner.options
    s = runner.backend.scale
    plan = plan_video(source, asked or destination, options, s)
    info, settings, destination = plan.info, plan.settings, plan.destination
    moved = "" if asked else plan.note  # a batch that settled the name has said why already
    note = "; ".join(filter(None, [moved, *plan.losses, what_happens(info.field_order, options.deinterlace)]))
    upscaler = runner.upscaler_for(info.height, info.width, info.bits)
    tiles = upscaler.plan(info.height, info.width, frames=True)  # too small for the model: one line now, not per frame
    if writes_over(destination, source):
        raise SrtrtError(INPUT_ITSELF + (f" ({plan.note})" if plan.note else ""), destination)
    check_overwrite(destination, options.overwrite)
    # the model's files by size and time as well as its name: another model at the same path is not resumed;
    # the path that computes, not the options asked for (`auto`, a device left unnamed, the folder's shape
    # class), so a run resumed by another door (--ray or not) that computes alike takes the segments over
    key = {"source": resume.source_key(source), "settings": repr(settings),
           "model": repr(_computed_by(upscaler.backend, options)),
           "model_files": [resume.source_key(p) for p in model_files(options.model) if p.is_file()], "scale": s,
           "deinterlace": options.deinterlace,
           # the tiles too: under a margin below the receptive field (--margin) they are where the values change
           "tiles": [upscaler.margin, *tiles.window_shape, len(tiles)],
           "paced": pace.paced(settings.codec, options.preset)}  # the preset is the network's pace's (pace.py)
    work = resume.start(destination, key, options.resume)
    resumed = work.next_index
    if work.started_over:
        note = "; ".join(filter(None, [note, f"--resume: the earlier run's {work.started_over} closed segments came from "
                                              "another source, model or settings (or an older srtrt), so it started over"]))
    if work.damaged:
        after = f"it and the {work.damaged - 1} after it were" if work.damaged > 1 else "it was"
        note = "; ".join(filter(None, [note, "--resume: a closed segment had changed since it was written "
                                              f"(damaged or replaced), so {after} made again"]))
    if on_total:
        on_total(info.frames or 0, work.next_index)
    try:
        if key["paced"]:
            # what the network's pace depends on: what computes, and the frame
            identity = {k: key[k] for k in ("model", "model_files", "scale", "tiles")} | {"frame": [info.width, info.height,
                                                                                                   info.bits]}
            settings, paced_why = _paced(runner, info, settings, work, repr(identity), stop_check)
            note = "; ".join(filter(None, [note, paced_why]))
        frames, bad, end, nudged = _encode_all(runner, source, info, settings, work, on_frame, stop_check)
        if not bad:
            bad = _truncated(info, frames, end)
            if bad and not options.stop_at_bad_frame:
                raise SrtrtError(bad, source)
        if not work.segments:
            raise SrtrtError("no frame was decoded", source)
        segments = [remux.SegmentFile(work.folder / seg.file, seg.first_pts * info.time_base,
                                      None if seg.end_pts is None else seg.end_pts * info.time_base)
                    for seg in work.segments]
        remux.join(source, segments, destination, info.display_matrix, info.sample_aspect)
    except Exception:
        work.remove()  # nothing to resume from a bad file; a full disk gets its space back
        raise
    except BaseException:  # a stop keeps the work folder for --resume, free for the next run to take
        work.release()
        raise
    work.remove()
    if nudged:
        moved = f"{nudged} frame{'s' if nudged > 1 else ''} with a repeated or backward timestamp"
        note = "; ".join(filter(None, [note, f"{moved} moved one tick after the frame before"]))
    if bad:
        note = "; ".join(filter(None, [note, f"stopped at the last good frame, {frames} frames kept ({bad})"]))
    return VideoResult(destination, frames, info.width, info.height, time.perf_counter() - start, note, resumed)


def _truncated(info, frames: int, end: float | None) -> str:
    """Why the decoded frames fall short of what the header announces, or "".

    Time first: a header's frame count may include frames that were never stored (AVI's empty
    index entries for dropped frames), while frames that reach the announced end are all there. An
    AVI ending inside its RIFF chunks is cut whatever its times say (even one that lost only the
    index at its end is an unfinished file: --stop-at-bad-frame keeps what it holds)."""
    if info.riff_cut:
        there, announced = info.riff_cut
        return (f"ends after frame {frames}: the file holds {there:,} of the {announced:,} bytes its RIFF header "
                "announces (truncated?)")
    if end is not None and info.duration:
        played, period = end - info.start, 1 / float(info.rate or 24)
        if played < info.duration - info.duration_slack - 2 * period:
            return f"ends after frame {frames}, at {played:.2f} s of the {info.duration:.2f} s its header announces (truncated?)"
        # times leave two frames' slack, and a cut mid-file loses B-frames from the middle while the shown ones
        # still reach the end: an MP4/MOV header's rate (its frame count over its length) counts what the span
        # from the first decodable frame to the announced end holds (a file cut mid-GOP starts later)
        expected = (info.duration - info.duration_slack) * float(info.rate or 0)
        if info.frames_counted and frames < expected - 1.5:
            return (f"decodes to {frames} frames where its header announces {round(expected)} over "
                    f"{info.duration:.2f} s (truncated?)")
        return ""
    if info.frames and frames < info.frames:
        return f"ends after frame {frames} of the {info.frames} its header announces (truncated?)"
    return ""


def _paced(runner, info, settings, work, pace_key: str, stop_check) -> tuple[EncoderSettings, str]:
    """(settings, how their preset was chosen) where no preset was asked (pace.py): the closed segments'
    preset for a resumed run, so the joined stream is one encoder's; else the network's pace's."""
    if work.segments and work.paced_preset:
        return (pace.with_preset(settings, work.paced_preset),
                f"{settings.codec} preset {work.paced_preset}, as the resumed segments were encoded")
    on_tile = (lambda n: stop_check()) if stop_check else None
    group = group_size(runner.upscaler_for(info.height, info.width, info.bits), info.height, info.width)
    seconds = pace.network_seconds(lambda rgbs: runner.stream_frames(rgbs, lambda _: None, on_tile, info.bits), group,
                                   info.height, info.width, info.bits, pace_key)
    preset, why = pace.choose(settings, seconds, str(runner.backend.device).startswith("cpu"), stop_check)
    work.paced_preset = preset
    work.save()
    return pace.with_preset(settings, preset), why


def _encode_all(runner, source, info, settings, work, on_frame, stop_check) -> tuple[int, str, float | None, int]:
    """Decode, upscale and encode the frames from the first missing segment on.

    Returns (frames in the output, "" or why decoding stopped early with --stop-at-bad-frame,
    the end time of the last frame in seconds or None if no frame was left to do, the number
    of timestamps moved to keep them increasing).
    """
    from srtrt.engine.video.encoder import SegmentEncoder

    done = work.next_index
    first_pts: dict[int, int] = {}  # first frame index of a segment in progress -> its pts
    encoder = SegmentEncoder(settings, work.segment_path,
                             lambda path, first, count, end: work.add(path, first, count, first_pts.pop(first), end), source)
    # resume: seek to the last closed segment's keyframe, decode on and skip the frames already done
    last = work.segments[-1] if work.segments else None
    reader = FrameReader(source, info, first_index=last.first if last else 0, start_pts=last.first_pts if last else None,
                         deinterlace=runner.options.deinterlace)
    segment_start, number, count, bad, end = None, len(work.segments), done, "", None
    group: list = []  # decoded frames of the current segment waiting to be upscaled together
    sizes = GroupSizes(info.height, info.width)
    on_tile = (lambda n: stop_check()) if stop_check else None

    def flush() -> None:
        """Upscale the waiting frames, each put to the encoder as soon as it is done, in order."""
        waiting = iter(group)  # stream_frames returns before the group is cleared

        def deliver(rgb: np.ndarray) -> None:  # on the runtime's encoder thread
            nonlocal count, end
            frame = next(waiting)
            frame.rgb = rgb
            encoder.put(frame)
            count = frame.index + 1
            period = frame.duration * info.time_base if frame.duration else 1 / (info.rate or 24)
            end = float(frame.pts * info.time_base + period)
            if on_frame:
                on_frame(1)

        if group:
            runner.stream_frames([f.rgb for f in group], deliver, on_tile, info.bits)
        group.clear()

    try:
        try:
            for frame in reader:
                if frame.index < done:
                    continue
                seconds = float(frame.pts * info.time_base)
                # a resumed run finds a segment's first frame by its timestamp: never one that was moved
                if segment_start is None or (frame.key and not frame.moved and seconds - segment_start >= SEGMENT_SECONDS):
                    flush()  # a group never spans a cut: its frames belong to the segment before
                    encoder.cut(number)
                    first_pts[frame.index] = frame.pts
                    number, segment_start = number + 1, seconds
                group.append(frame)
                # the runner's upscaler may have stepped down after running out of memory: asked each frame,
                # planned once per upscaler
                if len(group) >= sizes(runner.upscaler_for(info.height, info.width, info.bits)):
                    flush()
            flush()
        except SrtrtError as e:
            if not (runner.options.stop_at_bad_frame and reader.failed):
                raise
            bad = str(e).removeprefix(f"{e.path}: ")
            flush()  # the good frames decoded before the bad one are kept
        encoder.finish(stop_check)
    except BaseException:
        encoder.abort()
        raise
    finally:
        reader.close()
    return count, bad, end, reader.nudged


def group_size(upscaler, height: int, width: int) -> int:
    """How many whole HxW frames go through one runtime call: as many as one backend batch has
    windows for, and enough for CALL_WINDOWS windows, so that small frames (one window each) do
    not pay the runtime's start and drain per frame but overlap one frame's copies and encoding
    with the next one's network (at least 1, at most MAX_GROUP_FRAMES)."""
    windows = len(upscaler.plan(height, width))
    return max(1, min(MAX_GROUP_FRAMES, max(upscaler.batch // windows, -(-CALL_WINDOWS // windows))))


class GroupSizes:
    """`group_size` of one frame size for the runner's current upscaler, planned once per upscaler
    and batch rather than once per frame."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self._upscaler, self._batch, self._size = None, None, 0

    def __call__(self, upscaler) -> int:
        # the upscaler itself is kept, not its id(): a freed one's id may come back for its successor
        if upscaler is not self._upscaler or upscaler.batch != self._batch:
            self._size = group_size(upscaler, self.height, self.width)
            self._upscaler, self._batch = upscaler, upscaler.batch
        return self._size


def frames_through(upscaler, rgbs: list[np.ndarray], deliver, on_tile=None) -> None:
    """RGB frames of one shape through the runtime together (their windows share batches), each
    exactly as an image's colour plane; `deliver(rgb)` gets each output frame in order as soon as
    its last band is done, on the runtime's encoder thread, so the frames before it are encoded
    while the later ones compute and outputs are never all held at once."""
    s = upscaler.backend.scale
    height, width = rgbs[0].shape[0] * s, rgbs[0].shape[1] * s
    current: dict[int, np.ndarray] = {}  # the one frame whose bands are arriving

    def keep(index: int, band: Band) -> None:
        rows = band.colour.shape[0]
        if band.y0 == 0 and rows == height:  # one band is the frame (a band is never reused)
            deliver(band.colour)
            return
        out = current.setdefault(index, np.empty((height, width, 3), rgbs[0].dtype))
        out[band.y0:band.y0 + rows] = band.colour
        if band.y0 + rows == height:
            deliver(current.pop(index))

    upscaler.run_many([Planes(rgb) for rgb in rgbs], keep, rgbs[0].dtype, on_tile)


def frame_through(upscaler, rgb: np.ndarray, on_tile=None) -> np.ndarray:
    """One RGB frame through the runtime, exactly as an image's colour plane."""
    outs: list[np.ndarray] = []
    frames_through(upscaler, [rgb], outs.append, on_tile)
    return outs[0]
