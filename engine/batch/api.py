"""`srtrt.upscale`: the Python face of `srtrt run`, through the same per-file pipeline.

Options are `RunOptions` fields (model may be a community model file; allow_noncommercial=True
lets it be a spandrel_extra_arches architecture). The backend is built once per configuration
(`RunOptions.backend_key`: the model and its file's identity and int8 ranges, backend, precision,
device, ...) and kept for the next call; asking for another configuration closes the previous
one, and the last one is closed when the interpreter exits.
Calls from several threads take turns on it.
"""
from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from PIL import Image

from srtrt.engine.batch.files import DONE, SKIPPED, FileRunner, make_output_folder, plan_jobs
from srtrt.engine.batch.options import RunOptions, open_backend
from srtrt.engine.datapath.imageio import exif_for_size, from_pil, to_pil, xmp_for_size
from srtrt.engine.video import is_video
from srtrt.errors import SrtrtError

# held for a whole call: the kept backend serves one image at a time (OpenVINO's infer requests are
# not shared: "Infer Request is busy"), and another configuration must not close it under a call
_lock = threading.RLock()
_current: dict = {}  # {"key": backend_key, "backend": Backend, "deep": the fp32 FileRunner for deep inputs}


def _backend(options: RunOptions):
    with _lock:
        if _current.get("key") != options.backend_key:
            close()
            import torch

            with torch.random.fork_rng(devices=[]):  # building a network draws its random initial weights:
                backend = open_backend(options).backend  # the caller's seeded stream is theirs
            _current.update(key=options.backend_key, backend=backend)
        return _current["backend"]


@atexit.register
def close() -> None:
    """Release the kept backend (device memory, engine contexts)."""
    backend, deep = _current.pop("backend", None), _current.pop("deep", None)
    _current.pop("key", None)
    if backend is not None:
        backend.close()
    if deep is not None:
        deep.close_with_backend()


def upscale(image, output=None, **options):
    """Upscale a PIL image or a path. Returns a PIL image, or writes `output` and returns the Path
    written (a video whose container cannot hold its streams goes to the .mkv of that name).

    A returned image is upright (EXIF orientation applied, as `srtrt run` does) and carries the
    input's ICC profile and EXIF (orientation reset) in `.info`, as Pillow's own opened images do:
    `save` writes the profile back; the EXIF where asked (`save(..., exif=result.info["exif"])`).

    A video path needs `output` (a video file); a PIL image cannot take one (TypeError: save the
    returned image). Raises SrtrtError (one line) for bad input, an
    existing `output` without overwrite=True, or an image that does not fit the device even at
    the smallest tile.
    """
    if isinstance(image, bytes):  # a path as the file system gives it, as `output` takes one
        image = os.fsdecode(image)
    if not isinstance(image, (Image.Image, str, os.PathLike)):
        raise TypeError(f"upscale takes a PIL image or a file path, not {type(image).__module__}.{type(image).__name__}"
                        " (PIL.Image.fromarray makes a PIL image of an HxWxC uint8 array)")
    if output is not None and not isinstance(output, (str, bytes, os.PathLike)):
        raise TypeError(f"output takes a file or folder path, not {type(output).__module__}.{type(output).__name__}"
                        " (upscale(image) returns a PIL image to save where you like)")
    if output is not None and isinstance(image, Image.Image):  # before any model is opened
        raise TypeError("writing to `output` takes a path; for a PIL image call upscale(image) and save the result")
    if output is None and not isinstance(image, Image.Image) and is_video(image):
        raise SrtrtError("a video needs an output path: srtrt.upscale(video, output)", image)
    opts = RunOptions(**options)
    with _lock:
        return _upscale(image, output, opts)


def _upscale(image, output, opts: RunOptions):
    runner = FileRunner(_backend(opts), opts)
    runner.keep_deep(_current.get("deep"))
    try:
        return _upscale_on(runner, image, output, opts)
    finally:
        _current["deep"] = runner.deep  # kept with the backend, closed with it


def _upscale_on(runner: FileRunner, image, output, opts: RunOptions):
    if output is not None:
        output = os.fsdecode(output)  # a str, bytes or Path
        source = Path(image)
        # named as `srtrt run -o` names it (a folder gets <stem>_x4.<ext>, created if missing; a video needs
        # a video container)
        make_output_folder(output, False)
        job = plan_jobs([source], output, runner.backend.scale, opts, many=False)[0]  # as `srtrt run` checks it
        if job.refusal:
            raise SrtrtError(job.refusal)
        outcome = runner.run(source, job.destination, asked=job.asked)
        if outcome.status == SKIPPED:
            raise SrtrtError("exists (overwrite=True replaces it)", outcome.destination)
        if outcome.status != DONE:
            raise SrtrtError(outcome.message)
        return Path(outcome.destination)  # a video's .mkv twin when its container cannot hold its streams
    decoded = from_pil(image, **opts.decode_limit) if isinstance(image, Image.Image) else runner.decode(image)
    colour, alpha = runner.upscale_arrays(decoded, label=str(image) if not isinstance(image, Image.Image) else "image")
    result = to_pil(colour, alpha, decoded.bit_depth)
    # the pixels are upright (EXIF orientation applied, as for files): the profile and the EXIF,
    # its orientation reset, go with them as `srtrt run` carries them to its files
    said = decoded.description
    for key, value in (("icc_profile", decoded.icc_profile), ("exif", exif_for_size(decoded.exif, *result.size)),
                       ("dpi", said.dpi), ("xmp", xmp_for_size(said.xmp, *result.size))):
        if value:
            result.info[key] = value
    return result
