"""Tile planner properties and the exactness proof: with margin >= radius, tiles == whole image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.datapath import tiles
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler

from conftest import random_view, smooth_image


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(1, 300), st.integers(0, 60))
def test_plan_cores_partition_and_windows_are_static(h, w, core, margin):
    plan = tiles.plan(h, w, core, margin)
    _assert_cores_partition_with_context(plan, h, w, margin)
    assert plan.window_shape[0] <= min(h, core + 2 * margin) and plan.window_shape[1] <= min(w, core + 2 * margin)
    # Balanced cores: no more windows than `core` needs along each axis.
    assert len(plan.rows) <= -(-h // core) and len(plan.cols) <= -(-w // core)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(1, 120), st.integers(0, 40), st.integers(1, 16),
       st.integers(0, 64))
def test_windows_meet_the_networks_size_requirements(h, w, core, margin, multiple_of, minimum):
    """A community model's minimum side and multiple (a downsampling U-Net's 40, an unshuffle's 4)
    hold for every window, met by the windows' shapes; the cores still partition the image."""
    smallest = tiles.allowed_side(1, multiple_of, minimum)
    if min(h, w) < smallest:
        with pytest.raises(ValueError):
            tiles.plan(h, w, core, margin, multiple_of=multiple_of, minimum=minimum)
        return
    plan = tiles.plan(h, w, core, margin, multiple_of=multiple_of, minimum=minimum)
    wh, ww = plan.window_shape
    assert min(wh, ww) >= max(minimum, 1) and wh % multiple_of == 0 and ww % multiple_of == 0
    # on an axis a whole-image pass can take, windows start on its grid of multiples
    assert h % multiple_of or all(t.y.w0 % multiple_of == 0 for t in plan)
    assert w % multiple_of or all(t.x.w0 % multiple_of == 0 for t in plan)

    def context(length: int) -> int:
        """Full context wherever a window of an allowed side can hold a core and both margins; an
        axis too short for that, and no multiple the network takes, has no whole-image pass to
        equal: its cores get what context its longest windows hold (two, one from each end)."""
        longest = length // multiple_of * multiple_of
        if longest == length or longest - 2 * margin >= 1:
            return margin
        return min(margin, longest - -(-length // 2))

    _assert_cores_partition_with_context(plan, h, w, context(h), context(w))


def _assert_cores_partition_with_context(plan: tiles.TilePlan, h: int, w: int, margin: int,
                                         margin_x: int | None = None) -> None:
    margin_y, margin_x = margin, margin if margin_x is None else margin_x
    covered = np.zeros((h, w), np.int32)
    shapes = set()
    for t in plan:
        wy, wx, wh, ww = t.window
        cy, cx, ch, cw = t.core
        shapes.add((wh, ww))
        assert 0 <= wy and wy + wh <= h and 0 <= wx and wx + ww <= w          # windows inside the image
        assert wy <= cy and cy + ch <= wy + wh and wx <= cx and cx + cw <= wx + ww  # core inside window
        # Context: on each side the window either reaches the image border (all context there is)
        # or extends >= margin pixels beyond the core.
        assert wy == 0 or cy - wy >= margin_y
        assert wx == 0 or cx - wx >= margin_x
        assert wy + wh == h or (wy + wh) - (cy + ch) >= margin_y
        assert wx + ww == w or (wx + ww) - (cx + cw) >= margin_x
        covered[cy:cy + ch, cx:cx + cw] += 1
    assert (covered == 1).all()           # cores partition the image: no gap, no overlap
    assert shapes == {plan.window_shape}  # one static window shape per image


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 400), st.integers(1, 120), st.integers(0, 40), st.sampled_from([2, 4, 8, 16]), st.integers(0, 24),
       st.booleans())
