"""Receptive fields and tile margins measured from the network itself, and a small cache for them.

`measure_radius` finds how far (in LR pixels) one input pixel's influence reaches in the output of
any image-to-image SR module; `measure_margin` finds the smallest tile margin whose tiled 8-bit
output matches a whole-image pass; `cached` keeps such results per weights file.

How the radius is measured: forward-mode autodiff (a JVP) in fp64. The tangent is non-zero at one
LR input pixel p only, so the output tangent is exactly the Jacobian column of p: the set of HR
outputs p influences. Its extent in LR units (HR index // scale) is the radius: every output phase
is in that set at once (no sampling of sub-pixel phases), and by translation equivariance "outputs
p reaches" and "inputs one output reads" have the same extent. Compared with the alternatives:

  * reverse mode (the gradient of one output) keeps every activation of the graph for the backward
    pass: on the order of 100 GB for a 23-block RRDBNet at 512x512 in fp64. A JVP carries one
    tangent beside each live activation, so memory stays about twice that of plain inference;
  * a finite difference f(x + d) - f(x) needs no autodiff but cancels: an influence below one ulp
    of the output reads as zero, and influence decays geometrically with distance (1e-8 at the
    edge of a 4-block SRResNet's field, 1e-50 at a 3-block RRDBNet's). A JVP holds the influence
    itself; fp64 keeps it down to 1e-308, and a rescaled second pass (see `_support`) further.

Zero tangent means no influence except for exact cancellation, which random inputs and random
tangent directions make a measure-zero event; the union over two random inputs keeps ReLU/PReLU
paths that one input happens to switch off. A module whose ops have no forward-mode formula falls
back to reverse mode (one backward over all scale*scale phases of the centre LR pixel).

Cost stays bounded by probing in two steps. Thin strips (a few pixels wide) come first, doubling
in length until the support stays clear of their ends: a strip's dependency graph is a subgraph of
the full image's, so the reach measured in it is a lower bound, and a strip of the limit's length
whose support still reaches its ends proves the field is at least that long (global pooling,
global attention, or simply too deep: None) for a small fraction of a square's cost. Then a square
just larger than that bound gives the exact value; it doubles (up to the limit) only while the
support still touches the square's border, where zero padding could have cut it short.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from srtrt import atomic
from srtrt.cache import cache_dir, spilled
from srtrt.engine.datapath.tiles import allowed_side

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

START_SIDE = 32         # first strip length and smallest square: tiny inputs can change what window nets do
STRIP_WIDTH = 8         # the strips' short side (before the module's own size rules)
SEEDS = (0, 1)          # random inputs whose supports are united
RESOLVED_ABOVE = 1e-250  # a support whose faintest influence is above this has lost nothing to underflow
LIFT_TO = 1e280          # where a rescaled pass puts the strongest influence (headroom below 1.8e308)
WITHIN_1_LEVEL = 0.999  # fraction of 8-bit samples that must be within one level
CACHE_KIND = "receptive_field"
CACHE_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- radius -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Reach:
    """Support of one probe along (rows, cols): the farthest LR distance from the centre, and
    whether it touches the input's border there (then zero padding may have cut it short)."""

    reach: tuple[int, int]
    touches: tuple[bool, bool]
    resolved: bool = True  # False: influence near fp64's underflow, the support may be cut short


def _largest_allowed(limit: int, multiple_of: int, minimum: int) -> int | None:
    side = limit // multiple_of * multiple_of
    return side if side >= max(minimum, 1) else None


def _axis_reach(positions: torch.Tensor, centre: int, length: int) -> tuple[int, bool]:
    if positions.numel() == 0:
        return 0, False
    lo, hi = int(positions.min()), int(positions.max())
    return max(centre - lo, hi - centre), lo == 0 or hi == length - 1


def _reach_of(mask: torch.Tensor, centre: tuple[int, int], scale: int, lr_shape: tuple[int, int],
              resolved: bool) -> _Reach:
    """`mask`: (H, W) non-zero support, at `scale` times the LR grid (1 for input supports)."""
    rows = torch.nonzero(mask.any(1)).flatten() // scale
    cols = torch.nonzero(mask.any(0)).flatten() // scale
    (ry, ty), (rx, tx) = _axis_reach(rows, centre[0], lr_shape[0]), _axis_reach(cols, centre[1], lr_shape[1])
    return _Reach((ry, rx), (ty, tx), resolved)


