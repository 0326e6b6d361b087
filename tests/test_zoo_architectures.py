"""Every super-resolution and restoration architecture spandrel registers, through srtrt's registry
and tiled runtime: detected with the right scale and channels, its size requirements met by the
windows, and its tiles exact (a bounded receptive field) or within the measured margin's promise.

Small configs of spandrel's own classes, random weights (no downloads); the faces, inpainting and
the 115M-parameter IPT are out of scope (srtrt refuses the first two: tests/test_community_load.py).
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

spandrel = pytest.importorskip("spandrel")

import srtrt  # noqa: E402
from srtrt.engine.backends.torch_backend import TorchBackend  # noqa: E402
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler  # noqa: E402

from conftest import save_community_models, smooth_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")
HEIGHT, WIDTH = 96, 112


def arch(module: str, cls: str | None = None):
    return getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls or module)


# spandrel's id (-variant): (constructor with a small config spandrel still detects, scale, image channels)
ARCHITECTURES = {
    "ATD": (lambda: arch("ATD")(embed_dim=24, depths=[2], num_heads=[2], upscale=4, upsampler="pixelshuffle"), 4, 3),
    "CRAFT": (lambda: arch("CRAFT")(depths=[1]), 4, 3),
    "Compact": (lambda: arch("Compact")(num_feat=16, num_conv=4, upscale=4), 4, 3),
    "DAT": (lambda: arch("DAT")(embed_dim=60, depth=[1], num_heads=[6], upscale=2), 2, 3),
    "DCTLSA": (lambda: arch("DCTLSA")(), 4, 3),
    "DITN": (lambda: arch("DITN")(), 4, 3),
    "DRCT": (lambda: arch("DRCT")(embed_dim=24, depths=[2], num_heads=[2], upscale=4, upsampler="pixelshuffle"), 4, 3),
    "DnCNN": (lambda: arch("DnCNN")(), 1, 1),
    "ESRGAN": (lambda: arch("ESRGAN")(num_filters=16, num_blocks=1), 4, 3),
    # Real-ESRGAN x2's form: pixel-unshuffle by 2 first, so only shifts of whole 2x2 cells commute with it
    "ESRGAN-x2": (lambda: arch("ESRGAN")(in_nc=12, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2), 2, 3),
    "FDAT": (lambda: arch("FDAT")(), 4, 3),
    "GRL": (lambda: arch("GRL")(embed_dim=24, depths=[2], num_heads_window=[2], num_heads_stripe=[2], upscale=2,
                                upsampler="pixelshuffle"), 2, 3),
    "HAT": (lambda: arch("HAT")(embed_dim=24, depths=[2], num_heads=[2], window_size=8, squeeze_factor=6, upscale=4,
                                upsampler="pixelshuffle"), 4, 3),
    "HVICIDNet": (lambda: arch("HVICIDNet")(), 1, 3),
    "KBNet": (lambda: arch("KBNet", "KBNet_s")(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
              1, 3),
    "MMRealSR": (lambda: arch("MMRealSR")(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1,
                                          num_feats=[16, 32, 64, 128]), 4, 3),
    "MixDehazeNet": (lambda: arch("MixDehazeNet")(embed_dims=[8, 16, 32, 16, 8], depths=[1, 1, 1, 1, 1]), 1, 3),
    "MoESR": (lambda: arch("MoESR")(dim=16, n_blocks=2, upsample_dim=16), 4, 3),
    "MoSR": (lambda: arch("MoSR")(), 4, 3),
    "NAFNet": (lambda: arch("NAFNet")(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 1, 3),
    "OmniSR": (lambda: arch("OmniSR")(), 4, 3),
    "PLKSR": (lambda: arch("PLKSR")(dim=16, n_blocks=2), 4, 3),
    "RCAN": (lambda: arch("RCAN")(scale=4, n_resgroups=1, n_resblocks=2, n_feats=16, reduction=4), 4, 3),
    "RGT": (lambda: arch("RGT")(embed_dim=60, depth=[1], num_heads=[6], upscale=2), 2, 3),
    "RealCUGAN": (lambda: arch("RealCUGAN", "UpCunet2x")(), 2, 3),
    "RetinexFormer": (lambda: arch("RetinexFormer")(), 1, 3),
    "SAFMN": (lambda: arch("SAFMN")(dim=16, n_blocks=2), 4, 3),
    "SCUNet": (lambda: arch("SCUNet")(config=[2] * 7, dim=64), 1, 3),
    "SPAN": (lambda: arch("SPAN")(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4), 4, 3),
    "SeemoRe": (lambda: arch("SeemoRe")(), 4, 3),
    "SwiftSRGAN": (lambda: arch("SwiftSRGAN")(num_channels=16, num_blocks=4), 4, 3),
    "Swin2SR": (lambda: arch("Swin2SR")(img_size=32, embed_dim=12, depths=[2], num_heads=[2], window_size=8,
                                        upscale=2, upsampler="pixelshuffledirect"), 2, 3),
    "SwinIR": (lambda: arch("SwinIR")(img_size=32, embed_dim=12, depths=[2], num_heads=[2], window_size=8, upscale=4,
                                      upsampler="pixelshuffle"), 4, 3),
}


def test_every_registered_image_to_image_architecture_is_covered():
    """A spandrel release that adds an architecture shows here, not in a user's first run."""
    ids = {entry.architecture.id for entry in spandrel.MAIN_REGISTRY}
    out_of_scope = {"GFPGAN", "RestoreFormer", "LaMa",  # faces, inpainting: refused (test_community_load.py)
                    "IPT", "AuraSR",                      # 115M parameters / a GAN too large to build here
                    "FBCNN", "DRUNet",                    # spandrel does not detect their small configs
                    "SAFMNBCIE", "FFTformer",             # not swept (README)
                    "Uformer"}                            # square inputs only: refused (test_community_load.py)
    assert ids - out_of_scope <= set(ARCHITECTURES), sorted(ids - out_of_scope - set(ARCHITECTURES))