def test_a_network_that_pads_to_a_grid_gets_windows_on_the_grid_the_last_ending_with_the_image(
        length, core, margin, grid, minimum, balance):
    """SwinIR pads its input to multiples of 8 inside its forward, MoESR to multiples of 2 (spandrel:
    any side): windows starting off that grid computed other values than the whole image (MoESR at
    "exact" tiles: 7 levels of 255). Every window starts on the grid, all are one length, and the last
    ends with the axis, so the network pads it as it pads the whole image. An engine built for one
    window (`balance=False`, TensorRT) ignored the grid: its windows are now no longer than it."""
    try:
        spans = tiles.plan_axis(length, core, margin, balance, minimum=minimum, grid=grid)
    except tiles.WindowTooShort:  # no window the engine takes holds a core, both margins and the grid's slack
        assert not balance and core + 2 * margin - (grid - 1) < max(2 * margin + grid, minimum)
        return
    if not balance:
        assert all(s.wlen <= max(core + 2 * margin, minimum) for s in spans)
    if len(spans) == 1:
        assert spans[0] == tiles.Span(0, length, 0, length)
        return
    assert len({s.wlen for s in spans}) == 1 and all(s.w0 % grid == 0 for s in spans)
    assert spans[-1].w0 + spans[-1].wlen == length and spans[0].w0 == 0
    assert [s.c0 for s in spans] == sorted(s.c0 for s in spans) and sum(s.clen for s in spans) == length
    for s in spans:  # each core inside its window with a full margin, or the image's own edge
        assert s.w0 <= s.c0 and s.c0 + s.clen <= s.w0 + s.wlen
        assert s.c0 - s.w0 >= margin or s.w0 == 0
        assert s.w0 + s.wlen - (s.c0 + s.clen) >= margin or s.w0 + s.wlen == length


def test_windows_on_a_wide_grid_keep_to_the_pixel_budget():
    """GRL and SCUNet pad to 64: cores and margins rounded up to 64 made every candidate miss the
    budget, and the default plan ran 288x304 windows against a 109x110 budget (4.2 GB against 1.5 GB
    for a tiny GRL), computing 5.5x the image's pixels."""
    budget = 200 * 200
    plan = tiles.least_computed(2000, 3000, 4, budget, grid=64)
    assert plan is not None
    h, w = plan.window_shape
    assert h * w <= budget and all(t.y.w0 % 64 == 0 and t.x.w0 % 64 == 0 for t in plan)


def test_plan_raster_order_completes_bands_in_order():
    plan = tiles.plan(100, 130, 32, 8)
    rows = [t.row for t in plan]
    assert rows == sorted(rows)
    assert len(plan) == len(plan.rows) * len(plan.cols) == 4 * 5


def test_whole_image_when_core_is_zero():
    plan = tiles.plan(37, 91, 0, 40)
    assert len(plan) == 1 and plan.window_shape == (37, 91)


@pytest.mark.parametrize("bad", [(0, 5, 8, 2), (5, 5, 8, -1)])
def test_plan_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        tiles.plan(*bad)


def _whole(view, img: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
    with torch.no_grad():
        return view.double()(x)[0].permute(1, 2, 0).float().numpy()


@pytest.mark.parametrize("h,w,core", [(57, 83, 16), (1, 45, 8), (45, 1, 8), (3, 4, 16), (40, 41, 13), (29, 64, 100)])
def test_tiled_equals_whole_image_random_weights(h, w, core):
    view = random_view(blocks=3, channels=8)
    img = smooth_image(h, w, seed=h * w)
    ref = _whole(view, img)
    up = TiledUpscaler(TorchBackend(random_view(blocks=3, channels=8)), core=core, margin=view.radius, batch=3)
    out, _ = up.run_to_array(Planes(img), np.float32)
    assert out.shape == (h * 4, w * 4, 3)
    assert np.abs(out - ref).max() <= 1e-5


def test_margin_below_radius_is_not_exact():
    """The proof has teeth: too little context changes the output near tile borders."""
    view = random_view(blocks=3, channels=8)
    img = smooth_image(64, 64, seed=1)
    up = TiledUpscaler(TorchBackend(view), core=16, margin=view.radius // 4)
    out, _ = up.run_to_array(Planes(img), np.float32)
    assert np.abs(out - _whole(random_view(blocks=3, channels=8), img)).max() > 1e-4


def test_small_images_run_whole_and_large_ones_tile():
    """With the default core, an image that fits the backend's memory budget is one window."""
    view = random_view()
    up = TiledUpscaler(TorchBackend(view))
    whole = up.backend.defaults.whole_image_pixels
    side = int(whole ** 0.5)
    assert len(up.plan(side, side)) == 1
    assert len(up.plan(side + 200, side + 200)) > 1
    assert len(TiledUpscaler(TorchBackend(view), core=32).plan(side, side)) > 1  # an explicit core is obeyed


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 900), st.integers(1, 900), st.integers(0, 40), st.integers(11_000, 200_000))
def test_the_least_computing_plan_keeps_each_window_in_the_budget(h, w, margin, budget):
    plan = tiles.least_computed(h, w, margin, budget)
    assert plan is not None  # a budget of 11,000 pixels holds a window of 16 x 1 px cores and margins of 40
    _assert_cores_partition_with_context(plan, h, w, margin)
    assert plan.window_shape[0] * plan.window_shape[1] <= budget


