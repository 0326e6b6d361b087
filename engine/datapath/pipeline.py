"""One image through the runtime: decoded planes in, a streaming writer (or an array) out.

Colour always goes through the network, the colour under fully transparent pixels filled from
the visible ones first (transparency.py). Alpha is upscaled with bicubic by default, band by
band from an LR strip with a few rows of context (equal to resizing the whole alpha plane),
or through the network with `alpha="model"`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from srtrt.engine.datapath.imageio import DecodedImage, read_image
from srtrt.engine.datapath.runtime import Band, Planes, TiledUpscaler
from srtrt.engine.datapath.transparency import fill_hidden_colour
from srtrt.engine.datapath.writers import check_output, open_writer

WRITE_SLICE_BYTES = 4 * 2**20  # write_upscaled checks for a stop between slices of about this size
BICUBIC_CONTEXT = 4  # LR rows; PIL's bicubic reads 2 source pixels each side when enlarging


def bicubic_rows(plane: np.ndarray, y0: int, y1: int, scale: int) -> np.ndarray:
    """Output rows [y0*scale, y1*scale) of a bicubic x`scale` resize of a 2-D plane."""
    s0, s1 = max(0, y0 - BICUBIC_CONTEXT), min(plane.shape[0], y1 + BICUBIC_CONTEXT)
    strip = Image.fromarray(np.ascontiguousarray(plane[s0:s1]))
    big = np.asarray(strip.resize((plane.shape[1] * scale, (s1 - s0) * scale), Image.Resampling.BICUBIC))
    return big[(y0 - s0) * scale:(y1 - s0) * scale]


def _planes(image: DecodedImage, alpha_mode: str) -> Planes:
    """The network's input: the colour under fully transparent pixels filled from the visible ones
    (transparency.py: no dark fringe where the upscaled edge is half transparent)."""
    return Planes(fill_hidden_colour(image.pixels, image.alpha), image.alpha if alpha_mode == "model" else None)


def _with_bicubic_alpha(image: DecodedImage, alpha_mode: str, scale: int, sink):
    """Wrap a band sink so bands get their alpha when the network does not produce it."""
    if image.alpha is None or alpha_mode == "model":
        return sink

    def add_alpha(band: Band):
        rows = band.colour.shape[0] // scale
        y0 = band.y0 // scale
        sink(Band(band.y0, band.colour, bicubic_rows(image.alpha, y0, y0 + rows, scale)))

    return add_alpha


def upscale_decoded(upscaler: TiledUpscaler, image: DecodedImage, alpha_mode: str = "bicubic", on_tile=None):
    """The whole result in memory as (pixels, alpha) arrays in the source's bit depth."""
    s = upscaler.backend.scale
    out_dtype = image.pixels.dtype
    colour = np.empty((image.height * s, image.width * s, image.pixels.shape[2]), out_dtype)
    alpha = np.empty((image.height * s, image.width * s), out_dtype) if image.alpha is not None else None

    def keep(band: Band):
        colour[band.y0:band.y0 + band.colour.shape[0]] = band.colour
        if alpha is not None:
            alpha[band.y0:band.y0 + band.alpha.shape[0]] = band.alpha

    upscaler.run(_planes(image, alpha_mode), _with_bicubic_alpha(image, alpha_mode, s, keep), out_dtype, on_tile)
    return colour, alpha


def check_destination(image: DecodedImage, destination: str | Path, scale: int, overwrite: bool) -> None:
    """One line now, before any tile is computed, if `destination` cannot take this image's output."""
    check_output(destination, image.width * scale, image.height * scale, image.file_channels, overwrite)


def _open_output(image: DecodedImage, destination: str | Path, scale: int, overwrite: bool, png_level: int | None):
    return open_writer(destination, image.width * scale, image.height * scale, image.file_channels, image.bit_depth,
                       icc_profile=image.icc_profile, exif=image.exif, overwrite=overwrite, png_level=png_level,
                       description=image.description)


def _rows(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return colour if alpha is None else np.concatenate([colour, alpha[..., None]], -1)


def upscale_file(upscaler: TiledUpscaler, image: DecodedImage | str | Path, destination: str | Path, *,
                 overwrite: bool = False, alpha_mode: str = "bicubic", on_tile=None,
                 png_level: int | None = None) -> Path:
    """Stream the upscaled rows of an image (decoded, or a path to decode) into `destination`
    (temp name, then rename)."""
    if not isinstance(image, DecodedImage):
        image = read_image(image)
    s = upscaler.backend.scale
    with _open_output(image, destination, s, overwrite, png_level) as writer:
        def write(band: Band):
            writer.write_rows(_rows(band.colour, band.alpha))

        upscaler.run(_planes(image, alpha_mode), _with_bicubic_alpha(image, alpha_mode, s, write),
                     image.pixels.dtype, on_tile)
    return Path(destination)


def write_upscaled(image: DecodedImage, colour: np.ndarray, alpha: np.ndarray | None, destination: str | Path, *,
                   scale: int, overwrite: bool = False, png_level: int | None = None, stop_check=None) -> Path:
    """Write an upscale_decoded result of `image` into `destination` as upscale_file writes it
    (same format, metadata, temp name then rename). `stop_check` is called between slices of
    rows (it may raise to stop; the temporary file is then removed)."""
    rows = max(1, WRITE_SLICE_BYTES // max(1, colour[0].nbytes))
    with _open_output(image, destination, scale, overwrite, png_level) as writer:
        for top in range(0, colour.shape[0], rows):
            if stop_check:
                stop_check()
            writer.write_rows(_rows(colour[top:top + rows], None if alpha is None else alpha[top:top + rows]))
    return Path(destination)
