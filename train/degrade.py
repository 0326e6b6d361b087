"""The degradation of the SR literature: HR cropped to a multiple of the scale, LR by PIL
bicubic downscale (antialiased, a = -0.5, like MATLAB imresize behind the published numbers)."""
from __future__ import annotations

from PIL import Image


def modcrop(img: Image.Image, scale: int) -> Image.Image:
    """Crop right/bottom so both sides are multiples of `scale`."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def bicubic_downscale(hr: Image.Image, scale: int) -> Image.Image:
    w, h = hr.size
    if w % scale or h % scale:
        raise ValueError(f"HR size {w}x{h} is not a multiple of {scale}; modcrop it first")
    return hr.resize((w // scale, h // scale), Image.Resampling.BICUBIC)


def bicubic_upscale(lr: Image.Image, scale: int) -> Image.Image:
    w, h = lr.size
    return lr.resize((w * scale, h * scale), Image.Resampling.BICUBIC)
