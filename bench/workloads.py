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


PAN_NAME = "elephants_3840x2160.png"


@lru_cache(maxsize=1)
def pan_photo() -> tuple[Image.Image, str]:
    """The 4K photo the video benchmarks pan over, and its label; a generated one where it is absent."""
    path = SHARED_BIG / PAN_NAME
    if path.is_file():
        with Image.open(path) as im:
            return im.convert("RGB"), f"{PAN_NAME} (../shared/data/big)"
    return Image.fromarray(photo_like(3840, 2160)), "generated photo-like image (../shared/data/big absent)"


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


# The varied-size folder: photos of many sizes, as a camera roll or a scraped folder holds them.
VARIED_COUNT = {"full": 120, "quick": 120, "smoke": 6}
VARIED_SIDES = (64, 320)  # LR side range, each side drawn on its own
VARIED_SOURCES = ("samples", "big")  # never the test sets (set5, set14)


def _varied_sources() -> list[tuple[Image.Image, str]]:
    found = []
    for folder in VARIED_SOURCES:
        root = shared_data(folder)
        for path in sorted(root.glob("*")) if root.is_dir() else []:
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                with Image.open(path) as im:
                    found.append((im.convert("RGB"), f"{folder}/{path.name}"))
    return found


def varied_folder(folder: Path, mode: str, seed: int = 24) -> dict:
    """Write the varied-size folder into `folder` as PNGs: each image a random crop of one of
    the ../shared/data samples/big photos, downscaled (bicubic) to a random size of 64-320 px a
    side; generated photo-like images when those are absent. Deterministic for a seed.
    Returns the workload's info (count, LR megapixels, distinct sizes, sources)."""
    rng = np.random.default_rng(seed)
    sources = _varied_sources()
    lo, hi = VARIED_SIDES if mode != "smoke" else (32, 64)
    folder.mkdir(parents=True, exist_ok=True)
    pixels, sizes = 0, set()
    for i in range(VARIED_COUNT[mode]):
        width, height = (int(v) for v in rng.integers(lo, hi + 1, 2))
        if sources:
            photo, _ = sources[i % len(sources)]
            # a crop of the target's aspect, 1-4x the target size, so every image is a downscale
            zoom = min(rng.uniform(1, 4), photo.width / width, photo.height / height)
            cw, ch = int(width * zoom), int(height * zoom)
            left, top = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
            image = photo.crop((left, top, left + cw, top + ch)).resize((width, height), Image.Resampling.BICUBIC)
        else:
            image = Image.fromarray(photo_like(width, height, seed=i))
        image.save(folder / f"varied-{i:03d}-{width}x{height}.png", compress_level=1)
        pixels += width * height
        sizes.add((width, height))
    return {"workload": "varied-folder", "images": VARIED_COUNT[mode], "lr_megapixels": round(pixels / 1e6, 4),
            "output_mp": round(pixels * 16 / 1e6, 4), "distinct_sizes": len(sizes), "lr_sides": [lo, hi],
            "input_source": ", ".join(label for _, label in sources) or "generated photo-like images"}
