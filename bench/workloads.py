"""The benchmark inputs: one photo, scaled to each workload's LR size.

"2k-output": LR 512x384 -> 2048x1536 (the old project's case). "2k-input": LR 2048x1536 ->
8192x6144. Both come from ../shared/data/big/ladybird_2048x1536.png when it is there (the
2K-output LR is its bicubic downscale, the LR a camera-sized original would give), else from a
generated photo-like image, so every case on a machine sees the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data beside the checkout, or under shared/data inside it (how a
    copy of the checkout on another machine may carry it); the first that exists."""
    candidates = [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for root in candidates:
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    return candidates[0].joinpath(*parts)


SHARED_BIG = shared_data("big")
SOURCE_NAME = "ladybird_2048x1536.png"

# (width, height) of the LR input per workload and mode; smoke runs only check code paths.
SIZES = {
    "2k-output": {"full": (512, 384), "quick": (512, 384), "smoke": (64, 48)},
    "2k-input": {"full": (2048, 1536), "quick": (2048, 1536), "smoke": (128, 96)},
    "pipeline": {"full": (2048, 1536), "quick": (1024, 768), "smoke": (128, 96)},
}


@dataclass(frozen=True)
class Workload:
    name: str
    lr: np.ndarray        # uint8 H x W x 3
    source: str           # where the pixels came from

    @property
    def width(self) -> int:
        return self.lr.shape[1]

    @property
    def height(self) -> int:
        return self.lr.shape[0]

    @property
    def output_megapixels(self) -> float:
        return self.width * self.height * 16 / 1e6  # x4 in each direction

    def info(self) -> dict:
        return {"workload": self.name, "lr_width": self.width, "lr_height": self.height,
                "output_mp": round(self.output_megapixels, 4), "input_source": self.source}


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A stand-in photo: soft colour gradients, a few sharp-edged shapes and sensor-like noise,
    so the network sees edges and texture rather than a flat field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    img = np.stack([0.5 + 0.3 * np.sin(6 * xx + 2 * c) * np.cos(4 * yy - c) for c in range(3)], -1)
    for _ in range(12):
        cy, cx = rng.uniform(0, height / max(width, height)), rng.uniform(0, width / max(width, height))
        r = rng.uniform(0.03, 0.15)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[disk] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@lru_cache(maxsize=1)
def _source() -> tuple[Image.Image | None, str]:
    path = SHARED_BIG / SOURCE_NAME
    if path.is_file():
        with Image.open(path) as im:
            return im.convert("RGB"), f"{SOURCE_NAME} (../shared/data/big)"
    return None, "generated photo-like image (../shared/data/big absent)"


def make(name: str, mode: str) -> Workload:
    width, height = SIZES[name][mode]
    source, label = _source()
    if source is None:
        return Workload(name, photo_like(width, height), label)
    if source.size != (width, height):
        source = source.resize((width, height), Image.Resampling.BICUBIC)
        label += f", bicubic-resized to {width}x{height}"
    return Workload(name, np.asarray(source).copy(), label)


def write_png(workload: Workload, folder: Path) -> Path:
    path = Path(folder) / f"{workload.name}-{workload.width}x{workload.height}.png"
    Image.fromarray(workload.lr).save(path, compress_level=1)
    return path
