"""The output file: the encoded video segments joined, and every other stream copied packet for packet.

Audio and subtitle packets, attachments (fonts), stream metadata and disposition, the
container's metadata and chapters come from the input untouched; no stream but the video is
re-encoded. The output container is the input's when it can hold all of that (checked by
building the header in memory first), otherwise Matroska, which holds everything.
"""
from __future__ import annotations

import contextlib
import heapq
import io
import os
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av

from srtrt.atomic import commit, temp_name
from srtrt.engine.video.encoder import STAND_IN_SIDE, add_video_stream, disk_full
from srtrt.engine.video.source import ffmpeg_reason, file_url, open_input, video_stream
from srtrt.errors import SrtrtError

FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# read but not written: AVI stores a frame rate and frames in decode order, no timestamps, so it can
# keep neither variable frame rate nor B-frames (they play out of order)
UNWRITTEN = {".avi": "AVI keeps no timestamps"}
COPIED = ("audio", "subtitle")
# Matroska's statistics tags describe the input's encode, not the output's
_STALE_TAGS = ("DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS", "_STATISTICS_",
               "ALPHA_MODE")  # the output is opaque: WebM's VP9 alpha flag would describe data it has not


# In Matroska and WebM a pixel's shape (sample aspect) is the stream's display size, which PyAV
# cannot set: it survives there only inside a bitstream that carries it itself
SHAPE_IN_BITSTREAM = ("libx264", "libx265", "h264_nvenc", "hevc_nvenc")
KEEPS_PICTURE_STREAMS = ("mp4", "mov")  # cover art as a stream; Matroska keeps it as an attachment
_PICTURE_TYPES = {"mjpeg": ("jpg", "image/jpeg"), "png": ("png", "image/png"), "bmp": ("bmp", "image/bmp"),
                  "webp": ("webp", "image/webp"), "gif": ("gif", "image/gif")}


def copied_streams(container, video, fmt: str) -> list:
    """Streams copied packet for packet into a `fmt` file: audio and subtitles, and cover art where
    the format keeps it as a stream."""
    kept = [s for s in container.streams if s.type in COPIED and s is not video]
    return kept + (attached_pictures(container) if fmt in KEEPS_PICTURE_STREAMS else [])


def attachments(container) -> list:
    return [s for s in container.streams if s.type == "attachment"]


def attached_pictures(container) -> list:
    """Cover art: a picture FFmpeg shows as a one-packet video stream (an MP4 cover, an MKV image attachment)."""
    return [s for s in container.streams if s.type == "video" and s.disposition & av.stream.Disposition.attached_pic]


def left_out(container, video) -> str:
    """What no output keeps, in words, or "": further video streams (one is upscaled) and data streams
    other than those the output rebuilds: a timecode (MOV, from the video's tag) and an MP4's chapter
    track (from the chapters, which are copied)."""
    pictures, chapters = attached_pictures(container), False
    with contextlib.suppress(Exception):
        chapters = bool(container.chapters())
    dropped = [f"stream {s.index} ({s.type}{f' {s.codec_context.name}' if s.type == 'video' else ''})"
               for s in container.streams
               if (s.type == "video" and s is not video and s not in pictures)
               or (s.type == "data" and "timecode" not in s.metadata and not chapters)]
    return f"not kept: {', '.join(dropped)} (srtrt writes one video stream)" if dropped else ""


def fits(source, video, suffix: str, settings) -> str | None:
    """None when a `suffix` file can hold the encoder's video and every copied stream, else why not.

    Checked by writing a header in memory with the encoder itself opened (at a small size: its
    codec, profile and pixel format are what a container may refuse) beside the copied streams
    (some refusals happen only there); on a refusal, the video alone says whose it is."""
    fmt = FORMATS.get(suffix)
    if fmt is None:
        return UNWRITTEN.get(suffix, f"{suffix} is not a video container srtrt writes")
    if attachments(source) and fmt != "matroska":
        return f"{suffix} cannot hold attachments"
    if attached_pictures(source) and fmt not in ("matroska", *KEEPS_PICTURE_STREAMS):
        return f"{suffix} cannot hold cover art"
    refusal = _header_refusal(fmt, settings, source, video)
    if refusal is None:
        return None
    if _header_refusal(fmt, settings) is not None:  # the encoder opens (encoder.check_encoder): the container refuses it
        return f"{suffix} cannot hold {settings.codec}"
    return f"{suffix} cannot hold these streams ({ffmpeg_reason(refusal)})"


