"""`srtrt compare IMAGE -o OUT.png`: LR, bicubic, model and HR crops side by side, labelled.

The HR image is degraded exactly as `srtrt eval` does (modcrop, PIL bicubic downscale), and
the crop is placed where the HR image has the most gradient energy, where differences
between methods show. The model only sees an LR window of the crop plus its receptive-field
radius, which gives the same pixels as running it on the whole image, for any image size.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srtrt.errors import SrtrtError

from .degrade import bicubic_downscale, bicubic_upscale
from .evaluate import check_scale, read_hr, super_resolve
from .metrics import psnr_y

LABEL_HEIGHT = 16
GAP = 4
BACKGROUND = (255, 255, 255)


def detail_crop(hr: np.ndarray, size: int, align: int) -> tuple[int, int]:
    """Top-left (x, y), multiples of `align`, of the size x size window with the most gradient energy."""
    y = hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    energy = np.zeros_like(y)
    energy[:, 1:] += np.diff(y, axis=1) ** 2
    energy[1:, :] += np.diff(y, axis=0) ** 2
    # Integral image: every window's sum in O(1), so the search is exhaustive over aligned positions.
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = np.arange(0, hr.shape[0] - size + 1, align)
    xs = np.arange(0, hr.shape[1] - size + 1, align)
    sums = (integral[ys[:, None] + size, xs[None, :] + size] - integral[ys[:, None], xs[None, :] + size]
            - integral[ys[:, None] + size, xs[None, :]] + integral[ys[:, None], xs[None, :]])
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(xs[ix]), int(ys[iy])


def model_crop(model, lr: Image.Image, box: tuple[int, int, int, int], scale: int) -> np.ndarray:
    """Model output for the HR box (multiples of scale), from an LR window padded by the radius."""
    radius = int(getattr(model, "radius", max(lr.size)))
    x0, y0, x1, y1 = (v // scale for v in box)
    wx0, wy0 = max(0, x0 - radius), max(0, y0 - radius)
    wx1, wy1 = min(lr.size[0], x1 + radius), min(lr.size[1], y1 + radius)
    sr = super_resolve(model, lr.crop((wx0, wy0, wx1, wy1)))
    oy, ox = (y0 - wy0) * scale, (x0 - wx0) * scale
    return sr[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]


def render_panels(panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Panels of equal size in one row, each with its label above it."""
    h, w = panels[0][1].shape[:2]
    sheet = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * GAP, h + LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (label, pixels) in enumerate(panels):
        x = i * (w + GAP)
        sheet.paste(Image.fromarray(pixels), (x, LABEL_HEIGHT))
        draw.text((x + 2, 2), label, fill=(0, 0, 0))
    return sheet


def compare_image(path: str | Path, model, crop: int = 128) -> Image.Image:
    scale = check_scale(model, None)
    hr_img = read_hr(Path(path), scale)
    size = min(crop, *hr_img.size) // scale * scale
    if size < scale:
        raise SrtrtError(f"--crop {crop} is smaller than the scale x{scale}")
    hr = np.asarray(hr_img)
    x, y = detail_crop(hr, size, scale)
    box = (x, y, x + size, y + size)
    lr_img = bicubic_downscale(hr_img, scale)
    lr_box = tuple(v // scale for v in box)
    hr_crop = hr[y:y + size, x:x + size]
    lr_crop = np.asarray(lr_img.crop(lr_box).resize((size, size), Image.Resampling.NEAREST))
    bicubic_crop = np.asarray(bicubic_upscale(lr_img, scale))[y:y + size, x:x + size]
    sr_crop = model_crop(model, lr_img, box, scale)
    return render_panels([
        (f"LR (x{scale} nearest)", lr_crop),
        (f"bicubic {psnr_y(bicubic_crop, hr_crop, 0):.2f} dB", bicubic_crop),
        (f"model {psnr_y(sr_crop, hr_crop, 0):.2f} dB", sr_crop),
        ("HR", hr_crop),
    ])


def save_png_atomic(img: Image.Image, output: str | Path) -> Path:
    """Write to a temporary name beside the target, then rename: never a half-written PNG."""
    out = Path(output)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SrtrtError(f"cannot write ({e.strerror or e.__class__.__name__})", out) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def main(args) -> int:
    import srtrt

    model = srtrt.load_model(args.model)
    out = save_png_atomic(compare_image(args.image, model, args.crop), args.output)
    print(out)
    return 0
