"""Measured receptive fields against analytic ones, measured tile margins, and their cache."""
from __future__ import annotations

import json

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet
from spandrel.architectures.RCAN import RCAN
from spandrel.architectures.SPAN import SPAN
from torch import nn

from srtrt import receptive_field as rf
from srtrt.engine.datapath.tiles import plan
from srtrt.nets import InferenceView, SRResNet, SRResNetConfig, receptive_field_radius

from conftest import smooth_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seeded(factory, *args, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return factory(*args, **kwargs).eval()


# -- radius --------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    SRResNetConfig(scale=2, blocks=0, channels=4, head_kernel=3, tail_kernel=3),
    SRResNetConfig(scale=2, blocks=3, channels=8, head_kernel=5, tail_kernel=3),
    SRResNetConfig(scale=4, blocks=2, channels=4, head_kernel=9, tail_kernel=5),
])
def test_srresnet_measured_equals_analytic(config):
    net = _seeded(SRResNet, config)
    assert rf.measure_radius(net, config.scale, 3) == receptive_field_radius(config)


@pytest.mark.parametrize("features, convs", [(16, 16), (32, 16), (16, 4)])
def test_compact_radius_is_convs_plus_two(features, convs):
    net = _seeded(Compact, num_feat=features, num_conv=convs, upscale=4)
    assert rf.measure_radius(net, 4, 3) == convs + 2


def test_span_radius():
    # conv_1, 6 blocks of 3 convs, conv_2 and the upsampler's conv: 21 3x3 convs (conv_cat is 1x1)
    net = _seeded(SPAN, num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4)
    assert rf.measure_radius(net, 4, 3) == 21


def test_rrdbnet_grows_15_per_block_and_a_deep_one_is_none():
    # 15 convs per RRDB, plus 4 for the first conv, the trunk conv and the x2 and x4 convs after
    # the upsamplings; so 23 blocks are 349, beyond what a 128-pixel input can show
    assert [rf.measure_radius(_seeded(RRDBNet, num_filters=8, num_blocks=b), 4, 3) for b in (1, 2)] == [19, 34]
    assert rf.measure_radius(_seeded(RRDBNet, num_filters=8, num_blocks=23), 4, 3, limit=128) is None


