"""Community models into srtrt: read (srtrt.community), measured (srtrt.receptive_field), registered
(registry.ModelFacts on a nets.CommunityView). Nothing after this module asks spandrel anything.

The tile margin is decided once per weights file and cached by its sha256:
- the receptive-field radius is measured from the network; where it is at most AFFORDABLE_RADIUS
  LR pixels (Compact 18, SPAN, SRResNet 40) the margin is the radius and tiles are exact, once
  windows of exactly that margin, lying inside reference content, equal the whole-image pass in
  float64 (a max pooling hides paths from the one-pixel probe: SAFMN);
- where it is larger (a 23-block RRDBNet reaches ~349) or unbounded (global pooling, attention),
  the margin is the smallest of MARGIN_CANDIDATES whose tiled 8-bit output stays within one level
  of a whole-image pass on REFERENCE_SIDE-pixel reference content on >= 99.9 % of samples, and the
  run says so with the figure. `--margin` overrides either.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import atomic, community, receptive_field
from .cache import cache_dir
from .errors import CannotWrite, SrtrtError
from .nets import CommunityView
from .registry import ModelFacts
from .sidecar import read_versioned_json

AFFORDABLE_RADIUS = 64      # LR pixels of margin per side worth recomputing for exact tiles
# The margin search: 16 windows of core 32 on 128-pixel content, so every candidate below 48 leaves
# seams to judge (a larger one would make a single window). First use of a 23-block RRDBNet costs
# about a minute on 2 cores, once per weights file.
MARGIN_CANDIDATES = (4, 8, 12, 16, 24, 32, 40)
REFERENCE_SIDE = 128        # LR side of the reference content the margin is measured on
MEASURE_CORE = 32           # small cores: many seams per reference image, so the figure is a worst case
# A tiled pass at margin = radius differing from the whole-image pass by more than this, both in
# float64 (whose rounding is ~1e-15 here; fp32's, ~1e-6, would hide a small miss), is not exact.
EXACT_TOLERANCE = 1e-9
# Content past every side of a confirming window, so a path reaching beyond the margin finds input
# there (8: past a pooling cell or a dilation's gap), and such windows per axis (content at 4 places).
CONFIRM_BEYOND = 8
CONFIRM_WINDOWS_PER_AXIS = 2
# v2: an exact radius is confirmed by a tiled pass; v3: by windows inside the content (a v2 check could
# pass with every window touching the border, and margins above 48 made it one window); v4: with the
# grid a network pads its input to (measure_grid), on content whose windows it pads; v5: a pad seen in
# any layout (FDAT's (B, H, W, C)). Older entries are measured again.
TILING_KIND = "tiling-v5"
GRID_PROBE_STEPS = (0, 3, 8, 16, 24)  # LR sides probed for a pad to a grid (the smallest allowed side plus these)
SHEET_KIND = "sheet-gap-v1"  # measure_sheet_gap's cache entries
# spandrel architecture ids whose dynamic-shape graph is wrong or fails in OpenVINO (window partition
# traced at one size): exported per window shape straight away (export_isolated).
# GRL: both exporters fail, after 85-115 s on 2 cores.
STATIC_EXPORT_ONLY = frozenset({"SwinIR", "HAT", "GRL"})


def is_community_file(model) -> bool:
    """An existing model file without an srtrt sidecar; a missing one is reported by srtrt.checkpoint."""
    return isinstance(model, (str, os.PathLike)) and Path(model).is_file() and community.is_community_file(model)


def load_view(path, allow_noncommercial: bool = False) -> CommunityView:
    """The inference view of a community model file, its facts registered (measured on first use)."""
    model = community.load(path, allow_noncommercial)
    if model.input_channels != model.output_channels:
        raise SrtrtError(f"{model.architecture_name} maps {model.input_channels} channels to "
                         f"{model.output_channels}; srtrt runs image-to-image models of equal channels", path)
    module = model.module.eval()
    with warnings.catch_warnings():  # torch's forward-mode autodiff loads its decompositions with a deprecation note
        warnings.simplefilter("ignore", FutureWarning)
        tiling = receptive_field.cached(TILING_KIND, model.sha256, lambda: measure_tiling(model), _whole_tiling)
    facts = ModelFacts(
        architecture=model.architecture_id, scale=model.scale, channels=model.input_channels,
        feature_channels=activation_width(module, model.scale, model.input_channels, model.minimum,
                                          model.multiple_of),
        minimum=model.minimum, multiple_of=model.multiple_of,
        half=model.supports_half, bfloat16=model.supports_bfloat16, global_operations=model.global_operations,
        static_export_only=model.architecture_id in STATIC_EXPORT_ONLY,
        radius=tiling["radius"], margin=tiling["margin"], margin_figure=tiling.get("figure"), grid=tiling["grid"],
        sheet_gap=receptive_field.cached(SHEET_KIND, model.sha256, lambda: {"gap": measure_sheet_gap(model)},
                                         _whole_gap)["gap"])
    # The source and the opt-in travel with the view: a child process loads the file again (ONNX export).
    view = CommunityView(module, facts, model.sha256, Path(path).resolve(), allow_noncommercial)
    view.int8_calibration = stored_calibration(model.sha256)
    return view


def _whole_gap(entry: dict) -> bool:
    return type(entry.get("gap")) is int and entry["gap"] >= 0


def measure_sheet_gap(model: community.CommunityModel) -> int:
    """LR pixels between images sharing a sheet (engine/datapath/sheets.py), or 0 where this model's
    images never share one. The widest zero border one of its nn.Conv2d reads, at that conv's
    resolution, found with one small pass; then confirmed: three images on a sheet, every conv's
    input masked, each equal to its own whole-image pass in float64. A model with global operations,
    another padding than zeros, or a step the masks do not reach (a convolution written inline, a
    pooling, a padding inside the forward) fails the confirmation and runs its images one by one."""
    from srtrt.engine.datapath import sheets
    from srtrt.engine.datapath.tiles import allowed_side

    if model.global_operations:
        return 0
    module, step, channels = copy.deepcopy(model.module).eval().double(), max(model.multiple_of, 1), model.input_channels
    side = allowed_side(32, step, model.minimum)
    reach = [1]

    def record(conv, inputs):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            reach.append(-1)  # reflect/replicate/circular padding, or "same"/"valid" by name: not handled
            return
        finer = inputs[0].shape[2] / side  # this layer's pixels per LR pixel
        reach.append(int(np.ceil(max(conv.padding) / finer)))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.rand(1, channels, side, side, dtype=torch.float64))
    finally:
        for hook in hooks:
            hook.remove()
    if min(reach) < 0:
        return 0
    gap = allowed_side(max(reach), step)
    base = allowed_side(max(12, model.minimum), step)
    sizes = [(base, base + step), (base + 2 * step, base), (base + step, base + 2 * step)]
    sheet = (allowed_side(2 * (base + 2 * step) + gap, step),) * 2
    placed = sheets.pack(sizes, sheet, gap, step)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(1, channels, h, w, generator=generator, dtype=torch.float64) for h, w in sizes]
    x, mask = torch.zeros(1, channels, *sheet, dtype=torch.float64), torch.zeros(1, 1, *sheet, dtype=torch.float64)
    for p in placed:
        x[..., p.top:p.top + p.height, p.left:p.left + p.width] = images[p.index]
        mask[..., p.top:p.top + p.height, p.left:p.left + p.width] = 1
    try:
        with torch.inference_mode(), sheets.masking(module, mask):
            out = module(x)
    except RuntimeError:  # a mask that fits no layer's input: a forward that pads its input first (SRFormer)
        return 0
    if len(placed) < len(sizes) or out.shape[-1] != sheet[1] * model.scale:
        return 0
    s = model.scale
    with torch.inference_mode():
        for p in placed:
            whole = module(images[p.index])
            cut = out[..., p.top * s:(p.top + p.height) * s, p.left * s:(p.left + p.width) * s]
            if (cut - whole).abs().max().item() > EXACT_TOLERANCE:
                return 0
    return gap


def _whole_tiling(entry: dict) -> bool:
    """A cached measure_tiling result of the right shape (an entry edited or damaged is measured again)."""
    radius, margin, figure, grid = entry.get("radius"), entry.get("margin"), entry.get("figure"), entry.get("grid")
    return ((radius is None or type(radius) is int and radius >= 0) and type(margin) is int and margin >= 0
            and (figure is None or isinstance(figure, dict)) and type(grid) is int and 1 <= grid <= 1024)


CALIBRATION_FORMAT, CALIBRATION_VERSION = "srtrt-int8-calibration", 1


def calibration_dir() -> Path:
    """The cache folder holding community models' int8 ranges, one file per model's sha256."""
    return cache_dir("int8-calibration")


def _calibration_path(sha256: str) -> Path:
    return calibration_dir() / f"{sha256}.json"


def store_calibration(sha256: str, record: dict) -> Path:
    """Keep `srtrt calibrate`'s int8 ranges for a community model file, by its weights' sha256: the
    user's file (and the folder it lies in) is never written to. Returns where they are kept."""
    path = _calibration_path(sha256)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
                                            "sha256": sha256, "int8_calibration": record}, indent=1))
    except OSError as e:
        raise CannotWrite.of(e, path) from None
    return path


