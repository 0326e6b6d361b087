"""`srtrt.upscale`: the Python face of `srtrt run`."""
from __future__ import annotations

from functools import lru_cache

from PIL import Image

from srtrt.engine.backends import create_backend
from srtrt.engine.datapath.imageio import from_pil, read_image
from srtrt.engine.datapath.runtime import TiledUpscaler
from srtrt.engine.datapath.pipeline import upscale_file, upscale_to_pil


@lru_cache(maxsize=4)
def _backend(backend: str, model: str | None, precision: str, device: str | None):
    return create_backend(backend, model, precision, device).backend  # built once per configuration


def upscale(image, output=None, *, model=None, backend="auto", precision="auto", tile=None, margin=None,
            batch=None, device=None, alpha="bicubic", overwrite=False, max_pixels=None):
    """Upscale a PIL image or a path. Returns a PIL image, or writes `output` and returns its Path."""
    upscaler = TiledUpscaler(_backend(backend, None if model is None else str(model), precision, device),
                             core=tile, margin=margin, batch=batch)
    if output is not None:
        if isinstance(image, Image.Image):
            raise TypeError("writing to `output` takes a path; for a PIL image call upscale(image) and save the result")
        return upscale_file(upscaler, image, output, overwrite=overwrite, max_pixels=max_pixels, alpha_mode=alpha)
    decoded = from_pil(image) if isinstance(image, Image.Image) else read_image(
        image, **({} if max_pixels is None else {"max_pixels": max_pixels or None}))
    return upscale_to_pil(upscaler, decoded, alpha)
