"""Architecture registry: a checkpoint's `architecture` name -> how to build and describe it.

New architectures register a builder here; nothing else in the package names classes directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .nets import InferenceView, SRResNet, SRResNetConfig, receptive_field_radius


@dataclass(frozen=True)
class Architecture:
    name: str
    make_config: Callable[[dict], object]
    build: Callable[[object], nn.Module]
    radius: Callable[[object], int]


ARCHITECTURES: dict[str, Architecture] = {
    "srresnet": Architecture(
        name="srresnet",
        make_config=lambda d: SRResNetConfig(**d),
        build=SRResNet,
        radius=receptive_field_radius,
    ),
}


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r} (known: {', '.join(sorted(ARCHITECTURES))})") from None


def inference_view(generator: nn.Module) -> InferenceView:
    return InferenceView(generator).eval()
