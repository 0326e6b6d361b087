"""The work folder of one video: closed segment files and a manifest, so a dead run can continue.

    .clip_x4.mp4.srtrt-video/      hidden, beside the output
        manifest.json              source (path, size, mtime), the settings, closed segments
        seg-00000.mp4 ...          each a whole, independently decodable piece of the video

Segments start at the input's keyframes, so a resumed run seeks the input straight to the
first frame of the first missing segment and the decoded frames are the same as in one pass.
The manifest is rewritten atomically after each segment is renamed into place, so it never
lists a segment that is not whole; a death loses at most the segment in progress. A manifest
made for another source file (its path, size, time and a sample of its bytes) or other settings
is not resumed from; a segment whose size or sha256 is not what was recorded (damaged, replaced)
is made again, with every segment after it. A run holds the folder
(flock on it) while it writes: a second run for the same output is refused, not let in to delete
the first one's segments.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from srtrt.atomic import hidden_name, write_text
from srtrt.checkpoint import file_sha256
from srtrt.engine.video.pace import PACED_PRESETS
from srtrt.errors import SrtrtError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MANIFEST = "manifest.json"
SEGMENT_NAME = re.compile(r"seg-[0-9]{5}\.mp4")
SAMPLES, SAMPLE_BYTES = 16, 1 << 16


def work_folder(destination: Path) -> Path:
    return destination.parent / hidden_name(destination.name, ".srtrt-video")


def source_key(source: Path) -> dict:
    stat = os.stat(source)
    return {"path": str(Path(source).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sample_sha256": _sample_sha256(source, stat.st_size)}


def _sample_sha256(path: Path, size: int) -> str:
    """sha256 of 16 slices of 64 KiB spread over the file (all of a smaller one): another file given
    the same size and time (`touch -r`) differs in them, and a video of many GB is read in milliseconds."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLES * SAMPLE_BYTES:
            digest.update(f.read())
        else:
            for i in range(SAMPLES):
                f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


@dataclass
class Segment:
    file: str
    first: int   # index of its first frame
    frames: int
    first_pts: int
    end_pts: int | None  # where its last frame ends (the input's time base)
    size: int
    sha256: str


@dataclass
class Work:
    folder: Path
    key: dict                  # source and settings: what the segments were made from
    segments: list[Segment] = field(default_factory=list)
    lock: int | None = None    # the folder, open and held while this run writes it
    started_over: int = 0      # closed segments a --resume found but could not take (another source or settings)
    damaged: int = 0           # closed segments a --resume found changed since they were recorded, made again
    paced_preset: str | None = None  # the preset the network's pace chose for the segments (pace.py)

    @property
    def next_index(self) -> int:
        return self.segments[-1].first + self.segments[-1].frames if self.segments else 0

    def segment_path(self, number: int) -> Path:
        return self.folder / f"seg-{number:05d}.mp4"

    def add(self, path: Path, first: int, frames: int, first_pts: int, end_pts: int) -> None:
        self.segments.append(Segment(path.name, first, frames, first_pts, end_pts, path.stat().st_size,
                                     file_sha256(path)))
        self.save()

    def save(self) -> None:
        data = {"key": self.key, "segments": [vars(s) for s in self.segments], "paced_preset": self.paced_preset}
        write_text(self.folder / MANIFEST, json.dumps(data, indent=1))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let another run take the folder (after a stop, a `--resume` run)."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def start(destination: Path, key: dict, resume: bool) -> Work:
    """The work folder for `destination`, held by this run: continued when `resume` and it was made
    from the same source and settings, otherwise started afresh. A folder another run holds (two
    runs writing the same output) is one line, and that run's segments are left alone."""
    folder = work_folder(destination)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise _unwritable(e, destination) from None
    if not _take(lock):
        os.close(lock)
        raise SrtrtError("another srtrt run is writing this output now", destination)
    try:
        if resume and (found := _closed_segments(folder, key)) is not None:
            work = Work(folder, key, found[0], lock, damaged=found[1], paced_preset=found[2])
            if work.damaged:
                work.save()  # listing only the segments taken
            return work
        unusable = _segments_listed(folder) if resume else 0
        for leftover in folder.iterdir():  # emptied, not removed: the folder itself is what is held
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        work = Work(folder, key, lock=lock, started_over=unusable)
        work.save()
        return work
    except OSError as e:  # a read-only or full disk: the image's line, and nothing left behind
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)
        raise _unwritable(e, destination) from None


def _take(lock: int) -> bool:
    """An exclusive hold on the open folder, released when its descriptor closes (also when the
    process dies, so a killed run never leaves a folder no one may resume)."""
    if fcntl is None:  # no flock (Windows): runs are not kept apart
        return True
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _closed_segments(folder: Path, key: dict) -> tuple[list[Segment], int, str | None] | None:
    """(the segments an earlier run of the same key closed that are as it recorded them, how many it
    listed after the first that is not, the preset the network's pace chose for them), or None when
    there is nothing to resume."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("segments"), list):
        return None
    taken: list[Segment] = []
    for entry in data["segments"]:
        segment = _recorded_segment(entry, taken[-1].first + taken[-1].frames if taken else 0)
        if segment is None or not _as_recorded(folder / segment.file, segment):
            break
        taken.append(segment)
    preset = data.get("paced_preset")
    if key.get("paced") and taken and not any(preset in presets for presets in PACED_PRESETS.values()):
        return None  # closed segments whose preset is not recorded (a manifest edited by hand): started over
    return taken, len(data["segments"]) - len(taken), preset


def _recorded_segment(entry, first: int) -> Segment | None:
    """A manifest's entry as a Segment, or None where it is not one (a value of another type, a
    name outside the folder, frames not following on from the segment before)."""
    def number(value) -> bool:
        return type(value) is int

    if not isinstance(entry, dict) or set(entry) != {f.name for f in dataclasses.fields(Segment)}:
        return None
    segment = Segment(**entry)
    if not (isinstance(segment.file, str) and SEGMENT_NAME.fullmatch(segment.file) and segment.first == first
            and number(segment.frames) and segment.frames > 0 and number(segment.first_pts)
            and (segment.end_pts is None or number(segment.end_pts)) and number(segment.size)
            and isinstance(segment.sha256, str)):
        return None
    return segment


def _as_recorded(path: Path, segment: Segment) -> bool:
    try:
        return path.is_file() and path.stat().st_size == segment.size and file_sha256(path) == segment.sha256
    except OSError:
        return False


def _segments_listed(folder: Path) -> int:
    """How many closed segments the folder's manifest lists, whatever they were made from."""
    try:
        return len(json.loads((folder / MANIFEST).read_text()).get("segments", []))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return 0


def _unwritable(e: OSError, destination: Path) -> SrtrtError:
    cause = "disk full" if e.errno == errno.ENOSPC else e.strerror or " ".join(str(e).split())
    return SrtrtError(f"cannot write to {destination.parent}: {cause}", destination)