def _header_refusal(fmt: str, settings, source=None, video=None) -> Exception | None:
    """What writing a `fmt` file in memory raises with the encoder's stream (and `source`'s copied
    streams with their first packets, and its attachments, when given), or None. The packets and
    the file's end are written too: MP4 takes stereo PCM's header and refuses it only there."""
    try:
        with av.open(io.BytesIO(), "w", format=fmt) as out:
            add_video_stream(out, settings, STAND_IN_SIDE, STAND_IN_SIDE)
            if source is None:
                out.start_encoding()
                return None
            copied = {stream.index: _copy_stream(out, stream) for stream in copied_streams(source, video, fmt)}
            for stream in attachments(source):
                out.add_attachment(stream.metadata.get("filename", "attachment"),
                                   stream.mimetype or "application/octet-stream", stream.data)
            out.start_encoding()
            for packet in _first_packets(source, copied):
                out.mux(packet)
    except (ValueError, av.FFmpegError) as e:
        return e
    return None


def _first_packets(source, mapping: dict, most: int = 1000) -> list:
    """The first packet of each stream in `mapping` (source index -> output stream), each moved to
    its output stream and to time 0, from at most `most` packets read (a file that cannot be read
    that far gives those found); `source` is read from its start again afterwards."""
    if not mapping:
        return []
    found = {}
    try:
        for packet in source.demux([source.streams[i] for i in mapping]):
            index, most = packet.stream.index, most - 1
            if packet.size and index not in found:
                packet.pts = packet.dts = 0
                packet.stream = mapping[index]
                found[index] = packet
            if len(found) == len(mapping) or most <= 0:
                break
    except (av.FFmpegError, OSError):
        pass
    finally:
        source.seek(0)
    return list(found.values())


def _video_packets(segments: list[SegmentFile], out_stream):
    """The segments' packets in order, dts kept strictly increasing across the joins, durations
    those of the frames they show (one segment's packets are held at once: a few seconds of video)."""
    last_dts = None
    for path, start, end in segments:
        with av.open(file_url(path)) as segment:
            packets = [packet for packet in segment.demux(segment.streams.video[0]) if packet.size]
            _anchored(packets, start)
            _presentation_durations(packets, end)
            for packet in packets:
                if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                    packet.dts = last_dts + 1  # a fresh encoder's first dts may precede the last one's
                last_dts = packet.dts
                packet.stream = out_stream
                yield packet


def _anchored(packets: list, start: Fraction) -> None:
    """Each packet moved by what puts the segment's first frame at `start`: an MP4 that starts later
    than 0 says so in an edit list counted in its movie timescale (1 ms), so the times read back
    can be up to half a millisecond off the frames' own -- enough to put a segment's first frame
    before the last frame of the segment before it."""
    stamped = [packet.pts for packet in packets if packet.pts is not None]
    if not stamped:
        return
    shift = round(start / packets[0].time_base) - min(stamped)
    if shift:
        for packet in packets:
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift


def _presentation_durations(packets: list, end: Fraction | None) -> None:
    """Each packet's duration that of the frame it shows: until the next frame in presentation order,
    the last one until `end`, its input frame's end. MP4 (the segments' container) stores durations
    as decode-time steps, so with B-frames or a variable frame rate they came back on other frames
    and the output's length changed."""
    shown = sorted((packet for packet in packets if packet.pts is not None), key=lambda packet: packet.pts)
    for this, following in zip(shown, shown[1:]):
        this.duration = following.pts - this.pts
    if shown and end is not None and (ticks := round(end / shown[-1].time_base) - shown[-1].pts) > 0:
        shown[-1].duration = ticks


def _time(packet) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None else float("-inf")


def pixel_shape_note(destination: Path, codec: str, sample_aspect: Fraction | None) -> str:
    """Why `destination` cannot keep non-square pixels of `sample_aspect`, or ""."""
    if not sample_aspect or sample_aspect == 1 or codec in SHAPE_IN_BITSTREAM:
        return ""
    if FORMATS[destination.suffix.lower()] in ("mp4", "mov"):
        return ""
    return (f"pixel aspect {sample_aspect.numerator}:{sample_aspect.denominator} not kept: {destination.suffix} "
            f"stores it outside the {codec} stream, where PyAV cannot write it (.mp4 and .mov keep it)")


