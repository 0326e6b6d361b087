"""Choose the video encoder defaults: quality per byte and speed on real content at 4x output size.

    python bench/video_codecs.py [--frames 24]

A slow pan/zoom over ../shared/data/big/elephants (1920x1080 frames, what a 480x270 input
becomes at x4) is encoded by each candidate through srtrt's own colour conversion; printed per
codec: encode fps, kbit/s at 24 fps, Y-PSNR against the frames that went in.
"""
from __future__ import annotations

import argparse
import io
import time
from fractions import Fraction

import av
import numpy as np
import workloads
from PIL import Image

from srtrt.engine.video.colour import Colour
from srtrt.engine.video.encoder import choose_settings
from srtrt.engine.video.planes import frame_to_rgb, rgb_to_frame

CANDIDATES = [("libx264", 18, "medium"), ("libx264", 18, "faster"), ("libx264", 18, "veryfast"),
              ("libx264", 20, "veryfast"), ("libx264", 23, "medium"), ("libsvtav1", 30, "10"),
              ("libx265", 20, "fast"), ("libx265", 24, "fast"), ("libsvtav1", 30, "8"), ("libsvtav1", 35, "10"),
              ("libvpx-vp9", 31, "4")]


def pan(frames: int, size=(1920, 1080)) -> list[np.ndarray]:
    photo, _ = workloads.pan_photo()
    out = []
    for i in range(frames):
        zoom = 1.0 + 0.004 * i
        w, h = int(2400 / zoom), int(1350 / zoom)
        x, y = 300 + 6 * i, 200 + 3 * i
        out.append(np.asarray(photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)))
    return out


def y_psnr(a, b) -> float:
    w = np.array([0.2126, 0.7152, 0.0722])
    ya, yb = (x.astype(np.float64) / 255 @ w for x in (a, b))
    return float(10 * np.log10(1 / np.mean((ya - yb) ** 2)))


def measure(frames, codec, crf, preset, colour) -> tuple[float, float, float]:
    h, w = frames[0].shape[:2]
    s = choose_settings(codec, crf, preset, "yuv420p", 8, w, h, Fraction(1, 24), Fraction(24), colour, "bench")
    buffer = io.BytesIO()
    start = time.perf_counter()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream(codec, rate=24, options=dict(s.options))
        stream.width, stream.height, stream.pix_fmt = w, h, s.pix_fmt
        for i, rgb in enumerate(frames):
            f = rgb_to_frame(rgb, s.pix_fmt, colour)
            f.pts = i
            out.mux(stream.encode(f))
        out.mux(stream.encode())
    seconds = time.perf_counter() - start
    buffer.seek(0)
    with av.open(buffer) as c:
        decoded = [frame_to_rgb(f, colour) for f in c.decode(c.streams.video[0])]
    psnr = float(np.mean([y_psnr(a, b) for a, b in zip(frames, decoded)]))
    kbps = buffer.getbuffer().nbytes * 8 / 1000 / (len(frames) / 24)
    return len(frames) / seconds, kbps, psnr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    args = ap.parse_args()
    frames = pan(args.frames)
    colour = Colour(1, False, 1, 1)
    print("| codec | crf | preset | encode fps | kbit/s | Y-PSNR dB |\n|---|---|---|---|---|---|")
    for codec, crf, preset in CANDIDATES:
        fps, kbps, psnr = measure(frames, codec, crf, preset, colour)
        print(f"| {codec} | {crf} | {preset} | {fps:.1f} | {kbps:.0f} | {psnr:.2f} |", flush=True)


if __name__ == "__main__":
    main()
