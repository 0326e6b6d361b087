"""The one small interface every backend implements.

A backend runs batches of LR tiles: float32 (N, 3, h, w) in [0, 1] on `backend.device` ->
(N, 3, h*scale, w*scale) in [0, 1] on the same device, in the backend's output dtype. GPU
backends run on torch's current CUDA stream, so the runtime can overlap copies and compute
with its own streams.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileDefaults:
    core: int    # LR core size that suits this backend's device
    batch: int   # tiles per call


class Backend(abc.ABC):
    name: str = "?"
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"          # fp32 | fp16 | bf16: what the network computes in
    scale: int = 4
    radius: int = 0                  # receptive-field radius in LR pixels
    defaults: TileDefaults = TileDefaults(core=256, batch=1)

    @abc.abstractmethod
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float32 in [0, 1] on self.device -> (N, 3, h*s, w*s) in [0, 1] on self.device."""

    def accepts(self, batch: int, height: int, width: int) -> bool:
        """Whether this input shape can run (engines with fixed profiles say no outside them)."""
        return True

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
