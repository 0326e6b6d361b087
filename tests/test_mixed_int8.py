"""Convs kept in float so a community model's int8 keeps to the agreement guard (engine/toolchain/mixed_int8.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srtrt import registry, zoo
from srtrt.engine.toolchain.mixed_int8 import MARGIN_DB, fake_quantized
from srtrt.engine.toolchain.quantize import calibrate

from conftest import random_view, smooth_image


def test_the_simulation_computes_what_the_qdq_graph_does(tmp_path):
    """fake_quantized rounds as quantize_onnx's graph does: onnxruntime's int8 output and the
    simulation's differ by float op order only. That order moves an activation that lies on a
    rounding boundary one quantisation step (1.9e-5 at the output on an AVX2 Zen 3, 0.3-2 % of the
    outputs; never on the Zen 4 measured before), so the bound is on the mean: a hundredth of what
    int8 moves the output, and every output within a twentieth of an 8-bit level."""
    ort = pytest.importorskip("onnxruntime")
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=2, channels=16)
    photos = [torch.from_numpy(smooth_image(40, 48, seed=s)).permute(2, 0, 1)[None].float() / 255 for s in (1, 7)]
    view.int8_calibration = calibrate(view, photos)
    path = export_onnx(view, tmp_path / "int8.onnx", precision="int8")
    x = torch.from_numpy(smooth_image(24, 32, seed=3)).permute(2, 0, 1)[None].float() / 255
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": x.numpy()})[0]
    generator = registry.of(view.generator).fold_batchnorm(view.generator)
    with torch.inference_mode():
        simulated = view.with_generator(fake_quantized(generator, view.int8_calibration["ranges"])).eval()(x).numpy()
        fp32 = view.with_generator(generator).eval()(x).numpy()
    off = np.abs(got - simulated)
    assert off.mean() < np.abs(got - fp32).mean() / 100  # measured: 4e-8 (Zen 3) against 1.6e-4
    assert off.max() <= 1 / 255 / 20


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    """A Compact with Kaiming weights and zero biases whose int8 agrees with fp32 to about 40 dB."""
    pytest.importorskip("spandrel")
    pytest.importorskip("openvino")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    import srtrt

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=6, upscale=4).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.zero_() if name.endswith(".bias") else torch.nn.init.kaiming_normal_(p, a=0.2) if p.dim() == 4 else None
    path = tmp_path_factory.mktemp("mixed") / "compact.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return srtrt.load_model(str(path)), [zoo.reference_image(48, 3, 1, seed) for seed in (10, 11, 12)]


def test_the_convs_that_cost_agreement_stay_in_float_and_the_guard_sees_it(compact, tmp_path, monkeypatch):
    """Asked for 1 dB more agreement than int8 everywhere gives, calibration keeps the convs that
    cost most in float (at most half), the simulation reaches the target plus its margin, and
    OpenVINO's int8 graph of those ranges, judged by the guard itself, agrees that much better."""
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    from srtrt.engine.backends import create_backend
    from srtrt.engine.backends.agreement import measured_agreement

    view, photos = compact

    def guard(calibration) -> float:
        view.int8_calibration = calibration
        return measured_agreement(view, "openvino", "int8",
                                  lambda: create_backend("openvino", precision="int8", view=view).backend)

    whole = calibrate(view, photos)
    every_conv = guard(whole)
    mixed = calibrate(view, photos, agreement_db=every_conv + 1)
    assert 1 <= len(mixed["float"]) <= len(whole["ranges"]) // 2
    assert set(mixed["float"]) | set(mixed["ranges"]) == set(whole["ranges"])
    assert not set(mixed["float"]) & set(mixed["ranges"])
    assert mixed["simulated_db"] >= mixed["target_db"] == pytest.approx(every_conv + 1 + MARGIN_DB, abs=0.01)
    assert guard(mixed) >= every_conv + 1


def test_agreement_out_of_reach_with_half_the_convs_leaves_the_ranges_whole(compact):
    view, photos = compact
    whole = calibrate(view, photos)
    out_of_reach = calibrate(view, photos, agreement_db=60.0)
    assert out_of_reach["float"] == [] and out_of_reach["ranges"] == whole["ranges"]
    assert out_of_reach["simulated_db"] < out_of_reach["target_db"]


def test_an_image_the_simulation_makes_nan_is_the_worst_whatever_its_place():
    """max() over [error, NaN] keeps whichever comes first: a NaN simulation (an overflow) could pass
    as agreeing, where the guard's psnr counts NaN as the farthest from agreement there is."""
    import math

    from srtrt.engine.toolchain.mixed_int8 import _mse

    view = random_view(blocks=1, channels=4)
    good = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    broken = good.clone()
    broken[..., 3, 3] = float("nan")
    reference = view.with_generator(view.generator).eval()(good).detach()
    for images in ([good, broken], [broken, good]):
        assert _mse(view, view.generator, images, [reference, reference]) == math.inf
    assert _mse(view, view.generator, [good], [reference]) < 1e-12
