"""The streaming runtime end to end on the CPU: backends agree, image modes round-trip, memory stays bounded."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.datapath.imageio import read_image
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler
from srtrt.engine.datapath.pipeline import bicubic_rows, upscale_file

from conftest import random_view, smooth_image


def _reference(view, img: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return view(x)[0].permute(1, 2, 0).numpy()


def test_torch_and_onnxruntime_agree_with_whole_image(tmp_path):
    pytest.importorskip("onnxruntime")
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=2, channels=8)
    img = smooth_image(50, 70, seed=3)
    ref = _reference(view, img)
    onnx_path = export_onnx(view, tmp_path / "m.onnx")
    outputs = {}
    for backend in (TorchBackend(view), OnnxRuntimeBackend(onnx_path, view.scale, view.radius)):
        out, _ = TiledUpscaler(backend, core=16, batch=2).run_to_array(Planes(img), np.float32)
        outputs[backend.name] = out
        assert np.abs(out - ref).max() <= 1e-4, backend.name
    assert np.abs(outputs["torch"] - outputs["onnxruntime"]).max() <= 1e-4


def test_bicubic_alpha_bands_equal_whole_resize():
    alpha = smooth_image(37, 53, channels=1, seed=5)[..., 0]
    whole = np.asarray(Image.fromarray(alpha).resize((53 * 4, 37 * 4), Image.Resampling.BICUBIC))
    bands = np.concatenate([bicubic_rows(alpha, y, min(y + 7, 37), 4) for y in range(0, 37, 7)])
    assert np.array_equal(bands, whole)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


MODES = {
    "RGB": lambda: Image.fromarray(smooth_image(21, 30)),
    "RGBA": lambda: Image.fromarray(np.dstack([smooth_image(21, 30), smooth_image(21, 30, 1, seed=9)]), "RGBA"),
    "L": lambda: Image.fromarray(smooth_image(21, 30, 1)[..., 0]),
    "LA": lambda: Image.fromarray(np.dstack([smooth_image(21, 30, 1), smooth_image(21, 30, 1, seed=4)]), "LA"),
    "P": lambda: Image.fromarray(smooth_image(21, 30)).convert("P"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_modes_round_trip(tmp_path, mode):
    src = _save(MODES[mode](), tmp_path / f"in_{mode}.png")
    up = TiledUpscaler(TorchBackend(random_view()), core=8, batch=2)
    out = upscale_file(up, src, tmp_path / "out.png")
    with Image.open(out) as im:
        expected_mode = {"P": "RGB"}.get(mode, mode)
        assert im.mode == expected_mode and im.size == (120, 84)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_alpha_through_the_model(tmp_path):
    rgba = MODES["RGBA"]()
    src = _save(rgba, tmp_path / "a.png")
    view = random_view()
    up = TiledUpscaler(TorchBackend(view), core=8)
    bicubic = np.asarray(Image.open(upscale_file(up, src, tmp_path / "b.png")))[..., 3]
    model = np.asarray(Image.open(upscale_file(up, src, tmp_path / "m.png", alpha_mode="model")))[..., 3]
    alpha = np.asarray(rgba)[..., 3]
    grey = np.repeat(alpha[..., None], 3, -1)
    expected = np.round(_reference(view, grey).mean(-1) * 255).clip(0, 255).astype(np.uint8)
    assert np.abs(model.astype(int) - expected).max() <= 1
    assert np.array_equal(bicubic, np.asarray(Image.fromarray(alpha).resize((120, 84), Image.Resampling.BICUBIC)))


def test_sixteen_bit_grey_stays_sixteen_bit(tmp_path):
    grey16 = smooth_image(20, 24, 1, dtype=np.uint16)[..., 0]
    src = _save(Image.fromarray(grey16), tmp_path / "g16.png")
    up = TiledUpscaler(TorchBackend(random_view()), core=8)
    out = read_image(upscale_file(up, src, tmp_path / "o.png"))
    assert out.bit_depth == 16 and out.pixels.dtype == np.uint16 and out.pixels.shape == (80, 96, 1)
    # Precision beyond 8 bits survives: values are not multiples of 257 (what an 8-bit detour would give).
    assert np.mean(out.pixels % 257 != 0) > 0.5


def test_icc_profile_is_carried(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _save(MODES["RGB"](), tmp_path / "icc.png", icc_profile=icc)
    up = TiledUpscaler(TorchBackend(random_view()), core=16)
    with Image.open(upscale_file(up, src, tmp_path / "o.png")) as im:
        assert im.info.get("icc_profile") == icc


def test_memory_is_bounded_by_a_band_not_the_image():
    """A long image: numpy memory at peak stays a small fraction of the full output."""
    view = random_view(blocks=1, channels=4)
    img = smooth_image(160, 1200, seed=2)
    up = TiledUpscaler(TorchBackend(view), core=16, margin=view.radius, batch=2)
    full_output_bytes = 160 * 4 * 1200 * 4 * 3
    band_bytes = 16 * 4 * 1200 * 4 * 3
    rows_seen = []
    tracemalloc.start()
    up.run(Planes(img), lambda band: rows_seen.append(band.colour.shape[0]), np.uint8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(rows_seen) <= 16 * 4 and sum(rows_seen) == 160 * 4
    assert peak < full_output_bytes / 4 and peak < 3 * band_bytes + 2_000_000
