"""Generated test images: smooth random colour fields, so bicubic and small models behave as on
photos (high PSNR) while every pixel stays unique enough to locate crops exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blurred_grid(rng: np.random.Generator, height: int, width: int, detail: int = 8) -> np.ndarray:
    """uint8 HxWx3: a coarse random grid upscaled bicubically, plus a little noise."""
    coarse = rng.integers(30, 226, size=(max(2, height // detail), max(2, width // detail), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    field = field + rng.integers(-2, 3, size=field.shape)
    return np.clip(field, 0, 255).astype(np.uint8)


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, prefix: str = "img") -> list[Path]:
    """PNG files of the given (width, height) sizes in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{prefix}{i:02d}.png"
        Image.fromarray(blurred_grid(rng, h, w)).save(path)
        paths.append(path)
    return paths