class _ChannelAttention(nn.Module):
    """conv, then every channel scaled by a function of its mean over the whole image, then x2."""

    def __init__(self, features: int = 8):
        super().__init__()
        self.head = nn.Conv2d(3, features, 3, padding=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(features, features, 1), nn.Sigmoid())
        self.tail = nn.Conv2d(features, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        feat = self.head(x)
        return self.shuffle(self.tail(feat * self.gate(feat)))


def test_global_pooling_has_no_radius():
    assert rf.measure_radius(_seeded(_ChannelAttention), 2, 3, limit=256) is None
    rcan = _seeded(RCAN, scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4)
    assert rf.measure_radius(rcan, 2, 3, limit=128) is None


class _NoForwardMode(torch.autograd.Function):
    """Square, with a backward but no jvp: forward-mode autodiff cannot pass it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _ThreeConvs(nn.Module):
    def __init__(self, custom: bool):
        super().__init__()
        self.custom = custom
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2)
        self.c, self.shuffle = nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2)

    def forward(self, x):
        h = self.a(x)
        h = _NoForwardMode.apply(h) if self.custom else h * h
        return self.shuffle(self.c(self.b(h)))


def test_reverse_mode_fallback_agrees():
    custom = _seeded(_ThreeConvs, True)
    with pytest.raises(RuntimeError), torch.no_grad(), fwAD.dual_level():
        x = torch.rand(1, 3, 8, 8)
        custom(fwAD.make_dual(x, torch.ones_like(x)))
    assert rf.measure_radius(custom, 2, 3) == rf.measure_radius(_seeded(_ThreeConvs, False), 2, 3) == 4


def _faint_chain(convs: int) -> nn.Module:
    """Linear 3x3 convs, identity at the centre tap and 1e-20 on the others: the influence at
    distance d is about 1e-20**d, below fp64's smallest number from d = 17 on."""
    layers = []
    for _ in range(convs):
        conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        conv.weight.data.fill_(1e-20)
        conv.weight.data[:, :, 1, 1] = torch.eye(3)
        layers.append(conv)
    return nn.Sequential(*layers)


def test_an_edge_below_fp64_underflow_is_rescaled_or_refused():
    chain = _faint_chain(20).double()
    x, tangent = torch.rand(1, 3, 48, 48, dtype=torch.float64), torch.zeros(1, 3, 48, 48, dtype=torch.float64)
    tangent[0, :, 24, 24] = 1
    with torch.no_grad(), fwAD.dual_level():
        plain = fwAD.unpack_dual(chain(fwAD.make_dual(x, tangent))).tangent
    assert torch.nonzero(plain.abs().amax((0, 1)))[:, 0].max() - 24 < 20  # one plain pass loses the edge
    assert rf.measure_radius(_faint_chain(20), 1, 3) == 20
    assert rf.measure_radius(_faint_chain(30), 1, 3) is None  # 1e-600: beyond any rescaling


class _MultipleOf(nn.Module):
    def __init__(self, net: nn.Module, multiple: int, minimum: int):
        super().__init__()
        self.net, self.multiple, self.minimum = net, multiple, minimum

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple or min(h, w) < self.minimum:
            raise ValueError(f"{h}x{w} is not allowed")
        return self.net(x)


def test_size_rules_are_honoured():
    net = _MultipleOf(_seeded(Compact, num_feat=16, num_conv=6, upscale=2), 12, 24)
    assert rf.measure_radius(net, 2, 3, multiple_of=12, minimum=24) == 8
    assert rf.measure_radius(net, 2, 3, multiple_of=12, minimum=24, limit=23) is None


# -- margin --------------------------------------------------------------------------------------

def _tiled(module: nn.Module, scale: int, core: int):
    """run_tiled for measure_margin: the engine's tile planner, cores pasted into the output."""

    @torch.no_grad()
    def run(lr: torch.Tensor, margin: int) -> torch.Tensor:
        _, _, height, width = lr.shape
        out = lr.new_zeros(lr.shape[0], 3, height * scale, width * scale)
        for tile in plan(height, width, core, margin):
            top, left, h, w = tile.window
            ty, tx, ch, cw = tile.core_in_window
            y = module(lr[:, :, top:top + h, left:left + w])
            out[:, :, tile.y.c0 * scale:(tile.y.c0 + ch) * scale, tile.x.c0 * scale:(tile.x.c0 + cw) * scale] = \
                y[:, :, ty * scale:(ty + ch) * scale, tx * scale:(tx + cw) * scale]
        return out

    return run


def _whole(module: nn.Module):
    return torch.no_grad()(lambda lr: module(lr))


@pytest.fixture(scope="module")
def reference_lr() -> torch.Tensor:
    return torch.from_numpy(smooth_image(256, 256, seed=3)).permute(2, 0, 1)[None].float() / 255


def test_margin_of_a_conv_net_is_at_most_its_radius(reference_lr):
    torch.manual_seed(0)
    view = InferenceView(SRResNet(SRResNetConfig(scale=2, blocks=1, channels=8, head_kernel=3, tail_kernel=3))).eval()
    radius = view.radius
    tiled, whole = _tiled(view, 2, core=64), _whole(view)
    margin, figure = rf.measure_margin(tiled, whole, reference_lr, range(radius + 4))
    assert margin is not None and margin <= radius
    assert figure["margin"] == margin and figure["within_1_level"] >= 0.999 and figure["max_level_diff"] >= 0
    assert all(rf.measure_margin(tiled, whole, reference_lr, [m])[0] is None for m in range(margin))  # the first to pass
    _, exact = rf.measure_margin(tiled, whole, reference_lr, [radius])
    assert exact["max_level_diff"] <= 1 and exact["psnr_db"] > 50


class _GlobalMean(nn.Module):
    """A local x2 conv net whose output also follows the whole input's mean, strongly."""

    def __init__(self):
        super().__init__()
        self.conv, self.shuffle = nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)

    def forward(self, x):
        return torch.sigmoid(self.shuffle(self.conv(x)) + 8 * (x.mean((2, 3), keepdim=True) - 0.5))


def test_global_pooling_margin_only_when_one_window_covers_the_image(reference_lr):
    net = _seeded(_GlobalMean)
    assert rf.measure_radius(net, 2, 3, limit=128) is None
    tiled, whole = _tiled(net, 2, core=64), _whole(net)
    margin, figure = rf.measure_margin(tiled, whole, reference_lr, [0, 8, 16, 32, 48])
    assert margin is None and figure["margin"] == 48 and figure["within_1_level"] < 0.999
    # 64 + 2 * 96 covers the 256-pixel image: one window, the whole-image pass itself
    margin, figure = rf.measure_margin(tiled, whole, reference_lr, [32, 96])
    assert margin == 96 and figure["max_level_diff"] == 0 and figure["psnr_db"] == float("inf")


def test_margin_rejects_mismatched_outputs(reference_lr):
    with pytest.raises(ValueError):
        rf.measure_margin(lambda lr, m: torch.zeros(3, 4, 4), lambda lr: torch.zeros(3, 4, 5), reference_lr, [0])
    with pytest.raises(ValueError):
        rf.measure_margin(lambda lr, m: lr, lambda lr: lr, reference_lr, [])


