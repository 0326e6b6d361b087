"""Architecture registry: the one place that knows what a network is and what it can do.

A checkpoint's `architecture` name maps to an `Architecture`: how to make its config and build
it, and the facts the rest of srtrt asks for instead of reading the network class itself —
scale, receptive-field radius (the tile margin that makes tiling exact), the channel count
that sizes activation memory, how to fold BatchNorm and rewrite the tail for inference, and which
conv -> PixelShuffle -> PReLU steps the fused kernel may replace. Adding an architecture
means a network file and one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .nets import (
    InferenceView,
    SRResNet,
    SRResNetConfig,
    UpsampleBlock,
    fold_batchnorm,
    polyphase_tail,
    receptive_field_radius,
)


@dataclass(frozen=True)
class UpsampleStep:
    """One fusable sub-pixel step: `module` (a dotted name in the generator) computes
    PReLU(PixelShuffle(conv(x), upscale)) with these conv and PReLU modules."""

    module: str
    conv: nn.Conv2d
    prelu: nn.PReLU
    upscale: int


@dataclass(frozen=True)
class Architecture:
    name: str
    network: type[nn.Module]
    make_config: Callable[[dict], object]
    radius: Callable[[object], int]                  # config -> receptive-field radius in LR pixels
    feature_channels: Callable[[object], int]        # config -> channels of the upsampled feature maps
    fold_batchnorm: Callable[[nn.Module], nn.Module]  # eval-mode generator -> same results, no BatchNorm
    polyphase_tail: Callable[[nn.Module], nn.Module]  # eval-mode generator -> same results, no full-size shuffle
    int8_convs: Callable[[nn.Module], list[str]]     # generator -> names of the convs that may run in int8
    upsample_steps: Callable[[nn.Module], list[UpsampleStep]]

    def build(self, config) -> nn.Module:
        return self.network(config)


def _srresnet_upsample_steps(generator: SRResNet) -> list[UpsampleStep]:
    # A step polyphase_tail rewrote no longer shuffles: the tail does, so there is nothing to fuse.
    return [UpsampleStep(f"upsample.{i}", block.conv, block.act, block.shuffle.upscale_factor)
            for i, block in enumerate(generator.upsample) if isinstance(block, UpsampleBlock)]


def _srresnet_int8_convs(generator: SRResNet) -> list[str]:
    # The RGB head and tail stay in float: the head has 3 input channels (nothing for int8 to
    # gain) and the tail's rounding reaches the image undamped.
    return [name for name, m in generator.named_modules()
            if isinstance(m, nn.Conv2d) and not name.startswith(("head", "tail"))]


ARCHITECTURES: dict[str, Architecture] = {
    "srresnet": Architecture(
        name="srresnet",
        network=SRResNet,
        make_config=lambda d: SRResNetConfig(**d),
        radius=receptive_field_radius,
        feature_channels=lambda config: config.channels,
        fold_batchnorm=fold_batchnorm,
        polyphase_tail=polyphase_tail,
        int8_convs=_srresnet_int8_convs,
        upsample_steps=_srresnet_upsample_steps,
    ),
}


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r} (known: {', '.join(sorted(ARCHITECTURES))})") from None


def of(generator: nn.Module) -> Architecture:
    """The registered architecture a generator instance belongs to."""
    for arch in ARCHITECTURES.values():
        if type(generator) is arch.network:
            return arch
    raise KeyError(f"{type(generator).__name__} is not a registered architecture")


def inference_view(generator: nn.Module) -> InferenceView:
    return InferenceView(generator).eval()