def _faintest(values: torch.Tensor) -> float:
    """The smallest non-zero magnitude (inf when none); NaN when any value is not finite."""
    if not bool(torch.isfinite(values).all()):
        return math.nan
    magnitudes = values.abs()
    return float(magnitudes[magnitudes != 0].min()) if bool((magnitudes != 0).any()) else math.inf


def _support(derivative: Callable[[float], torch.Tensor | None], centre: tuple[int, int], scale: int,
             lr_shape: tuple[int, int]) -> _Reach:
    """The reach of `derivative(factor)` (linear in `factor`), made sure to be resolved in fp64.

    Influence decays geometrically with distance (1e-50 at the edge of a 3-block RRDBNet's field,
    some 1e-350 extrapolated to 23 blocks), so the edge of a deep field can underflow to zero. When the
    faintest influence comes near that floor, the pass is repeated with the seed scaled by a
    power of two (exact) that lifts the strongest influence near fp64's ceiling, which buys some
    250 more orders of magnitude; when even that is not enough the support is marked unresolved.
    """
    values = derivative(1.0)
    if values is None:  # the output does not depend on the input at all
        return _Reach((0, 0), (False, False))
    faintest = _faintest(values)
    if faintest < RESOLVED_ABOVE:
        peak = float(values.abs().max())
        values = derivative(math.ldexp(1.0, min(1000, math.floor(math.log2(LIFT_TO / peak)))))
        faintest = _faintest(values)
    resolved = faintest >= RESOLVED_ABOVE  # False for NaN: an overflow somewhere
    mask = (values != 0).flatten(0, -3).any(0)  # NaN counts as influence, never as none
    return _reach_of(mask, centre, scale, lr_shape, resolved)