def test_a_pixel_budget_is_split_by_pixels_not_by_a_square_side():
    """RRDBNet's 2048x1536 image in int8 on the AVX2 EPYC (174,662 LR pixels a window): square
    400 px cores make 24 windows of 392x350; the budget holds 20 of 392x418, which also stay above
    the size that runs on OpenVINO's slower dynamic-shape model."""
    square = tiles.plan(1536, 2048, 400, 4)
    assert (len(square), square.window_shape) == (24, (392, 350))
    plan = tiles.least_computed(1536, 2048, 4, 174_662)
    assert (len(plan), plan.window_shape) == (20, (392, 418))


def test_an_image_larger_than_one_window_runs_in_the_windows_that_compute_least():
    from srtrt.engine.backends.base import defaults_for_budget

    backend = TorchBackend(random_view())
    backend.defaults = defaults_for_budget(174_662 * 100, 100, backend.radius)  # RRDBNet's window on the AVX2 EPYC
    up = TiledUpscaler(backend)
    square = tiles.plan(1536, 2048, up.core, up.margin)
    least = tiles.least_computed(1536, 2048, up.margin, 174_662)
    assert least.computed_pixels < square.computed_pixels
    assert up.plan(1536, 2048) == least
    assert len(TiledUpscaler(backend, core=400).plan(1536, 2048)) == 24  # an explicit core is obeyed


def test_tiles_of_uneven_cores_equal_the_whole_image():
    view = random_view(blocks=3, channels=8)
    img = smooth_image(61, 90, seed=3)
    plan = tiles.least_computed(61, 90, view.radius, 40 * 70)
    assert plan.rows[0].clen != plan.cols[0].clen  # cores of other sizes across than down
    up = TiledUpscaler(TorchBackend(random_view(blocks=3, channels=8)), margin=view.radius)
    up.plan = lambda height, width: plan
    out, _ = up.run_to_array(Planes(img), np.float32)
    assert np.abs(out - _whole(view, img)).max() <= 1e-5


def test_unbalanced_plan_keeps_the_exact_window():
    plan = tiles.plan(2000, 3000, 512, 40, balance=False)
    assert plan.window_shape == (592, 592)
    assert tiles.plan(2000, 3000, 512, 40).window_shape[0] < 592  # balanced: 4 cores of 500


def test_an_engine_window_too_short_for_the_grid_is_named_as_the_engine_takes_it():
    """The refusal named the window cut to the image's side modulo the grid (13, 16 or 17 pixels for
    sides of 37, 40 and 41), not the engine's 20."""
    for side, cut in ((37, 13), (40, 16), (41, 17)):
        with pytest.raises(tiles.WindowTooShort, match=f"the engine's 20-pixel windows \\(at most {cut} on a side of "
                                                       f"{side}, to end on this network's 8-pixel grid\\)"):
            tiles.plan(side, side, 4, 8, False, grid=8)
