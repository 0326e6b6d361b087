"""PSNR / SSIM / Y conversion on known cases, and the value-range guards of the evaluation path.

The guards exist because an earlier evaluation mapped an LR tensor that was already in [0, 1]
through a [-1, 1] -> [0, 1] conversion and reported 11 dB for bicubic-quality output.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from srtrt.nets import InferenceView, SRResNet, SRResNetConfig
from srtrt.train.degrade import bicubic_downscale, bicubic_upscale, modcrop
from srtrt.train.evaluate import evaluate_folder, image_to_tensor, super_resolve, tensor_to_uint8
from srtrt.train.metrics import grid_ratio_y, psnr, psnr_y, rgb_to_y, ssim_y

from conftest import smooth_image
from synthetic import blurred_grid, write_images


def _grey(value: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


@pytest.mark.parametrize("rgb,y", [
    ((0, 0, 0), 16.0), ((255, 255, 255), 235.0),
    ((255, 0, 0), 16 + 65.481), ((0, 255, 0), 16 + 128.553), ((0, 0, 255), 16 + 24.966),
])
def test_rgb_to_y_on_known_colours(rgb, y):
    assert rgb_to_y(np.array([[rgb]], np.uint8))[0, 0] == pytest.approx(y, abs=1e-9)


def test_rgb_to_y_refuses_float_or_grey_input():
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), np.uint8))


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    img = blurred_grid(np.random.default_rng(0), 40, 40)
    assert psnr_y(img, img, border=4) == math.inf
    assert ssim_y(img, img, border=4) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("d", [1, 5, 20])
def test_constant_offset_gives_the_closed_form_psnr(d):
    a = np.full((16, 16), 100.0)
    assert psnr(a, a + d) == pytest.approx(20 * math.log10(255 / d))
    # On RGB: a grey offset of d moves Y by 219/255 * d (studio range), so PSNR follows.
    assert psnr_y(_grey(100), _grey(100 + d), border=4) == pytest.approx(20 * math.log10(255 / (d * 219 / 255)))


def test_ssim_is_symmetric_and_below_one_for_noise():
    rng = np.random.default_rng(1)
    clean = blurred_grid(rng, 48, 48)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    a, b = ssim_y(clean, noisy, 4), ssim_y(noisy, clean, 4)
    assert a == pytest.approx(b, abs=1e-12)
    assert 0 < a < 0.95
    assert ssim_y(clean, np.clip(clean + rng.normal(0, 2, clean.shape), 0, 255).astype(np.uint8), 4) > a


def test_border_pixels_are_excluded():
    a = _grey(120, 24, 24)
    b = a.copy()
    b[:4], b[-4:], b[:, :4], b[:, -4:] = 0, 0, 0, 0  # damage only a 4-pixel frame
    assert psnr_y(a, b, border=4) == math.inf
    assert psnr_y(a, b, border=3) < 20
    assert ssim_y(a, b, border=4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a[..., 0], b[:-1, :, 0])


def test_bicubic_of_pil_matches_by_construction():
    img = Image.fromarray(blurred_grid(np.random.default_rng(2), 50, 45))
    hr = modcrop(img, 4)
    assert hr.size == (44, 48)
    lr = bicubic_downscale(hr, 4)
    assert lr.size == (11, 12) and bicubic_upscale(lr, 4).size == hr.size
    with pytest.raises(ValueError, match="modcrop"):
        bicubic_downscale(img, 4)


# --- value-range guards -------------------------------------------------------------------

def test_image_tensor_round_trip_is_exact_and_in_unit_range():
    arr = blurred_grid(np.random.default_rng(3), 20, 30)
    t = image_to_tensor(Image.fromarray(arr))
    assert t.shape == (1, 3, 20, 30) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 1
    np.testing.assert_array_equal(tensor_to_uint8(t), arr)


def test_tensor_to_uint8_refuses_the_training_range():
    tanh_scale = torch.rand(1, 3, 8, 8) * 2 - 1  # what the generator returns before the view maps it
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tensor_to_uint8(tanh_scale)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tensor_to_uint8(torch.rand(1, 3, 8, 8) * 255)  # 8-bit scale
    with pytest.raises(ValueError):
        tensor_to_uint8(torch.full((1, 3, 8, 8), float("nan")))


def test_tensor_to_uint8_rounds_and_clamps_float_noise():
    x = torch.tensor([0.0, 0.5 / 255 + 1e-6, 1.0 + 1e-6, -1e-6]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert tensor_to_uint8(x)[..., 0].tolist() == [[0, 1], [255, 0]]


def test_the_real_generator_view_passes_the_guard():
    torch.manual_seed(0)
    view = InferenceView(SRResNet(SRResNetConfig(blocks=1, channels=8))).eval()
    sr = super_resolve(view, Image.fromarray(blurred_grid(np.random.default_rng(4), 8, 8)))
    assert sr.shape == (32, 32, 3) and sr.dtype == np.uint8


class _Upsampler(torch.nn.Module):
    """An inference view that is plain bicubic interpolation, optionally with the old range bug."""

    scale = 4

    def __init__(self, remap_input: bool = False):
        super().__init__()
        self.remap_input = remap_input

    def forward(self, x):
        if self.remap_input:  # the old bug: [0, 1] input treated as if it were [-1, 1]
            x = (x + 1) * 0.5
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


def test_an_interpolating_model_scores_like_bicubic_and_the_range_bug_does_not(tmp_path):
    folder = tmp_path / "hr"
    write_images(folder, [(64, 64), (80, 48)], seed=5)
    good = evaluate_folder(folder, _Upsampler())
    assert good["bicubic"]["psnr"] > 28  # smooth images: bicubic is good, far above 11 dB
    assert good["model"]["psnr"] > 28
    broken = evaluate_folder(folder, _Upsampler(remap_input=True))
    assert broken["model"]["psnr"] < 15  # the threshold above separates the bug from correct code


def test_grid_ratio_is_near_zero_without_a_pattern_and_large_with_one():
    photo = smooth_image(256, 256, seed=5)
    # A fixed 4x4 tile added everywhere: what disagreeing sub-pixel phases draw.
    tile = np.random.default_rng(6).integers(-6, 7, (4, 4, 1))
    gridded = np.clip(photo.astype(int) + np.tile(tile, (64, 64, 3)), 0, 255).astype(np.uint8)
    clean, dirty = grid_ratio_y(photo, 4), grid_ratio_y(gridded, 4)
    assert clean < 0.05
    assert dirty > 0.3
    # The same tile at period 4 is invisible to a period-3 reading, and period 1 has no phases.
    assert grid_ratio_y(gridded, 3) < 0.05
    assert grid_ratio_y(gridded, 1) == 0.0
    # Cutting a border of whole periods keeps the phases: the reading barely moves.
    assert grid_ratio_y(gridded, 4, border=4) == pytest.approx(dirty, rel=0.1)


def test_grid_ratio_refuses_an_image_smaller_than_its_period():
    with pytest.raises(ValueError, match="too small"):
        grid_ratio_y(np.zeros((4, 4, 3), np.uint8), 4)


def test_the_hf_ratio_of_a_flat_reference_is_undefined_and_left_out_of_averages(capsys, tmp_path):
    from srtrt.cli import main
    from srtrt.train.metrics import hf_ratio_y, mean_of_defined

    flat, textured = np.full((40, 40, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    assert np.isnan(hf_ratio_y(textured, flat, 4)) and hf_ratio_y(textured, textured, 4) == 1.0
    assert mean_of_defined([1.0, float("nan"), 0.5]) == 0.75 and np.isnan(mean_of_defined([float("nan")]))
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(flat).save(folder / "grey_card.png")
    assert main(["eval", str(folder), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["flat"]
    assert scores["model"]["hf"] is None and scores["images"][0]["model_hf"] is None  # JSON null, not 5.9e11