def _only_tensor(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the module returned {type(out).__name__}, not a tensor")
    return out


class Unmeasurable(Exception):
    """The network runs, but neither forward- nor reverse-mode differentiation goes through it."""


class _Prober:
    """An fp64 eval copy of the module and the probes run on it."""

    def __init__(self, module: torch.nn.Module, scale: int, channels: int):
        tensors = [*module.parameters(), *module.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self.model = copy.deepcopy(module).to(torch.float64).eval().requires_grad_(False)
        self.scale, self.channels = scale, channels
        self.forward_mode: bool | None = None  # decided by the first probe

    def __call__(self, shape: tuple[int, int], seed: int) -> _Reach:
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, self.channels, *shape, generator=gen, dtype=torch.float64).to(self.device)
        centre = (shape[0] // 2, shape[1] // 2)
        if self.forward_mode is None:
            try:
                reach = self._forward(x, gen, centre)
                self.forward_mode = True
                return reach
            except (NotImplementedError, RuntimeError):  # an op without a forward-mode formula
                self.forward_mode = False
        if self.forward_mode:
            return self._forward(x, gen, centre)
        try:
            return self._reverse(x, gen, centre)
        except RuntimeError as e:  # neither mode: an op without a forward formula, and an in-place write
            raise Unmeasurable(str(e)) from None  # reverse mode needs (RealPLKSR with DySample has both)

    def _random(self, shape, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(self.device)

    def _check(self, out: torch.Tensor, shape: tuple[int, ...]) -> None:
        want = (shape[-2] * self.scale, shape[-1] * self.scale)
        if tuple(out.shape[-2:]) != want:
            raise ValueError(f"output {tuple(out.shape[-2:])} for input {tuple(shape[-2:])} is not x{self.scale}")

    def _forward(self, x: torch.Tensor, gen: torch.Generator, centre: tuple[int, int]) -> _Reach:
        """The support of the input pixel `centre`'s influence on the (HR) output."""
        tangent = torch.zeros_like(x)
        tangent[0, :, centre[0], centre[1]] = self._random(self.channels, gen)  # random: channels never cancel

        def jvp(factor: float) -> torch.Tensor | None:
            with torch.no_grad(), fwAD.dual_level():  # clones: the module may write into its input
                out = _only_tensor(self.model(fwAD.make_dual(x.clone(), tangent * factor)))
                self._check(out, x.shape)
                return fwAD.unpack_dual(out).tangent

        return _support(jvp, centre, self.scale, tuple(x.shape[-2:]))

    def _reverse(self, x: torch.Tensor, gen: torch.Generator, centre: tuple[int, int]) -> _Reach:
        """The support of the gradient of the centre LR pixel's scale*scale outputs on the input."""
        leaf = x.requires_grad_(True)
        with torch.enable_grad():
            out = _only_tensor(self.model(leaf.clone()))  # the clone lets in-place first ops run
        self._check(out, x.shape)
        s, (cy, cx) = self.scale, centre
        cotangent = torch.zeros_like(out)
        phases = cotangent[0, :, cy * s:(cy + 1) * s, cx * s:(cx + 1) * s]
        phases.copy_(self._random(phases.shape, gen))

        def vjp(factor: float) -> torch.Tensor | None:
            return torch.autograd.grad(out, leaf, cotangent * factor, retain_graph=True, allow_unused=True)[0]

        return _support(vjp, centre, 1, tuple(x.shape[-2:]))

    def union(self, shape: tuple[int, int], axes: tuple[int, ...], seeds: tuple[int, ...]) -> tuple[int, bool, bool]:
        """Largest reach over random inputs along `axes`, whether any touched the border there (a
        touch is conclusive, so the remaining inputs are skipped) and whether all were resolved."""
        reach, resolved = 0, True
        for seed in seeds:
            probe = self(shape, seed)
            reach, resolved = max([reach] + [probe.reach[a] for a in axes]), resolved and probe.resolved
            if any(probe.touches[a] for a in axes):
                return reach, True, resolved
        return reach, False, resolved


def measure_radius(module: torch.nn.Module, scale: int, channels: int, *, limit: int = 512,
                   multiple_of: int = 1, minimum: int = 1) -> int | None:
    """Receptive-field radius in LR pixels of `module` (NCHW in, NCHW `scale` times larger out):
    the farthest LR distance, along rows or columns, between an output pixel's LR position and an
    input pixel it depends on. None when the field reaches the border of a `limit`-sided input
    (radius about limit / 2 or more: global operations, or too deep to measure within the limit),
    when its edge is too faint to resolve in fp64 (so it may be wider than it looks), or when no mode
    of differentiation goes through the network.

    Inputs are sides >= `minimum` and multiples of `multiple_of`. See the module docstring for the method.
    """
    longest = _largest_allowed(limit, multiple_of, minimum)
    if longest is None:
        return None
    probe = _Prober(module, scale, channels)
    start = allowed_side(min(START_SIDE, longest), multiple_of, minimum)
    try:
        return _measured(probe, start, longest, multiple_of, minimum)
    except Unmeasurable:  # no finite radius to vouch for: its margin is measured on a tiled pass instead
        return None


def _measured(probe: _Prober, start: int, longest: int, multiple_of: int, minimum: int) -> int | None:
    bound = 0
    for axis in (0, 1):
        reach = _strip_reach(probe, axis, start, longest, multiple_of, minimum)
        if reach is None:
            return None
        bound = max(bound, reach)
    # Just large enough that a field of the strips' reach stays clear of the border.
    side = min(allowed_side(max(start, 2 * bound + 3), multiple_of, minimum), longest)
    while True:
        reach, touched, resolved = probe.union((side, side), (0, 1), SEEDS)
        if not touched:
            return reach if resolved else None  # an unresolved edge may be cut short: no finite radius to vouch for
        if side == longest:
            return None
        side = _next_length(side, longest, multiple_of, minimum)


def _strip_reach(probe: _Prober, axis: int, length: int, longest: int, multiple_of: int, minimum: int) -> int | None:
    """A lower bound of the reach along `axis` from strips that double in length until the support
    stays clear of their ends; None when it still reaches them at `longest`. One random input
    suffices: a lower bound needs no union, and a touch is conclusive."""
    width = min(allowed_side(STRIP_WIDTH, multiple_of, minimum), longest)
    while True:
        shape = (length, width) if axis == 0 else (width, length)
        reach, touched, _ = probe.union(shape, (axis,), SEEDS[:1])  # cut short by underflow is still a lower bound
        if not touched:
            return reach
        if length == longest:
            return None
        length = _next_length(length, longest, multiple_of, minimum)


def _next_length(length: int, longest: int, multiple_of: int, minimum: int) -> int:
    """Twice `length`, or `longest` straight away when the doubling after that would pass it: 32,
    64, 136 for a limit of 136, not 32, 64, 128, 136 (a deep network touches each, and pays for each)."""
    doubled = allowed_side(2 * length, multiple_of, minimum)
    return longest if 2 * doubled > longest else doubled


# -- margin -------------------------------------------------------------------------------------

def _levels(output) -> np.ndarray:
    """An output tensor/array in [0, 1] -> its 8-bit levels (rounded, clamped), as int16."""
    if isinstance(output, torch.Tensor):
        output = output.detach().to("cpu", torch.float64).numpy()
    return np.clip(np.rint(np.asarray(output, dtype=np.float64) * 255.0), 0, 255).astype(np.int16)


def _figure(margin: int, tiled: np.ndarray, whole: np.ndarray) -> dict:
    if tiled.shape != whole.shape:
        raise ValueError(f"tiled output {tiled.shape} and whole output {whole.shape} differ in shape")
    diff = np.abs(tiled - whole)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"margin": int(margin), "max_level_diff": int(diff.max(initial=0)),
            "within_1_level": float(np.mean(diff <= 1)) if diff.size else 1.0,
            "psnr_db": math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)}


def measure_margin(run_tiled: Callable, run_whole: Callable, reference_lr, candidates: Iterable[int]
                   ) -> tuple[int | None, dict]:
    """The smallest margin in `candidates` whose tiled output, quantised to 8 bits, is within one
    level of the whole-image pass on at least 99.9 % of samples, and its figure
    {"margin", "max_level_diff", "within_1_level", "psnr_db"}; (None, figure of the largest) if none.

    `run_tiled(reference_lr, margin)` and `run_whole(reference_lr)` return outputs in [0, 1].
    Candidates are tried in ascending order and the first that passes is returned: the error is
    not monotone in the margin below the radius (the planner moves tile boundaries as the margin
    changes, and what a window misses depends on the content there), so a bisection could skip
    the smallest passing margin.
    """
    ordered = sorted(set(int(m) for m in candidates))
    if not ordered:
        raise ValueError("no candidate margins")
    whole = _levels(run_whole(reference_lr))
    figure: dict = {}
    for margin in ordered:
        figure = _figure(margin, _levels(run_tiled(reference_lr, margin)), whole)
        if figure["within_1_level"] >= WITHIN_1_LEVEL:
            return margin, figure
    return None, figure


# -- cache --------------------------------------------------------------------------------------

def _read(path) -> dict:
    """The results stored in `path`, or {} when it is absent, unreadable, corrupt or foreign."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # a damaged entry is measured again
        return {}
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or \
            stored.get("sha256") != path.stem or not isinstance(stored.get("results"), dict):
        return {}
    return stored["results"]


def cached(kind: str, sha256: str, compute: Callable[[], dict], valid: Callable[[dict], bool] | None = None) -> dict:
    """`compute()`'s result for the weights with this sha256, from the cache when it holds one.

    Results live in <cache>/receptive_field/<sha256>.json, one entry per `kind`, written
    atomically; a file that is corrupt or of another format version is recomputed, never trusted,
    and so is an entry that `valid` (when given) rejects.
    The value returned is the JSON round trip of `compute()`'s dict, the same whether cached or not.
    """
    sha256 = sha256.lower()
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    path = cache_dir(CACHE_KIND) / f"{sha256}.json"
    spill = spilled(path)  # where this process keeps entries the cache could not take, if it had to
    results = {**(_read(spill) if spill is not None else {}), **_read(path)}
    if isinstance(results.get(kind), dict) and (valid is None or valid(results[kind])):
        return results[kind]
    value = compute()
    if not isinstance(value, dict):
        raise TypeError(f"compute() must return a dict, not {type(value).__name__}")
    value = json.loads(json.dumps(value))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _held(path):
            results = _read(path)  # read again: another process may have added its entries meanwhile
            results[kind] = value
            atomic.write_text(path, _stored(sha256, results))
    except OSError as e:  # a cache only saves time: the value stands; said once, as the next run measures again
        _spill(path, sha256, kind, value, e.strerror or str(e))
    return value


def _stored(sha256: str, results: dict) -> str:
    """The file's text: what _read accepts back."""
    return json.dumps({"format": CACHE_FORMAT, "sha256": sha256, "results": results}, indent=1, sort_keys=True)


def _spill(path: Path, sha256: str, kind: str, value: dict, cause: str) -> None:
    """Keep an entry the cache could not take for the rest of this process (cache.spilled: said once)."""
    spill = spilled(path, cause)
    if spill is None:
        return
    with contextlib.suppress(OSError):
        results = {**_read(spill), kind: value}
        spill.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(spill, _stored(sha256, results))


@contextlib.contextmanager
def _held(path: Path):
    """One process at a time between reading the file and writing it back (`<file>.lock`, flock):
    two runs filling the cache at once each keep the other's entries."""
    if fcntl is None:  # no flock (Windows): the last writer wins
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