class SegmentFile(NamedTuple):
    path: Path
    start: Fraction        # its first frame's time, seconds (as the input has it)
    end: Fraction | None   # where its last frame ends, seconds; None if unknown


def join(source_path: Path, segments: list[SegmentFile], destination: Path, display_matrix,
         sample_aspect: Fraction | None = None) -> None:
    """Write `destination` (temporary name, then rename) from the video segments and the input's
    other streams."""
    temp = temp_name(destination)
    fmt = FORMATS[destination.suffix.lower()]
    try:
        with open_input(source_path) as source, av.open(file_url(temp), "w", format=fmt) as out, \
                av.open(file_url(segments[0].path)) as first:
            video = video_stream(source, source_path)
            out.metadata.update({k: v for k, v in source.metadata.items() if k.lower() != "encoder"})
            out_video = _copy_stream(out, first.streams.video[0])
            # the stream's frame rate: Matroska's default frame duration, and what MOV needs to keep a timecode
            rate = video.average_rate or video.guessed_rate
            if rate:
                out_video.codec_context.framerate = rate
            _copy_tags(video, out_video)
            if display_matrix is not None:
                out_video.set_display_matrix(display_matrix)
            if sample_aspect:  # MP4 reads a segment's pixel shape into the stream, not its codec parameters
                out_video.codec_context.sample_aspect_ratio = sample_aspect
            mapping = {}
            for stream in copied_streams(source, video, fmt):
                mapping[stream.index] = _copy_stream(out, stream)
                _copy_tags(stream, mapping[stream.index])
            for stream in attachments(source):
                out.add_attachment(stream.metadata.get("filename", f"attachment{stream.index}"),
                                   stream.mimetype or "application/octet-stream", stream.data)
            if fmt not in KEEPS_PICTURE_STREAMS:
                for name, mimetype, data in _pictures_as_attachments(source_path):
                    out.add_attachment(name, mimetype, data)
            with contextlib.suppress(Exception):
                chapters = source.chapters()
                if chapters:
                    out.set_chapters(chapters)
            copied = _copied_packets(source, mapping) if mapping else iter(())
            for packet in heapq.merge(_video_packets(segments, out_video), copied, key=_time):
                out.mux(packet)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        commit(temp, destination)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if disk_full(e):
            raise SrtrtError("disk full while writing the output", destination) from None
        if isinstance(e, (av.FFmpegError, ValueError, OSError)):  # OSError: the rename (a name too long)
            raise SrtrtError(f"cannot write the output: {ffmpeg_reason(e)}", destination) from None
        raise


def _pictures_as_attachments(source_path: Path) -> list[tuple[str, str, bytes]]:
    """(file name, MIME type, bytes) of each piece of cover art, for Matroska, which keeps them as
    attachments (read from a second opening: the join's demuxer must start at the beginning)."""
    found = []
    with open_input(source_path) as source:
        for stream in attached_pictures(source):
            packet = next((p for p in source.demux(stream) if p.size), None)
            if packet is None:
                continue
            source.seek(0)
            extension, mimetype = _PICTURE_TYPES.get(stream.codec_context.name, ("bin", "application/octet-stream"))
            found.append((stream.metadata.get("filename") or f"cover{len(found) or ''}.{extension}",
                          stream.metadata.get("mimetype") or mimetype, bytes(packet)))
    return found


def _copy_stream(out, stream):
    """A stream of `out` with `stream`'s codec parameters, for its packets as they are (opaque: no
    codec is opened, so a stream decoded by another library's decoder, libdav1d, copies as well)."""
    return out.add_stream_from_template(stream, opaque=True)


def _copied_packets(source, mapping: dict):
    for packet in source.demux([source.streams[i] for i in mapping]):
        if packet.size == 0:  # demuxer flush packets
            continue
        packet.stream = mapping[packet.stream.index]
        yield packet


def _copy_tags(src, dst) -> None:
    tags = {k: v for k, v in src.metadata.items() if not k.upper().startswith(_STALE_TAGS)}
    if "name" in tags and "title" not in tags:  # MP4's reader calls a stream's title "name"; every writer says "title"
        tags["title"] = tags.pop("name")
    dst.metadata.update(tags)
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        dst.disposition = src.disposition
