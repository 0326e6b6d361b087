"""srtrt: exact, fast, bounded-memory x4 super-resolution (SRGAN / SRResNet).

    import srtrt
    model = srtrt.load_model()                  # the embedded default model (srresnet), eval mode, CPU
    gan = srtrt.load_model("srgan")             # the embedded GAN-trained model: texture instead of blur
    srtrt.upscale("photo.png", "photo_x4.png")  # tiled, streaming, seam-free
    srtrt.upscale("photo.png", "photo_gan.png", model="srgan")
"""
from __future__ import annotations

from pathlib import Path

from .errors import SrtrtError

# Imported from a checkout rather than an install: pyproject.toml maps engine/, train/ and kernels/
# beside this folder in as srtrt.engine, srtrt.train and srtrt.kernels. A `python -m` child or a Ray
# worker started in the checkout finds this folder first on its path (after `pip install .`), so
# they are found beside it too.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "engine").is_dir() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))

__version__ = "0.1.0"
__all__ = ["SrtrtError", "load_model", "upscale", "__version__"]


def load_model(model=None, allow_noncommercial: bool = False):
    """The inference view (image in [0,1] in and out) of a model, eval mode, CPU.

    `model` is a checkpoint path (NAME.safetensors + NAME.json), the name of an embedded x4
    model (`"srresnet"`, the default, or `"srgan"`), None for the default, or a community model
    file (`.safetensors`, `.pth`, `.ckpt`, `.pt` without an srtrt sidecar) that spandrel reads;
    `allow_noncommercial` lets spandrel_extra_arches' architectures be detected. The module
    carries `.facts` (registry.ModelFacts: scale, channels, size requirements, tile margin),
    `.scale`, `.radius` (the default tile margin in LR pixels), `.checkpoint_sha256` and
    `.int8_calibration` (the sidecar's activation ranges, or None, also for ranges not in their shape).
    """
    import torch

    from srtrt.engine.batch.options import check_flag, model_argument

    allow_noncommercial = check_flag("allow_noncommercial", allow_noncommercial)  # "no" is a true string: it opted in
    model = model_argument(model)
    with torch.random.fork_rng(devices=[]):  # building a network draws random initial weights: the caller's
        return _load_model(model, allow_noncommercial)  # seeded stream is left as it was


def _load_model(model, allow_noncommercial: bool):
    from . import checkpoint, registry, zoo

    if zoo.is_community_file(model):
        return zoo.load_view(model, allow_noncommercial)
    ckpt = checkpoint.load(model)
    view = registry.inference_view(ckpt.build())
    view.checkpoint_sha256 = ckpt.sha256
    calibration = ckpt.meta.get("int8_calibration")
    if calibration is not None:
        from srtrt.engine.toolchain.quantize import usable_calibration

        calibration = calibration if usable_calibration(calibration) else None  # damaged: as if never calibrated
    view.int8_calibration = calibration
    return view


def upscale(image, output=None, **options):
    """Upscale a PIL image or an image path. Returns a PIL image, or writes `output` and returns its path.

    Options are those of `srtrt run`: model (an embedded name, a checkpoint or a community model
    file), backend, precision, tile, margin, batch, device, and allow_noncommercial=True to let a
    community file be detected as one of spandrel_extra_arches' non-commercial architectures.
    """
    from srtrt.engine.batch.api import upscale as _upscale

    return _upscale(image, output, **options)