# -- cache ---------------------------------------------------------------------------------------

SHA = "ab" * 32


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    return tmp_path


def _never() -> dict:
    raise AssertionError("computed although cached")


def test_cache_returns_the_stored_value_without_computing(cache_root):
    calls = []
    value = rf.cached("radius", SHA, lambda: calls.append(1) or {"radius": 40, "phases": (0, 1)})
    assert value == {"radius": 40, "phases": [0, 1]} and calls == [1]
    assert rf.cached("radius", SHA.upper(), _never) == value
    assert rf.cached("margin", SHA, lambda: {"margin": 12}) == {"margin": 12}
    assert rf.cached("radius", SHA, _never) == value  # another kind's write kept this one
    stored = json.loads((cache_root / "receptive_field" / f"{SHA}.json").read_text())
    assert stored["format"] == rf.CACHE_FORMAT and set(stored["results"]) == {"radius", "margin"}


def _stored(version: int, sha256: str, results) -> bytes:
    return json.dumps({"format": version, "sha256": sha256, "results": results}).encode()


@pytest.mark.parametrize("content", [
    b'{"format": 1, "sha256": ',                              # cut short
    b"\xff\xfe\x00",                                          # not text
    b"[1, 2]",                                                # not an object
    _stored(999, SHA, {"radius": {"radius": 1}}),             # another format version
    _stored(rf.CACHE_FORMAT, "cd" * 32, {"radius": {"radius": 1}}),  # another model's entry
    _stored(rf.CACHE_FORMAT, SHA, {"radius": 7}),             # an entry that is not a dict
    b"[" * 100_000 + b"]" * 100_000,                          # nested past the parser's recursion limit
])
def test_cache_ignores_a_corrupt_or_foreign_file(cache_root, content):
    path = cache_root / "receptive_field" / f"{SHA}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert rf.cached("radius", SHA, lambda: {"radius": 40}) == {"radius": 40}
    assert rf.cached("radius", SHA, _never) == {"radius": 40}


def test_cache_refuses_a_name_that_is_not_a_sha256(cache_root):
    with pytest.raises(ValueError):
        rf.cached("radius", "../../etc/passwd", _never)


_FILL = """
import sys
from srtrt import receptive_field as rf
worker = int(sys.argv[1])
for k in range(400):
    rf.cached(f"kind-{worker}-{k}", "ab" * 32, lambda: {"worker": worker})
"""


def test_two_processes_filling_the_cache_at_once_keep_each_others_entries(cache_root):
    """Each read the file, added its entry and wrote it back: the other's entries written meanwhile were lost."""
    import os
    import subprocess
    import sys

    workers = [subprocess.Popen([sys.executable, "-c", _FILL, str(w)], env={**os.environ, "SRTRT_CACHE": str(cache_root)})
               for w in range(2)]
    assert [worker.wait(120) for worker in workers] == [0, 0]
    stored = json.loads((cache_root / "receptive_field" / f"{SHA}.json").read_text())
    assert set(stored["results"]) == {f"kind-{w}-{k}" for w in range(2) for k in range(400)}


def test_an_unwritable_cache_still_returns_the_value(cache_root, monkeypatch):
    from srtrt import cache
    from srtrt.errors import OutputNote

    monkeypatch.setattr(cache, "_spill", {})  # this process's spill folder: this test's alone
    (cache_root / "receptive_field").write_text("a file where the folder should be")
    with pytest.warns(OutputNote, match="cannot keep srtrt's cache there"):
        assert rf.cached("radius", SHA, lambda: {"radius": 40}) == {"radius": 40}


def test_entries_of_the_wrong_shape_are_measured_again(cache_root, tmp_path):
    """An entry edited or damaged into the wrong shape (a tiling without a radius, an agreement figure
    as text) is measured again instead of ending the run in a KeyError or TypeError."""
    from safetensors.torch import save_file

    import srtrt
    from srtrt.engine.backends.agreement import _a_figure

    net = _seeded(Compact, num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "compact.safetensors"))
    first = srtrt.load_model(str(tmp_path / "compact.safetensors")).facts
    (path,) = (cache_root / "receptive_field").glob("*.json")
    stored = json.loads(path.read_text())
    (tiling,) = [kind for kind in stored["results"] if kind.startswith("tiling")]
    stored["results"][tiling] = {}
    path.write_text(json.dumps(stored))
    again = srtrt.load_model(str(tmp_path / "compact.safetensors")).facts
    assert (again.radius, again.margin) == (first.radius, first.margin)
    assert [_a_figure(entry) for entry in ({"psnr_db": 62.2}, {"psnr_db": "62.2"}, {"psnr_db": None}, {})] == [
        True, False, False, False]
