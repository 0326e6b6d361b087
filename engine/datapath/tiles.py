"""Tile planner: static-shape LR windows whose cores partition the image.

Along each axis the cores are as many as `core` requires but equal in size (so windows are no
larger than needed), and a window is `core + 2 * margin` long (or the whole axis when the axis
is shorter). Core i covers [i*core, (i+1)*core) clipped to the image; its window is centred on it
and then shifted inward so it lies inside the image. A window therefore never needs padding:
where it touches the image border the network's zero padding falls on the same pixels as in a
whole-image pass, and everywhere else the core has at least `margin` real pixels of context.
With margin >= the receptive-field radius a tiled run equals the whole-image run.

A community model may need sides of at least `minimum` and multiples of `multiple_of`: windows
are lengthened to meet them (more context, never padding). An axis that is no such multiple has
no window of its own length; its windows are the longest allowed, with cores small enough that
each keeps its full margin, or, where no allowed window holds a core and both margins, two
windows from the ends whose cores meet in the middle (such an axis has no whole-image pass to equal).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """One axis of a tile: the window [w0, w0+wlen) read, the core [c0, c0+clen) kept."""

    w0: int
    wlen: int
    c0: int
    clen: int


@dataclass(frozen=True)
class Tile:
    row: int          # index of the band of cores this tile belongs to
    y: Span
    x: Span

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) in LR pixels."""
        return self.y.w0, self.x.w0, self.y.wlen, self.x.wlen

    @property
    def core(self) -> tuple[int, int, int, int]:
        return self.y.c0, self.x.c0, self.y.clen, self.x.clen

    @property
    def core_in_window(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the core relative to the window."""
        return self.y.c0 - self.y.w0, self.x.c0 - self.x.w0, self.y.clen, self.x.clen


class WindowTooShort(ValueError):
    """An engine's fixed window cannot hold a core, its margins and the network's grid."""


def allowed_side(side: int, multiple_of: int = 1, minimum: int = 1) -> int:
    """The shortest window side >= `side` the network takes: at least `minimum`, a multiple of
    `multiple_of` (the size requirements a community model states; 1 and 1 for srtrt's own)."""
    multiple_of = max(multiple_of, 1)
    return -(-max(side, minimum, 1) // multiple_of) * multiple_of


def plan_axis(length: int, core: int, margin: int, balance: bool = True, multiple_of: int = 1,
              minimum: int = 1, grid: int = 1) -> list[Span]:
    """Spans along one axis. `multiple_of`, `minimum`: window lengths the network requires to be
    multiples of / at least (pixel-unshuffle, attention windows, downsampling U-Nets); met by the
    windows' shapes, never by padding. `grid`: a network that takes any length but pads its input to
    multiples of `grid` inside its forward (registry.ModelFacts.grid): its windows start on the grid."""
    if length <= 0:
        raise ValueError(f"image side must be positive, got {length}")
    if core <= 0 or margin < 0:
        raise ValueError(f"core must be > 0 and margin >= 0 (got core={core}, margin={margin})")
    if grid > 1 and multiple_of == 1:
        return _plan_on_grid(length, core, margin, grid, minimum, balance)
    if length < allowed_side(1, multiple_of, minimum):
        raise ValueError(f"image side {length} is below the network's smallest window "
                         f"{allowed_side(1, multiple_of, minimum)}")
    longest = length // multiple_of * multiple_of  # the longest window the axis holds
    fitted = longest - 2 * margin  # the longest core such a window holds with a full margin each side
    if length <= core + 2 * margin and longest == length:
        return [Span(0, length, 0, length)]  # one window of the axis' own size covers it
    if longest < length:  # no multiple the network takes: windows shorter than the axis
        half = -(-length // 2)
        if fitted < 1 or (length <= core + 2 * margin and longest - half >= margin):
            # Two windows of the longest allowed length, one from each end, cores meeting in the
            # middle: each core has longest - length/2 pixels of context on its inner side (all
            # there is when no allowed window holds a core and both margins).
            return [Span(0, longest, 0, half), Span(length - longest, longest, half, length - half)]
        if length <= core + 2 * margin:
            core = fitted  # more, smaller cores: each gets its full margin
    # Balance the cores: as many as `core` needs, but equal-sized, so the windows shrink to the
    # smallest that covers the axis (less margin to recompute; never larger than asked, so
    # the axis still needs more than one).
    def balanced(core: int) -> int:
        return -(-length // -(-length // core)) if balance else core

    core = balanced(core)
    if longest < length and allowed_side(core + 2 * margin, multiple_of, minimum) > longest:
        core = balanced(fitted)  # the axis' longest window cannot hold this core and both margins
    # A network that takes multiples of N downsamples by N (pixel-unshuffle, strided U-Net levels,
    # pooling grids): it commutes with shifts of N pixels only, so where a whole-image pass exists to
    # equal, cores and margins are multiples of N and every window starts on the image's grid
    # (not for an engine built for one window, `balance=False`: its window is core + 2 * margin as asked).
    step = multiple_of if longest == length and balance else 1
    core, pad = (-(-n // step) * step for n in (core, margin))
    window = min(allowed_side(core + 2 * pad, multiple_of, minimum), longest)
    if window == length:
        return [Span(0, length, 0, length)]
    spans = []
    for c0 in range(0, length, core):
        clen = min(core, length - c0)
        w0 = min(max(c0 - pad, 0), length - window)
        spans.append(Span(w0, window, c0, clen))
    return spans


def _plan_on_grid(length: int, core: int, margin: int, grid: int, minimum: int, balance: bool) -> list[Span]:
    """Spans for a network that pads its input at the end to a multiple of `grid` inside its forward
    (SwinIR's attention windows, MoESR's pixel-unshuffle). It computes on a grid from the input's
    origin, so a window starting off the image's grid computes other values than the whole image
    there (MoESR: 7 levels of 255 in fp32 at "exact" tiles). Every window starts on the grid (its
    core's start less the margin, rounded down to it) and all are as long as the last, which ends
    where the image does and so is padded as the whole image is; the others' padding lies past
    their margins. The rounding costs a window up to 2 * (grid - 1) pixels, not cores and margins
    rounded up to the grid (GRL's 64: windows 5.5x the image's pixels). `balance=False` (an engine
    built for windows of core + 2 * margin): windows no longer than that, their cores shrunk to fit."""
    if length <= max(core + 2 * margin, minimum):
        return [Span(0, length, 0, length)]
    if balance:
        core = -(-length // -(-length // core))  # balanced, as plan_axis balances
        window = max(core + 2 * margin + grid - 1, minimum)  # a start rounded down by up to grid - 1
        window += (length - window) % grid  # as long as the image modulo the grid: the last window ends on its end
    else:
        engine = window = core + 2 * margin  # the longest window the engine takes
        window -= (window - length) % grid  # the longest as long as the image modulo the grid
        core = window - 2 * margin - (grid - 1)
        if core < 1 or window < minimum:
            raise WindowTooShort(f"the engine's {engine}-pixel windows (at most {window} on a side of {length}, to end "
                                 f"on this network's {grid}-pixel grid) cannot hold a core, {margin}-pixel margins "
                                 "and a start on the grid")
    if window >= length:
        return [Span(0, length, 0, length)]
    return [Span(min(max((c0 - margin) // grid * grid, 0), length - window), window, c0, min(core, length - c0))
            for c0 in range(0, length, core)]


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    core: int
    margin: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def window_shape(self) -> tuple[int, int]:
        """The one (height, width) every window of this image has."""
        return self.rows[0].wlen, self.cols[0].wlen

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def computed_pixels(self) -> int:
        """LR pixels the windows compute in all: the cores and the margins recomputed around them."""
        return len(self) * self.window_shape[0] * self.window_shape[1]

    def __iter__(self):
        """Tiles in raster order, so cores complete whole row bands one after another."""
        for r, ys in enumerate(self.rows):
            for xs in self.cols:
                yield Tile(r, ys, xs)


def plan(height: int, width: int, core: int, margin: int, balance: bool = True, multiple_of: int = 1,
         minimum: int = 1, core_width: int | None = None, grid: int = 1) -> TilePlan:
    """Plan tiles for an LR image; `core <= 0` means the whole image as one window.

    `balance=False` keeps every window exactly `core + 2 * margin` (engines tuned for one shape);
    `multiple_of`, `minimum`: every window side a multiple of it / at least it (the network's size
    requirements; a window longer than `core + 2 * margin` only gives its core more context).
    `core_width`: the columns' core where it differs from the rows' (`least_computed`); `grid`: see plan_axis.
    """
    if core <= 0:
        core = max(height, width)
    return TilePlan(height, width, core, margin,
                    tuple(plan_axis(height, core, margin, balance, multiple_of, minimum, grid)),
                    tuple(plan_axis(width, core_width or core, margin, balance, multiple_of, minimum, grid)))


def least_computed(height: int, width: int, margin: int, window_pixels: int, multiple_of: int = 1,
                   minimum: int = 1, grid: int = 1) -> TilePlan | None:
    """The plan whose windows, at most `window_pixels` each, compute the fewest pixels in all (cores
    and the margins recomputed around them), or None where no window fits.

    A budget bounds a window's pixels, not its sides: square cores of the budget's side may split
    an axis unevenly and leave room unused. RRDBNet's 2048x1536 image in windows of at most 174,662
    pixels: 24 windows of 392x350 from square 400 px cores, 20 of 392x418 here.
    """
    best, best_pixels = None, 0
    on_grid = 2 * (grid - 1) if grid > 1 and multiple_of == 1 else 0  # what _plan_on_grid adds to a window
    for rows in range(1, height + 1):
        core_height = -(-height // rows)
        if rows > 1 and core_height < 16:
            break  # cores this thin recompute more margin than they keep
        window_height = min(allowed_side(core_height + 2 * margin, multiple_of, minimum) + on_grid, height)
        core_width = window_pixels // window_height - 2 * margin - on_grid
        if core_width < 1:
            continue
        columns = -(-width // core_width)
        estimate = rows * columns * window_height * min(-(-width // columns) + 2 * margin, width)
        if best is not None and estimate >= best_pixels:
            continue  # the balanced windows' size before the model's rounding: no plan needed to rule it out
        candidate = plan(height, width, core_height, margin, True, multiple_of, minimum, core_width=core_width, grid=grid)
        h, w = candidate.window_shape
        if h * w <= window_pixels and (best is None or candidate.computed_pixels < best_pixels):
            best, best_pixels = candidate, candidate.computed_pixels
    return best