def stored_calibration(sha256: str) -> dict | None:
    """The int8 ranges `srtrt calibrate` kept for these weights, or None (none, or not readable as ours)."""
    try:
        stored = read_versioned_json(_calibration_path(sha256), CALIBRATION_FORMAT, CALIBRATION_VERSION,
                                     "int8 calibration")
    except SrtrtError:
        return None
    from srtrt.engine.toolchain.quantize import usable_calibration

    record = stored.get("int8_calibration")
    return record if stored.get("sha256") == sha256 and usable_calibration(record) else None


def activation_width(module: nn.Module, scale: int, channels: int, minimum: int = 1, multiple_of: int = 1) -> int:
    """The model's activation memory per LR pixel, as the channel count of an SRResNet-like network
    whose widest maps are at the output's resolution (what backends.base.activation_bytes_per_pixel
    assumes): the largest conv or linear output, in values per LR pixel at its own resolution,
    over scale^2. Measured with one small forward pass: RRDBNet's 192-channel concatenations sit
    at the LR resolution and weigh less than its 64-channel maps at x4 (its width is 64, not 192)."""
    step = max(multiple_of, 1)
    side = -(-max(16, minimum) // step) * step
    widest = [0.0]

    def record(layer, inputs, output):
        if isinstance(output, torch.Tensor):
            widest[0] = max(widest[0], output.numel() / (side * side))

    hooks = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module(torch.rand(1, channels, side, side))
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, round(widest[0] / scale**2)) if widest[0] else 64


