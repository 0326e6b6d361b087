"""`srtrt compare IMAGE -o OUT.png`: LR, bicubic, each model and HR crops side by side, labelled.

The HR image is degraded exactly as `srtrt eval` does (modcrop, PIL bicubic downscale), and
the crop is placed where the HR image has the most gradient energy, where differences
between methods show. Each model panel is labelled with the model's name and, on that crop,
its Y-PSNR, HF ratio (fine-detail energy relative to HR's: what a GAN is for) and grid
strength (a pattern at the network's sub-pixel period: what a GAN must not add). Panels
smaller than MIN_PANEL pixels are enlarged by whole-pixel repetition, so nothing is resampled.

A model only sees an LR window of the crop plus its receptive-field radius, which gives the
same pixels as running it on the whole image, for any image size (for a community model whose
tile margin is below its receptive field, as close as its tiles are). Community models are shown
at their own scale; a grey model's panel is grey (train/evaluate.py `super_resolve`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from srtrt import atomic
from srtrt.errors import CannotWrite, SrtrtError, shown
from srtrt.outputs import check_output_file, check_overwrite

from .degrade import bicubic_downscale, bicubic_upscale
from .evaluate import load_models, lr_requirements, one_scale, read_hr, super_resolve
from .metrics import grid_ratio_y, hf_ratio_y, psnr_y

MIN_PANEL = 256      # shown size of the smallest panel side, in screen pixels
FONT_SIZE = 14
LINE_HEIGHT = FONT_SIZE + 4
LABEL_HEIGHT = 2 * LINE_HEIGHT + 4
GAP = 4
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Panel:
    title: str          # what the pixels are: LR, bicubic, a model's name, HR
    detail: str         # the second label line: scores on this crop, or how the panel was made
    pixels: np.ndarray  # uint8 HxWx3 at HR size


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
    """Model output for the HR box (multiples of scale), from an LR window padded by the radius.

    The tile planner's rule for one core: the window reaches `radius` LR pixels past the core
    on every side, clipped to the image, where the network's zero padding then falls on the
    same pixels as in a whole-image run; sides grown to the model's minimum and multiple (its
    facts; `lr`'s sides are multiples of it). A model without `.radius` gets the whole image.
    """
    radius = int(getattr(model, "radius", max(lr.size)))
    step, minimum = lr_requirements([model])
    x0, y0, x1, y1 = (v // scale for v in box)
    wx0, wx1 = _window(x0, x1, radius, lr.size[0], step, minimum)
    wy0, wy1 = _window(y0, y1, radius, lr.size[1], step, minimum)
    sr = super_resolve(model, lr.crop((wx0, wy0, wx1, wy1)))
    oy, ox = (y0 - wy0) * scale, (x0 - wx0) * scale
    return sr[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]


def _window(c0: int, c1: int, radius: int, length: int, step: int, minimum: int) -> tuple[int, int]:
    """The LR window around core [c0, c1) on an axis of `length` (a multiple of `step`): `radius` more
    on each side, clipped, its start on the `step` grid (a pixel-unshuffle sees the pixels in the same
    groups as in a whole-image run), then grown to a multiple of `step` of at least `minimum`."""
    w0, w1 = max(0, c0 - radius) // step * step, min(length, c1 + radius)
    size = min(-(-max(w1 - w0, minimum) // step) * step, length)
    w0 = min(w0, length - size)
    return w0, w0 + size


def _scored(title: str, pixels: np.ndarray, hr: np.ndarray, scale: int) -> Panel:
    """A panel labelled with its Y-PSNR, HF ratio and grid strength on the crop."""
    return Panel(title, f"{psnr_y(pixels, hr, 0):.2f} dB  HF {hf_ratio_y(pixels, hr, 0):.2f}  "
                        f"grid {grid_ratio_y(pixels, scale):.2f}", pixels)


def compare_panels(path: str | Path, models, crop: int = 256) -> list[Panel]:
    """LR (nearest), bicubic, one panel per model ({label: inference view}, or one view), HR."""
    models = dict(models) if isinstance(models, dict) else {"model": models}
    scale = one_scale(models)
    hr_img = read_hr(Path(path), scale, *lr_requirements(models.values()))
    size = min(crop, *hr_img.size) // scale * scale
    if size < 2 * scale:  # the LR crop must be at least 2 pixels for bicubic and the scores
        what = f"--crop {crop}" if crop < 2 * scale else f"the image ({hr_img.size[0]}x{hr_img.size[1]})"
        raise SrtrtError(f"{what} is too small: a crop of at least {2 * scale} px is needed at x{scale}")
    hr = np.asarray(hr_img)
    x, y = detail_crop(hr, size, scale)
    box = (x, y, x + size, y + size)
    lr_img = bicubic_downscale(hr_img, scale)
    hr_crop = hr[y:y + size, x:x + size]
    lr_crop = np.asarray(lr_img.crop(tuple(v // scale for v in box))).repeat(scale, 0).repeat(scale, 1)
    bicubic_crop = np.asarray(bicubic_upscale(lr_img, scale))[y:y + size, x:x + size]
    return [
        Panel("LR", f"x{scale} nearest, {size // scale} px", lr_crop),
        _scored("bicubic", bicubic_crop, hr_crop, scale),
        *(_scored(label, model_crop(model, lr_img, box, scale), hr_crop, scale) for label, model in models.items()),
        Panel("HR", f"{size} px at ({x}, {y})", hr_crop),
    ]


def zoom_for(size: int) -> int:
    """Whole-pixel enlargement that shows a `size`-pixel panel at least MIN_PANEL pixels wide."""
    return max(1, -(-MIN_PANEL // size))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_panels(panels: list[Panel]) -> Image.Image:
    """Panels of equal size in one row, enlarged to at least MIN_PANEL pixels, each labelled above."""
    h, w = panels[0].pixels.shape[:2]
    zoom = zoom_for(min(h, w))
    h, w = h * zoom, w * zoom
    sheet = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * GAP, h + LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    for i, panel in enumerate(panels):
        x = i * (w + GAP)
        sheet.paste(Image.fromarray(panel.pixels.repeat(zoom, 0).repeat(zoom, 1)), (x, LABEL_HEIGHT))
        for line, text in enumerate((panel.title, panel.detail)):
            draw.text((x + 2, 2 + line * LINE_HEIGHT), _fit(draw, text, font, w - 4), fill=(0, 0, 0), font=font)
    return sheet


def compare_image(path: str | Path, models, crop: int = 256) -> Image.Image:
    return render_panels(compare_panels(path, models, crop))


def output_format(output: str | Path) -> str:
    """The format `-o`'s suffix names (a .jpg gets JPEG bytes, not PNG under a .jpg name): those
    `srtrt run` writes."""
    from srtrt.engine.datapath.writers import OUTPUT_FORMATS

    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise SrtrtError(f"-o needs one of {', '.join(OUTPUT_FORMATS)}, not {suffix or 'no suffix'}", output)
    return OUTPUT_FORMATS[suffix]


def save_sheet_atomic(img: Image.Image, output: str | Path) -> Path:
    """Write through srtrt.atomic: a unique temporary name, then rename; never a half-written file.
    PNG (lossless) unless the suffix names another format; JPEG and WebP at `srtrt run`'s quality."""
    from srtrt.engine.datapath.writers import JPEG_QUALITY, WEBP_QUALITY

    out = Path(output)
    image_format = output_format(out)
    quality = {"JPEG": {"quality": JPEG_QUALITY}, "WEBP": {"quality": WEBP_QUALITY}}.get(image_format, {})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_open(out, "wb") as f:
            img.save(f, format=image_format, **quality)
    except OSError as e:
        raise CannotWrite.of(e, out) from None
    return out


def default_models() -> list[str | None]:
    """Every embedded model that is installed (srresnet, and srgan once its weights ship)."""
    from srtrt import checkpoint

    return checkpoint.embedded_models() or [None]


def main(args) -> int:
    check_output_file(args.output, [args.image])
    output_format(args.output)
    check_overwrite(args.output, getattr(args, "overwrite", False))
    models = load_models(args.model or default_models(), getattr(args, "allow_noncommercial", False))
    out = save_sheet_atomic(compare_image(args.image, models, args.crop), args.output)
    print(shown(out))
    return 0
