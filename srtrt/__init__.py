"""srtrt: exact, fast, bounded-memory x4 super-resolution (SRGAN / SRResNet).

    import srtrt
    model = srtrt.load_model()                  # the embedded default model (srresnet), eval mode, CPU
    gan = srtrt.load_model("srgan")             # the embedded GAN-trained model: texture instead of blur
    srtrt.upscale("photo.png", "photo_x4.png")  # tiled, streaming, seam-free
    srtrt.upscale("photo.png", "photo_gan.png", model="srgan")
"""
from __future__ import annotations

from .errors import SrtrtError

__version__ = "0.1.0"
__all__ = ["SrtrtError", "load_model", "upscale", "__version__"]


def load_model(model=None):
    """The inference view (RGB [0,1] in and out) of a checkpoint, eval mode, CPU.

    `model` is a checkpoint path (NAME.safetensors + NAME.json), the name of an embedded x4
    model (`"srresnet"`, the default, or `"srgan"`), or None for the default; srtrt.checkpoint
    resolves it. The module carries `.scale`, `.radius` (receptive-field radius in LR pixels)
    `.checkpoint_sha256` and `.int8_calibration` (the sidecar's activation ranges, or None).
    """
    from . import checkpoint, registry

    ckpt = checkpoint.load(model)
    view = registry.inference_view(ckpt.build())
    view.checkpoint_sha256 = ckpt.sha256
    view.int8_calibration = ckpt.meta.get("int8_calibration")
    return view


def upscale(image, output=None, **options):
    """Upscale a PIL image or an image path. Returns a PIL image, or writes `output` and returns its path.

    Options are those of `srtrt run`: model, backend, precision, tile, margin, batch, device.
    """
    from srtrt.engine.batch.api import upscale as _upscale

    return _upscale(image, output, **options)
