"""The work folder of one video: closed segment files and a manifest, so a dead run can continue.

    .clip_x4.mp4.srtrt-video/      hidden, beside the output
        manifest.json              source (path, size, mtime), the settings, closed segments
        seg-00000.mp4 ...          each a whole, independently decodable piece of the video

Segments start at the input's keyframes, so a resumed run seeks the input straight to the
first frame of the first missing segment and the decoded frames are the same as in one pass.
The manifest is rewritten atomically after each segment is renamed into place, so it never
lists a segment that is not whole; a death loses at most the segment in progress. A manifest
made for another source file or other settings is not resumed from. A run holds the folder
(flock on it) while it writes: a second run for the same output is refused, not let in to delete
the first one's segments.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from srtrt.atomic import hidden_name, write_text
from srtrt.errors import SrtrtError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MANIFEST = "manifest.json"


def work_folder(destination: Path) -> Path:
    return destination.parent / hidden_name(destination.name, ".srtrt-video")


def source_key(source: Path) -> dict:
    stat = os.stat(source)
    return {"path": str(Path(source).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class Segment:
    file: str
    first: int   # index of its first frame
    frames: int
    first_pts: int
    end_pts: int | None = None  # where its last frame ends (the input's time base); None in older manifests


@dataclass
class Work:
    folder: Path
    key: dict                  # source and settings: what the segments were made from
    segments: list[Segment] = field(default_factory=list)
    lock: int | None = None    # the folder, open and held while this run writes it
    started_over: int = 0      # closed segments a --resume found but could not take (another source or settings)

    @property
    def next_index(self) -> int:
        return self.segments[-1].first + self.segments[-1].frames if self.segments else 0

    def segment_path(self, number: int) -> Path:
        return self.folder / f"seg-{number:05d}.mp4"

    def add(self, path: Path, first: int, frames: int, first_pts: int, end_pts: int) -> None:
        self.segments.append(Segment(path.name, first, frames, first_pts, end_pts))
        self.save()

    def save(self) -> None:
        data = {"key": self.key, "segments": [vars(s) for s in self.segments]}
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
        if resume and (segments := _closed_segments(folder, key)) is not None:
            return Work(folder, key, segments, lock)
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


def _closed_segments(folder: Path, key: dict) -> list[Segment] | None:
    """The segments an earlier run of the same key closed, or None when there is nothing to resume."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        if data.get("key") == key:
            segments = [Segment(**s) for s in data.get("segments", [])]
            if all((folder / s.file).is_file() for s in segments):
                return segments
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        pass
    return None


def _segments_listed(folder: Path) -> int:
    """How many closed segments the folder's manifest lists, whatever they were made from."""
    try:
        return len(json.loads((folder / MANIFEST).read_text()).get("segments", []))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return 0


def _unwritable(e: OSError, destination: Path) -> SrtrtError:
    cause = "disk full" if e.errno == errno.ENOSPC else e.strerror or " ".join(str(e).split())
    return SrtrtError(f"cannot write to {destination.parent}: {cause}", destination)
