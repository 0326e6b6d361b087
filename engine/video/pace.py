"""The encoder's preset where none is asked: the slowest that keeps pace with the network.

x264 medium takes 80-110 ms of wall time a 1080p frame on two cores (README, "Video"). Behind a
network that takes half a second a frame that is a fair price for its quality; behind one that
takes 20 ms (a GPU, a small model) it is the whole run. So the preset follows the network, timed
on frames of the video's size: where the two share the CPU's cores the encoder may take at most
ENCODER_SHARE of the run, and where the network runs on another device the encoder must keep up
with it. Of the codec's PACED_PRESETS, slowest (best per byte) first, the first within that
budget is used, else the fastest.

Each preset's speed is measured once per CPU, codec, pixel format and library version, on frames
of photo-like content panning, and the network's once per model, path, tiles and frame size, both
cached, so a machine gives one video the same preset and bytes each time; a resumed video keeps the
preset its segments were encoded with (resume.Work.paced_preset).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import time
from functools import lru_cache

import av
import numpy as np

PACED_PRESETS = {"libx264": ("medium", "faster", "veryfast", "superfast", "ultrafast"),
                 "libx265": ("fast", "faster", "veryfast", "superfast", "ultrafast")}
ENCODER_SHARE = 0.10  # of a run whose network and encoder share the CPU
SAMPLE_WIDTH, SAMPLE_HEIGHT = 960, 544  # x264 and x265 take time in proportion to pixels
# the frames of the two encodes whose difference is timed: a lookahead (x264 medium: 40 frames) holds the first
# frames back, so an encode of a dozen frames alone was mostly its start-up and flush (1.5-2x the steady cost)
SAMPLE_FEW, SAMPLE_FRAMES = 16, 64
NETWORK_LOOKS, NETWORK_SECONDS = 3, 1.0  # timed calls of the network at most, and the time that ends them sooner
PAN_STEP = 3  # pixels a sample frame moves on from the one before
PICTURE_SIDE = 1024  # the content is made (in float64) at most this size a side, and repeated beyond
_CACHE_SHA256 = hashlib.sha256(b"srtrt video encoder speeds").hexdigest()  # receptive_field.cached's file


def paced(codec: str, asked_preset: str | None) -> bool:
    """Whether the preset is chosen by the network's pace: none asked, and the codec has presets to choose among."""
    return asked_preset is None and codec in PACED_PRESETS


def with_preset(settings, preset: str):
    """`settings` (encoder.EncoderSettings) with another preset."""
    return dataclasses.replace(settings, options={**settings.options, "preset": preset})


def encoder_seconds(settings, preset: str) -> float:
    """Wall seconds this machine's encoder takes for one frame of `settings`' size at `preset`."""
    from srtrt import receptive_field
    from srtrt.hardware import cpu_digest, usable_cpus

    kind = f"encoder-speed-v2-{settings.codec}-{preset}-{settings.pix_fmt}-av{av.__version__}-{usable_cpus()}-{cpu_digest()}"
    entry = receptive_field.cached(kind, _CACHE_SHA256, lambda: {"seconds_per_megapixel": _timed(settings, preset)},
                                   _a_figure)
    return entry["seconds_per_megapixel"] * settings.width * settings.height / 1e6


def network_seconds(run_frames, group: int, height: int, width: int, bits: int, identity: str) -> float:
    """Wall seconds a frame costs when `run_frames(list of rgb)` runs `group` `height` x `width` frames of
    photo-like content at once, as a video's frames go through the runtime (run.group_size): the best of up
    to NETWORK_LOOKS timed calls (within NETWORK_SECONDS) after one untimed frame that compiles the window
    shapes. Once per `identity` (what computes: the model's files, the path and its tiles, the frame's
    size) and CPU; cached."""
    from srtrt import receptive_field
    from srtrt.hardware import cpu_digest, usable_cpus

    def measure() -> dict:
        frames = [_picture(height, width, bits > 8)] * group
        run_frames(frames[:1])
        best, spent = float("inf"), 0.0
        for _ in range(NETWORK_LOOKS):
            start = time.perf_counter()
            run_frames(frames)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent >= NETWORK_SECONDS:
                break
        return {"seconds": best / group}

    sha256 = hashlib.sha256(identity.encode()).hexdigest()
    entry = receptive_field.cached(f"network-pace-v2-{usable_cpus()}-{cpu_digest()}", sha256, measure, _seconds)
    return entry["seconds"]


