"""srtrt: exact, fast, bounded-memory x4 super-resolution (SRGAN / SRResNet).

    import srtrt
    model = srtrt.load_model()                  # the embedded default model, eval mode, CPU
    srtrt.upscale("photo.png", "photo_x4.png")  # tiled, streaming, seam-free
"""
from __future__ import annotations

from .errors import SrtrtError

__version__ = "0.1.0"
__all__ = ["SrtrtError", "load_model", "upscale", "__version__"]


def load_model(path=None):
    """The inference view (RGB [0,1] in and out) of a checkpoint, eval mode, CPU.

    `path=None` loads the embedded default x4 model. The module carries `.scale` and
    `.radius` (receptive-field radius in LR pixels).
    """
    from . import checkpoint, registry

    ckpt = checkpoint.load(path)
    view = registry.inference_view(ckpt.build())
    view.checkpoint_sha256 = ckpt.sha256
    return view


def upscale(image, output=None, **options):
    """Upscale a PIL image or an image path. Returns a PIL image, or writes `output` and returns its path.

    Options are those of `srtrt run`: model, backend, precision, tile, margin, batch, device.
    """
    from srtrt.engine.batch.api import upscale as _upscale

    return _upscale(image, output, **options)
