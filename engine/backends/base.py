"""The one small interface every backend implements.

A backend runs batches of LR tiles: float32 (N, 3, h, w) in [0, 1] on `backend.device` ->
(N, 3, h*scale, w*scale) in [0, 1] on the same device, in the backend's output dtype. GPU
backends run on torch's current CUDA stream, so the runtime can overlap copies and compute
with its own streams.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from srtrt.errors import SrtrtError


@dataclass(frozen=True)
class TileDefaults:
    core: int    # LR core size that suits this backend's device
    batch: int   # tiles per call
    whole_image_pixels: int = 0  # images up to this many LR pixels run as one window (no overlap to recompute)


def activation_bytes_per_pixel(channels: int, scale: int, itemsize: int) -> int:
    """Peak activation memory per LR pixel of one window: the x`scale` feature maps dominate
    (channels * scale^2 values per LR pixel), about 2.5 of them alive at once (measured on the
    CPU for SRResNet: 4.8 KB/pixel in bf16, 9.4 KB/pixel in fp32)."""
    return int(2.5 * channels * scale * scale * itemsize)


def defaults_for_budget(budget_bytes: int, bytes_per_pixel: int, margin: int, batch: int = 1) -> TileDefaults:
    """The largest core (multiple of 16) whose window batch fits `budget_bytes` of activations."""
    window_pixels = budget_bytes // (bytes_per_pixel * batch)
    core = max(16, (int(window_pixels ** 0.5) - 2 * margin) // 16 * 16)
    return TileDefaults(core=core, batch=batch, whole_image_pixels=window_pixels)


class Backend(abc.ABC):
    name: str = "?"
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"          # fp32 | fp16 | bf16: what the network computes in
    scale: int = 4
    radius: int = 0                  # receptive-field radius in LR pixels
    margin: int | None = None        # tile overlap the backend was built for (engines); None = use the radius
    defaults: TileDefaults = TileDefaults(core=256, batch=1)
    balanced_tiles: bool = True      # False: windows of exactly core + 2*margin (engines tuned for one shape)
    minimum: int = 1                 # smallest LR side the network takes (registry.ModelFacts)
    multiple_of: int = 1             # LR window sides must be multiples of this (registry.ModelFacts)
    grid: int = 1                    # LR windows start on multiples of this (registry.ModelFacts)
    channels: int = 3                # image channels in and out: 3 RGB, 1 grey (registry.ModelFacts)
    architecture: str = "srresnet"   # the network's family: srtrt's own or spandrel's id (registry.ModelFacts)
    own_threads: bool = False        # the network runs on the backend's own CPU thread pool, not torch's
    # `auto`: makes the backend that runs an image whose windows this engine cannot take (a TensorRT
    # plan fixed at one window; a static ONNX graph that cannot be exported at their shape); None:
    # such an image is refused in one line
    fallback: Callable[[], Backend] | None = None
    runs_masks: bool = False         # infer_masked runs (datapath/sheets.py)
    # small images of many sizes run faster sharing sheets than one by one: where each new shape costs a
    # compile (OpenVINO). torch has no such cost, and ran a varied folder 0.6x as fast on sheets (AMX, bf16:
    # larger windows cost it more per pixel, and the masks 15 %)
    shares_sheets: bool = False
    sheet_gap: int = 0               # pixels between images on a sheet; 0: never shared (registry.ModelFacts)

    @abc.abstractmethod
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float32 in [0, 1] on self.device -> (N, 3, h*s, w*s) in [0, 1] on self.device."""

    def infer_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`infer(x)` with every convolution's input multiplied by `mask` (N, 1, h, w) of 0 and 1 at
        that convolution's resolution (sheets.masks_at): where `runs_masks` says so."""
        raise NotImplementedError(f"{self.name} does not run masks")

    def every_form_infer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """`infer(x)` through each compiled form a run may use for an input like `x` (one here): what
        the precision guard judges, so no form runs unjudged."""
        return [self.infer(x)]

    def accepts(self, batch: int, height: int, width: int) -> bool:
        """Whether this input shape can run (engines with fixed profiles say no outside them)."""
        return True

    def refusal(self, batch: int, height: int, width: int) -> str | None:
        """Why this input shape cannot run, as the runtime's line ends ("its windows are ..."), or None."""
        return None if self.accepts(batch, height, width) else f"outside what this engine takes ({self.describe()})"

    def prepare(self, batch: int, height: int, width: int) -> None:
        """Called once per window shape before the first batch of it (engines and graphs warm up here)."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.device})"

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class OnnxGraphs:
    """Where the backend's graphs come from: one dynamic-shape file, reshaped for each window shape,
    or `static(shape)`, the file of a graph fixed at that (N, C, h, w) (exported when first asked)."""

    dynamic: Path | None = None
    static: Callable[[tuple[int, int, int, int]], Path] | None = None
    name: str = ""  # what describe() and errors call a per-shape source
    first: tuple[int, int, int, int] | None = None  # the shape whose static graph was exported already

    @property
    def label(self) -> Path:
        return self.dynamic if self.dynamic is not None else Path(self.name or "per-shape graphs")

    def refusal(self, shape: tuple[int, int, int, int]) -> str | None:
        """Why no graph runs input `shape` (its static export fails: GRL below a 32-pixel side), or None."""
        if self.dynamic is not None or self.static is None:
            return None
        try:
            self.static(shape)
        except SrtrtError as e:
            return f"beyond the model's graphs ({e.cause})"
        return None


class PerShapeGraphs:
    """For a backend that runs `self.graphs` (OnnxGraphs): an input shape runs where its graph can
    be made (a per-shape graph is exported when first asked)."""

    graphs: OnnxGraphs
    channels: int

    def accepts(self, batch: int, height: int, width: int) -> bool:
        return self.refusal(batch, height, width) is None

    def refusal(self, batch: int, height: int, width: int) -> str | None:
        return self.graphs.refusal((batch, self.channels, height, width))
