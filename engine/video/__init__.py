"""Video in, video out: frames decoded on a thread, upscaled by the image runtime, encoded on a thread.

`run.upscale_video` is the entry point (through `FileRunner`, so `srtrt run`, `--ray` and
`srtrt.upscale` all take videos); this module only names what counts as a video, without
importing PyAV, so image-only runs never load it.
"""
from __future__ import annotations

from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi"}
WRITTEN_SUFFIXES = VIDEO_SUFFIXES - {".avi"}  # the containers written as named (remux.FORMATS); an .avi becomes .mkv
CODECS = ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "h264_nvenc", "hevc_nvenc")  # what --codec takes


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES
