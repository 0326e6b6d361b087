"""Networks: output shapes, receptive-field radius (computed and measured), discriminator,
the [0, 1] contract of the inference view, and the polyphase tail rewrite."""
import copy

import pytest
import torch

from srtrt.nets import (
    Discriminator,
    InferenceView,
    PreShuffleUpsample,
    SRResNet,
    SRResNetConfig,
    fold_batchnorm,
    polyphase_kernel,
    polyphase_tail,
    receptive_field_radius,
)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_generator_and_view_output_shapes(scale):
    g = SRResNet(SRResNetConfig(scale=scale, blocks=2, channels=8)).eval()
    x = torch.rand(2, 3, 7, 11)
    with torch.no_grad():
        y = g(x)
        v = InferenceView(g)(x)
    assert y.shape == (2, 3, 7 * scale, 11 * scale)
    assert v.shape == y.shape
    assert InferenceView(g).scale == scale


def test_default_config_is_the_paper_network():
    cfg = SRResNetConfig()
    g = SRResNet(cfg)
    assert (cfg.scale, cfg.blocks, cfg.channels) == (4, 16, 64)
    assert len(g.body) == 16 and len(g.upsample) == 2
    assert g.head_act.weight.shape == (64,)  # PReLU per channel


def test_default_radius_is_40():
    assert receptive_field_radius(SRResNetConfig()) == 40
    assert InferenceView(SRResNet(SRResNetConfig(blocks=1, channels=4))).radius == receptive_field_radius(
        SRResNetConfig(blocks=1, channels=4))


def test_invalid_configs_are_refused():
    for bad in (dict(scale=3), dict(blocks=-1), dict(channels=0), dict(head_kernel=4)):
        with pytest.raises(ValueError):
            SRResNetConfig(**bad)


def test_configs_of_a_wrong_type_or_beyond_any_real_network_are_refused():
    """A damaged sidecar must not build a network from 4.0, NaN or true, nor ask for terabytes."""
    for bad in (dict(scale=4.0), dict(scale=True), dict(blocks=16.0), dict(blocks=float("nan")),
                dict(channels=64.0), dict(head_kernel=-1), dict(tail_kernel=0), dict(head_kernel=99999),
                dict(tail_kernel=17), dict(blocks=10 ** 12), dict(blocks=257), dict(channels=1025)):
        with pytest.raises(ValueError):
            SRResNetConfig(**bad)
    assert SRResNetConfig(blocks=256, channels=1024, head_kernel=15, tail_kernel=1).blocks == 256


def _randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so BN cannot hide a dependency."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


def measured_radius(cfg: SRResNetConfig, seed: int = 0) -> int:
    """Perturb one LR pixel in the middle of an image and find the farthest output pixel that moved.

    The distance of an output pixel (Y, X) from LR pixel (cy, cx) is max(|Y//s - cy|, |X//s - cx|),
    the same measure the computed radius uses. float64 so that every dependency shows.
    """
    gen = torch.Generator().manual_seed(seed)
    model = SRResNet(cfg).double()
    _randomise_batchnorm(model, gen)
    model.eval()
    size = 2 * receptive_field_radius(cfg) + 9  # the perturbation's footprint stays off the zero-padded border
    x = torch.rand(1, 3, size, size, generator=gen, dtype=torch.float64)
    c = size // 2
    bumped = x.clone()
    bumped[0, :, c, c] += 0.5
    with torch.no_grad():
        changed = (model(x) != model(bumped)).any(dim=1)[0]  # HxW
    ys, xs = torch.nonzero(changed, as_tuple=True)
    s = cfg.scale
    return int(torch.maximum((ys // s - c).abs(), (xs // s - c).abs()).max())


@pytest.mark.parametrize("cfg", [
    SRResNetConfig(scale=4, blocks=2, channels=4),
    SRResNetConfig(scale=2, blocks=1, channels=4, head_kernel=3, tail_kernel=5),
    SRResNetConfig(scale=8, blocks=1, channels=3),
])
def test_radius_matches_the_measured_dependency(cfg):
    # Measured == computed means: a pixel at distance `radius` changes some output pixel, and no
    # output pixel moved because of a pixel at distance radius + 1 or more.
    assert measured_radius(cfg) == receptive_field_radius(cfg)


def test_discriminator_returns_one_logit_per_image():
    d = Discriminator().eval()
    with torch.no_grad():
        assert d(torch.rand(2, 3, 96, 96) * 2 - 1).shape == (2, 1)
        assert d(torch.rand(3, 3, 32, 32) * 2 - 1).shape == (3, 1)  # other crop sizes work too
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert convs[0].out_channels == 64 and convs[-1].out_channels == 512


def test_inference_view_maps_tanh_output_to_unit_range():
    torch.manual_seed(0)
    g = SRResNet(SRResNetConfig(blocks=1, channels=8)).eval()
    with torch.no_grad():
        g.tail.weight.mul_(50)  # saturate tanh at both ends
        x = torch.rand(1, 3, 16, 16)
        raw = g(x)
        out = InferenceView(g)(x)
    assert raw.min() < -0.99 and raw.max() > 0.99
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, ((raw + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize("cfg", [SRResNetConfig(blocks=1, channels=8), SRResNetConfig(scale=2, blocks=1, channels=8),
                                 SRResNetConfig(blocks=1, channels=8, tail_kernel=3),
                                 SRResNetConfig(scale=8, blocks=1, channels=4, tail_kernel=5)],
                         ids=["x4", "x2", "x4-tail3", "x8-tail5"])
def test_polyphase_tail_computes_the_same_image(cfg):
    torch.manual_seed(0)
    generator = SRResNet(cfg).eval()
    for m in generator.modules():
        if isinstance(m, torch.nn.PReLU):  # distinct slopes, some negative: a slope mix-up would show
            m.weight.data.uniform_(-0.5, 0.5)
    rewritten = polyphase_tail(fold_batchnorm(copy.deepcopy(generator)))
    assert isinstance(rewritten.upsample[-1], PreShuffleUpsample)  # its shuffle moved behind the tail
    assert rewritten.tail.out_channels == 3 * 4  # the RGB tail, once per sub-pixel phase
    for shape in [(1, 3, 7, 9), (2, 3, 16, 5)]:  # odd sizes: the borders are where padding could differ
        x = torch.rand(shape)
        with torch.no_grad():
            assert (generator(x) - rewritten(x)).abs().max() <= 1e-5
    # The receptive field is a fact of the network, not of its form: one changed LR pixel reaches as far.
    assert InferenceView(rewritten).radius == InferenceView(generator).radius


def test_polyphase_kernel_moves_every_tap_once():
    weight = torch.randn(3, 2, 9, 9)
    kernel = polyphase_kernel(weight, 2)
    assert kernel.shape == (12, 8, 5, 5)
    # Each output phase holds every original tap exactly once; the rest are zeros.
    for phase in range(4):
        taps = kernel[phase::4]
        assert torch.count_nonzero(taps) == torch.count_nonzero(weight)
        assert torch.isclose(taps.sum(), weight.sum(), atol=1e-4)