def choose(settings, network_seconds: float, shares_cpu: bool, stop_check=None) -> tuple[str, str]:
    """(preset, why) for frames the network takes `network_seconds` each to compute; `stop_check` is
    asked before each preset's speed is read or measured (it may raise to stop)."""
    budget = network_seconds * (ENCODER_SHARE / (1 - ENCODER_SHARE) if shares_cpu else 1.0)
    for preset in PACED_PRESETS[settings.codec]:
        if stop_check:
            stop_check()
        seconds = encoder_seconds(settings, preset)
        if seconds <= budget:
            which = "the slowest that keeps pace with the network"
            break
    else:
        which = "the fastest, and still slower than the network"
    given = f"{ENCODER_SHARE:.0%} of a run beside it" if shares_cpu else "as long as the network"
    return preset, (f"{settings.codec} preset {preset}, {which} ({network_seconds * 1e3:.0f} ms a frame; the "
                    f"encoder is given {given}, {budget * 1e3:.0f} ms, and takes {seconds * 1e3:.0f} ms here; "
                    "--preset chooses one)")


def _timed(settings, preset: str) -> float:
    """Seconds per megapixel of one frame in the encoder's steady state (colour conversion included, as the
    encoder thread does it): two whole encodes, of SAMPLE_FEW and SAMPLE_FRAMES frames, differ by the frames
    between alone. What both pay once (opening the encoder, filling its lookahead, its flush) cancels."""
    from srtrt.engine.video.planes import bit_depth

    def encode(count: int) -> float:
        start = time.perf_counter()
        _encode(sample, frames[:count])
        return time.perf_counter() - start

    sample = dataclasses.replace(with_preset(settings, preset), width=SAMPLE_WIDTH, height=SAMPLE_HEIGHT)
    frames = _sample_frames(bit_depth(settings.pix_fmt) > 8)
    few, many = encode(SAMPLE_FEW), encode(SAMPLE_FRAMES)
    per_frame = (many - few) / (SAMPLE_FRAMES - SAMPLE_FEW) if many > few else many / SAMPLE_FRAMES  # a stall in the few
    return per_frame / (SAMPLE_WIDTH * SAMPLE_HEIGHT / 1e6)


def _encode(settings, frames) -> None:
    from srtrt.engine.video.encoder import add_video_stream, svt_errors_only
    from srtrt.engine.video.planes import rgb_to_frame

    with svt_errors_only(), av.open(io.BytesIO(), "w", format="mp4") as out:
        stream = add_video_stream(out, settings)
        for i, rgb in enumerate(frames):
            frame = rgb_to_frame(rgb, settings.pix_fmt, settings.colour)
            frame.pts, frame.time_base = i, settings.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


@lru_cache(maxsize=2)
def _sample_frames(deep: bool) -> tuple[np.ndarray, ...]:
    """SAMPLE_FRAMES frames of one picture panning PAN_STEP pixels a frame."""
    picture = _picture(SAMPLE_HEIGHT, SAMPLE_WIDTH + PAN_STEP * SAMPLE_FRAMES, deep, smooth=True)
    return tuple(np.ascontiguousarray(picture[:, i * PAN_STEP:i * PAN_STEP + SAMPLE_WIDTH]) for i in range(SAMPLE_FRAMES))


def _picture(height: int, width: int, deep: bool, smooth: bool = False) -> np.ndarray:
    """Photo-like RGB content (zoo.reference_image), 8- or 16-bit; `smooth`: made at a quarter of the size
    and enlarged, as an x4 upscale's output is smooth."""
    import torch

    from srtrt import zoo

    shrink = 4 if smooth else 1
    image = zoo.reference_image(min(-(-max(height, width) // shrink), PICTURE_SIDE), 3)
    if smooth:
        image = torch.nn.functional.interpolate(image, scale_factor=shrink, mode="bicubic").clamp(0, 1)
    top = 65535 if deep else 255
    tile = (image[0].permute(1, 2, 0).numpy() * top).round().astype(np.uint16 if deep else np.uint8)
    repeats = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)  # a big frame: the picture repeated
    return np.ascontiguousarray(np.tile(tile, repeats)[:height, :width])


def _a_figure(entry: dict) -> bool:
    value = entry.get("seconds_per_megapixel")
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _seconds(entry: dict) -> bool:
    value = entry.get("seconds")
    return isinstance(value, float) and math.isfinite(value) and value >= 0