class _PadSeen(Exception):
    """Raised by _EndPads at a forward's first pad of its input: the rest of the forward is not needed."""


class _EndPads(torch.overrides.TorchFunctionMode):
    """Records the size a forward pads an input of `side` x `side` to at its end (bottom and right):
    the first F.pad of a tensor with two such dims, whatever its layout (FDAT pads a (B, H, W, C) view
    inside its window attention), padding both at their ends alike and nothing else."""

    def __init__(self, side: int):
        super().__init__()
        self.side, self.padded = side, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.pad, torch._C._nn.pad) and args and isinstance(args[0], torch.Tensor):
            x, pad = args[0], list(args[1] if len(args) > 1 else kwargs.get("pad", ()))
            # pad[2i], pad[2i + 1]: before and after along dim -1 - i
            pairs = [(x.shape[-1 - i], pad[2 * i], pad[2 * i + 1]) for i in range(min(len(pad) // 2, x.dim()))]
            spatial = [(before, after) for size, before, after in pairs if size == self.side]
            others = [(before, after) for size, before, after in pairs if size != self.side]
            if (len(pad) % 2 == 0 and len(spatial) == 2 and spatial[0] == spatial[1] and spatial[0][0] == 0
                    and spatial[0][1] >= 0 and all(p == (0, 0) for p in others)):
                self.padded = self.side + spatial[0][1]
                raise _PadSeen
        return func(*args, **kwargs)


def measure_grid(model: community.CommunityModel) -> int:
    """The grid a network pads its input to inside its forward, or 1: SwinIR pads to its attention
    windows (8), MoESR to its pixel-unshuffle (2), and spandrel calls their sides free. Such a network
    computes on a grid from its input's origin, so tile windows must start on it (tiles.plan_axis).
    A pad is seen as an end-only F.pad of the input's size, or as a first convolution reading a larger
    input than the network was given (ATD pads by concatenating a flipped copy). Each probed side
    counts as padded to itself where neither is seen; the grid is the greatest common divisor of
    what the sides were padded to (1 for a network that pads to nothing)."""
    import math

    from srtrt.engine.datapath.tiles import allowed_side

    module = model.module.eval()
    smallest = allowed_side(9, model.multiple_of, model.minimum)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    padded_to = []
    for step in GRID_PROBE_STEPS:
        side = allowed_side(smallest + step, model.multiple_of, model.minimum)
        watch = _EndPads(side)
        first_conv: list[int] = []

        def read(_conv, inputs, watch=watch, first_conv=first_conv):
            if not first_conv:
                first_conv.append(inputs[0].shape[-1])
                if inputs[0].shape[-1] == inputs[0].shape[-2] > watch.side:  # padded before its first conv
                    watch.padded = inputs[0].shape[-1]
                    raise _PadSeen
        hooks = [conv.register_forward_pre_hook(read) for conv in convs]
        try:
            with torch.inference_mode(), watch:
                module(torch.rand(1, model.input_channels, side, side, generator=torch.Generator().manual_seed(side)))
        except _PadSeen:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        padded_to.append(watch.padded or side)
    return max(math.gcd(*padded_to), 1)


def measure_tiling(model: community.CommunityModel) -> dict:
    """{"radius": int | None, "margin": int, "figure": dict | None, "grid": int} for the cache."""
    module = model.module.eval()
    radius, grid = None, measure_grid(model)
    if not model.global_operations:
        # Measured only as far as an affordable radius: a larger field is None ("beyond what was measured").
        radius = receptive_field.measure_radius(module, model.scale, model.input_channels,
                                                limit=2 * AFFORDABLE_RADIUS + 8, multiple_of=model.multiple_of,
                                                minimum=model.minimum)
        if radius is not None and radius <= AFFORDABLE_RADIUS:
            # The field is measured from one input pixel, and a max pooling passes a pixel on only where
            # it is its cell's maximum (SAFMN): windows of that margin confirm what exact tiles promise.
            if _tiles_equal_whole(module, radius, model.input_channels, model.multiple_of, model.minimum, grid):
                return {"radius": radius, "margin": radius, "figure": None, "grid": grid}
            radius = None  # a path the one-pixel probe did not see: the margin is measured like a global model's
    side = margin_reference_side(model.multiple_of, model.minimum, grid)
    reference = reference_image(side, model.input_channels, model.multiple_of)
    run = _WindowRunner(module, model.multiple_of, model.minimum, grid)
    margin, figure = receptive_field.measure_margin(run.tiled, run.whole, reference, MARGIN_CANDIDATES)
    if margin is None:  # nothing within 1 level: the largest tried, and the figure says how far off it is
        margin = figure["margin"]
    return {"radius": radius, "margin": margin, "figure": figure, "grid": grid}


def _tiles_equal_whole(module: nn.Module, margin: int, channels: int, multiple_of: int = 1, minimum: int = 1,
                       grid: int = 1) -> bool:
    """Whether windows with `margin` pixels of context equal the whole-image pass, in float64.

    Only windows inside the content are compared: a side that touches the border has the same zero
    padding as the whole image there and tests nothing, and those windows are what the check is about."""
    plan = _confirmation_plan(margin, multiple_of, minimum, grid)
    inside = set(_windows_inside(plan.rows, plan.height))
    double = _WindowRunner(copy.deepcopy(module).double(), multiple_of, minimum, grid)
    x = reference_image(plan.height, channels, multiple_of).double()
    whole = double.whole(x)
    s = whole.shape[-1] // plan.width
    for tile in plan:
        if tile.y in inside and tile.x in inside:
            (y0, ylen), (x0, xlen) = (tile.y.c0, tile.y.clen), (tile.x.c0, tile.x.clen)
            expected = whole[..., y0 * s:(y0 + ylen) * s, x0 * s:(x0 + xlen) * s]
            if (double.core(x, tile) - expected).abs().max().item() > EXACT_TOLERANCE:
                return False
    return True


def margin_reference_side(multiple_of: int, minimum: int, grid: int = 1) -> int:
    """The side of the content the margin is measured on: REFERENCE_SIDE, or more where a model's
    window sides (multiples of 32, a minimum of 128) would make the largest candidate's plan one
    window, equal to the whole image by construction."""
    return _content_plan(max(MARGIN_CANDIDATES), multiple_of, minimum, lambda plan: len(plan.rows) >= 2, grid).height


def _confirmation_plan(margin: int, multiple_of: int, minimum: int, grid: int = 1):
    """The runtime's plan on the smallest content with CONFIRM_WINDOWS_PER_AXIS windows per axis inside
    it (a margin near half the content would otherwise leave no window inside, or make the plan one window)."""
    return _content_plan(margin, multiple_of, minimum,
                         lambda plan: len(_windows_inside(plan.rows, plan.height)) >= CONFIRM_WINDOWS_PER_AXIS, grid)


def _content_plan(margin: int, multiple_of: int, minimum: int, enough, grid: int = 1):
    """The runtime's plan (MEASURE_CORE cores, `margin`) on the smallest square content from
    REFERENCE_SIDE up, in steps the model takes, for which `enough(plan)` holds. For a network that
    pads to a `grid`, a side one past the grid: every window is then padded inside the network, as
    most images' windows are (a side on the grid would test windows it does not pad)."""
    from srtrt.engine.datapath import tiles

    pads = grid > 1 and multiple_of == 1  # a network that takes only multiples is never padded
    side = tiles.allowed_side(REFERENCE_SIDE, multiple_of, minimum) + (1 if pads else 0)
    while not enough(plan := tiles.plan(side, side, MEASURE_CORE, margin, multiple_of=multiple_of, minimum=minimum,
                                        grid=grid)):
        side += grid if pads else max(multiple_of, 1)
    return plan


def _windows_inside(spans, length: int) -> list:
    """The spans whose windows have CONFIRM_BEYOND pixels of content past both ends."""
    return [s for s in spans if s.w0 >= CONFIRM_BEYOND and s.w0 + s.wlen <= length - CONFIRM_BEYOND]


def reference_image(side: int, channels: int, multiple_of: int = 1, seed: int = 0) -> torch.Tensor:
    """Photo-like content (1, C, side, side) in [0, 1]: smooth shading, edges and fine texture, so
    a margin that passes here has seen the structures seams show on. Deterministic."""
    side = -(-side // multiple_of) * multiple_of
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    planes = []
    for _ in range(channels):
        shading = sum(rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y)
                                                     + rng.uniform(0, 6.3)) for _ in range(4))
        edges = sum(rng.uniform(0.1, 0.25) * (np.cos(rng.uniform(0, 3.2)) * (x - rng.uniform(0, 1))
                                              + np.sin(rng.uniform(0, 3.2)) * (y - rng.uniform(0, 1)) > 0)
                    for _ in range(6))
        texture = 0.08 * rng.standard_normal((side, side))
        planes.append(0.5 + shading + edges - 0.4 + texture)
    image = np.clip(np.stack(planes), 0, 1).astype(np.float32)
    return torch.from_numpy(image)[None]


class _WindowRunner:
    """Whole-image and tiled passes of a module in its own dtype (fp32; float64 to confirm exact tiles),
    tiled exactly as the runtime tiles
    (engine/datapath/tiles.py: the same planner, the same window shapes)."""

    def __init__(self, module: nn.Module, multiple_of: int, minimum: int, grid: int = 1):
        self.module, self.multiple_of, self.minimum, self.grid = module, multiple_of, minimum, grid

    @torch.inference_mode()
    def whole(self, lr: torch.Tensor) -> torch.Tensor:
        return self.module(lr).clamp(0, 1)

    @torch.inference_mode()
    def tiled(self, lr: torch.Tensor, margin: int) -> torch.Tensor:
        from srtrt.engine.datapath import tiles

        _, _, h, w = lr.shape
        plan = tiles.plan(h, w, MEASURE_CORE, margin, multiple_of=self.multiple_of, minimum=self.minimum, grid=self.grid)
        out, s = None, None
        for tile in plan:
            core = self.core(lr, tile)
            if out is None:
                s = core.shape[-1] // tile.x.clen
                out = torch.empty(lr.shape[0], core.shape[1], h * s, w * s, dtype=core.dtype)
            c0y, c0x = tile.y.c0, tile.x.c0
            out[:, :, c0y * s:(c0y + tile.y.clen) * s, c0x * s:(c0x + tile.x.clen) * s] = core
        return out

    @torch.inference_mode()
    def core(self, lr: torch.Tensor, tile) -> torch.Tensor:
        """The output over `tile`'s core, from a pass over its window alone."""
        top, left, wh, ww = tile.window
        y = self.module(lr[:, :, top:top + wh, left:left + ww]).clamp(0, 1)
        s = y.shape[-1] // ww
        ct, cl, ch, cw = tile.core_in_window
        return y[:, :, ct * s:(ct + ch) * s, cl * s:(cl + cw) * s]