def architecture_id(name: str) -> str:
    return name.partition("-")[0]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several constructors warn about their own defaults
        return save_community_models(tmp_path_factory.mktemp("archs"),
                                     {name: make for name, (make, _, _) in ARCHITECTURES.items()})


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_runs_in_tiles_within_its_promise(model_files, name):
    _, scale, channels = ARCHITECTURES[name]
    view = srtrt.load_model(model_files[name])
    facts = view.facts
    assert (facts.architecture, facts.scale, facts.channels) == (architecture_id(name), scale, channels)
    backend = TorchBackend(view, "cpu", "fp32")
    seen = []
    infer = backend.infer
    backend.infer = lambda x: seen.append(tuple(x.shape[-2:])) or infer(x)
    # sides that are multiples of every requirement here (16) and beyond one window at the widest margin (40),
    # or beyond one window on the grid a network pads to (GRL's and SCUNet's 64: cores and margins its multiples)
    height, width = HEIGHT, WIDTH
    while len(TiledUpscaler(backend, core=16).plan(height, width)) < 2:
        height, width = height + 16, width + 16
    image = smooth_image(height, width, channels=channels, seed=1).astype(np.float32) / 255
    planes = Planes(image if channels == 3 else image[:, :, 0], None)
    with torch.inference_mode():
        tiled, _ = TiledUpscaler(backend, core=16).run_to_array(planes)
        whole, _ = TiledUpscaler(backend, core=0).run_to_array(planes)
    assert tiled.shape[:2] == (height * scale, width * scale) and np.isfinite(tiled).all()
    assert len(seen) > 2 and all(min(s) >= facts.minimum and s[0] % facts.multiple_of == s[1] % facts.multiple_of == 0
                                 for s in seen)
    if facts.exact:
        assert np.abs(tiled - whole).max() <= 1e-5, facts.tiling_note()
    else:  # measured on other content: one level on nearly every sample is the promise
        levels = np.abs(np.rint(tiled * 255) - np.rint(whole * 255))
        assert np.mean(levels <= 1) >= 0.995, facts.tiling_note()


def test_tiles_are_exact_only_where_a_tiled_pass_confirms_it(model_files):
    """SAFMN's max pooling passes an input pixel on only where it is its cell's maximum, so the
    radius measured from one pixel (22) misses paths: a tiled pass at that margin, in float64,
    differs from the whole image, and its margin is measured instead of called exact. The
    unshuffle model's tiles start on its 2x2 grid and are exact."""
    safmn = srtrt.load_model(model_files["SAFMN"]).facts
    assert not safmn.exact and safmn.margin_figure is not None and "measured margin" in safmn.tiling_note()
    assert srtrt.load_model(model_files["ESRGAN-x2"]).facts.exact


def test_models_whose_images_share_sheets_are_exact_there(model_files):
    """A sheet gap is measured per model (zoo.measure_sheet_gap, float64): here each such model's
    sheet of three images through the torch backend, masked, equals each image's own pass in fp32."""
    from srtrt.engine.datapath import sheets

    shared = set()
    for name in sorted(ARCHITECTURES):
        view = srtrt.load_model(model_files[name])
        facts = view.facts
        if not facts.sheet_gap:
            continue
        assert not facts.global_operations
        shared.add(name)
        step, channels, scale = facts.multiple_of, facts.channels, facts.scale
        side = max(16, facts.minimum)
        sizes = [(side, side + step), (side + step, side), (side + 2 * step, side + step)]
        sheet = (4 * side + 4 * facts.sheet_gap,) * 2
        sheet = tuple(-(-n // step) * step for n in sheet)
        placed = sheets.pack(sizes, sheet, facts.sheet_gap, step)
        assert len(placed) == 3 and all(p.top % step == p.left % step == 0 for p in placed)
        images = [smooth_image(h, w, channels=3, seed=i)[..., :channels] for i, (h, w) in enumerate(sizes)]
        backend = TorchBackend(view, "cpu", "fp32")
        x = torch.zeros(1, channels, *sheet)
        mask = torch.zeros(1, 1, *sheet)
        for p in placed:
            x[0, :, p.top:p.top + p.height, p.left:p.left + p.width] = torch.from_numpy(
                images[p.index].astype(np.float32) / 255).permute(2, 0, 1)
            mask[..., p.top:p.top + p.height, p.left:p.left + p.width] = 1
        with torch.inference_mode():
            out = backend.infer_masked(x, mask)
            for p in placed:
                whole = backend.infer(x[..., p.top:p.top + p.height, p.left:p.left + p.width])
                cut = out[..., p.top * scale:(p.top + p.height) * scale, p.left * scale:(p.left + p.width) * scale]
                assert (cut - whole).abs().max().item() <= 1e-5, name
    assert {"Compact", "ESRGAN", "ESRGAN-x2", "SPAN", "SwiftSRGAN"} <= shared, sorted(shared)
