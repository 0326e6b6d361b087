"""Architecture registry: the one place that knows what a network is and what it can do.

A checkpoint's `architecture` name maps to an `Architecture`: how to make its config and build
it, and the facts the rest of srtrt asks for instead of reading the network class itself —
scale, receptive-field radius (the tile margin that makes tiling exact), the channel count
that sizes activation memory, how to fold BatchNorm and rewrite the tail for inference, and which
conv -> PixelShuffle -> PReLU steps the fused kernel may replace. Adding an architecture
means a network file and one entry here.

Community networks (any of the architectures spandrel reads) share one entry, `community`:
nothing to fold or rewrite, and their facts (`ModelFacts`) come from spandrel's description
and from measuring the network (srtrt/zoo.py), not from a config. Every loaded model's view
carries its `ModelFacts`; the runtime, the export and the backends read those, never spandrel.
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
class ModelFacts:
    """What the runtime, the export and the backends may ask of one loaded model."""

    architecture: str                 # "srresnet", or spandrel's id ("ESRGAN", "Compact", "SPAN", ...)
    scale: int
    channels: int = 3                 # image channels in and out: 3 (RGB) or 1 (grey)
    feature_channels: int = 64        # the widest activation: sizes tile memory
    minimum: int = 1                  # smallest LR side the network takes
    multiple_of: int = 1              # LR sides must be multiples of this
    # a network that pads its input to multiples of this inside its forward (spandrel: any size) computes
    # on a grid from the input's origin: tile windows start on it (engine/datapath/tiles.py)
    grid: int = 1
    half: bool = True                 # fp16 allowed (spandrel says whether it overflows)
    bfloat16: bool = True
    global_operations: bool = False   # pooling or attention over the whole input: never exact in tiles
    static_export_only: bool = False  # no dynamic-shape graph (a window partition traced at one size)
    radius: int | None = None         # receptive-field radius in LR pixels; None: unbounded or beyond what was measured
    margin: int = 0                   # the default tile margin: the radius where affordable, else measured
    margin_figure: dict | None = None  # the measurement behind a margin below the radius
    # LR pixels between images sharing a sheet (engine/datapath/sheets.py): the widest border any one
    # conv reads, at its resolution; 0: the model's images never share one (not every op is known local)
    sheet_gap: int = 0

    def refusal(self, precision: str) -> str | None:
        """Why this model cannot run in `precision` (fp16 or bf16 where spandrel marks it unsafe), or None."""
        if precision == "fp16" and not self.half or precision == "bf16" and not self.bfloat16:
            return f"{self.architecture} does not support {precision} (spandrel marks it unsafe: its outputs overflow or go NaN)"
        return None

    @property
    def exact(self) -> bool:
        """Tiles equal a whole-image pass (fp32) at the default margin."""
        return self.radius is not None and self.margin >= self.radius

    def tiling_note(self, margin: int | None = None, core: int | None = None) -> str:
        """How exact tiles at `margin` (default: the model's) are, in words for the run's first line;
        `core`: the run's `--tile`, where it asked for one."""
        margin = self.margin if margin is None else margin
        # A network that takes multiples of N only: other sides are cut into windows of such sides from
        # both ends, unpadded, which no pass of the network equals (spandrel's pads them; DITN's forward
        # pads itself): 67 % within 1 level of DITN's own pass at 97x131, against 100 % at 96x128.
        other_sides = (f" on sides that are multiples of {self.multiple_of}; other sides are cut into windows "
                       "of such sides from both ends, unpadded, and differ from a pass that pads them"
                       if self.multiple_of > 1 else "")
        if self.radius is not None and margin >= self.radius:
            return f"exact tiles (margin {margin} >= receptive-field radius {self.radius}){other_sides}"
        if self.margin_figure and margin == self.margin:
            from srtrt.zoo import MEASURE_CORE

            f = self.margin_figure
            # the figure is for cores of MEASURE_CORE: smaller ones put more of the image near a seam
            # (an ATD measured at 97.16 % gave 86.9 % at --tile 12)
            smaller = (f"; measured with {MEASURE_CORE}-pixel tiles, so --tile {core} puts more of the image "
                       "near a seam" if core and core < MEASURE_CORE else "")
            return (f"measured margin {margin}: tiled 8-bit output within 1 level of a whole-image pass on "
                    f"{100 * f['within_1_level']:.2f} % of samples (max {f['max_level_diff']}){other_sides}{smaller}")
        return f"margin {margin}, below the receptive field and not measured: tiles may show seams"


@dataclass(frozen=True)
class Architecture:
    name: str
    network: type[nn.Module]
    make_config: Callable[[dict], object]
    radius: Callable[[object], int | None]           # config -> receptive-field radius in LR pixels
    fold_batchnorm: Callable[[nn.Module], nn.Module]  # eval-mode generator -> same results, no BatchNorm
    polyphase_tail: Callable[[nn.Module], nn.Module]  # eval-mode generator -> same results, no full-size shuffle
    int8_convs: Callable[[nn.Module], list[str]]     # generator -> names of the convs that may run in int8
    upsample_steps: Callable[[nn.Module], list[UpsampleStep]]

    def build(self, config) -> nn.Module:
        return self.network(config)

    @property
    def rewrites_tail(self) -> bool:
        """Whether polyphase_tail changes anything (the backends name the rewrite only when it does)."""
        return self.polyphase_tail is not Unchanged.module


def _srresnet_upsample_steps(generator: SRResNet) -> list[UpsampleStep]:
    # A step polyphase_tail rewrote no longer shuffles: the tail does, so there is nothing to fuse.
    return [UpsampleStep(f"upsample.{i}", block.conv, block.act, block.shuffle.upscale_factor)
            for i, block in enumerate(generator.upsample) if isinstance(block, UpsampleBlock)]


def _srresnet_int8_convs(generator: SRResNet) -> list[str]:
    # The RGB head stays in float: 3 input channels leave int8 nothing to gain, and a 16-bit image
    # would lose its low bits. The tail is int8 too: in the polyphase graph it was 30 % of an int8
    # run left in bf16 (bench/openvino_profile.py); in int8 the 2K-output image ran 1.17x faster for
    # 0.003 dB on the sample photos (bench/README.md).
    return [name for name, m in generator.named_modules()
            if isinstance(m, nn.Conv2d) and not name.startswith("head")]


def srresnet_facts(config: SRResNetConfig) -> ModelFacts:
    radius = receptive_field_radius(config)
    # convs: the head at LR, 3x3 ones at LR and after each x2 shuffle, the tail at full resolution
    widest = max(config.head_kernel // 2, 1, -(-(config.tail_kernel // 2) // config.scale))
    return ModelFacts("srresnet", config.scale, feature_channels=config.channels, radius=radius, margin=radius,
                      sheet_gap=widest)


def _community_int8_convs(generator: nn.Module) -> list[str]:
    # Every conv is a candidate: calibration keeps those that run, less the first and last to run
    # (they read and write the image; quantize.calibrate), and the agreement guard judges the result.
    return [name for name, m in generator.named_modules() if isinstance(m, nn.Conv2d)]


class Unchanged:
    """The rewrites a community network does without: no BatchNorm to fold, no tail to rewrite."""

    @staticmethod
    def module(generator: nn.Module) -> nn.Module:
        return generator

    @staticmethod
    def nothing(generator: nn.Module) -> list:
        return []


ARCHITECTURES: dict[str, Architecture] = {
    "srresnet": Architecture(
        name="srresnet",
        network=SRResNet,
        make_config=lambda d: SRResNetConfig(**d),
        radius=receptive_field_radius,
        fold_batchnorm=fold_batchnorm,
        polyphase_tail=polyphase_tail,
        int8_convs=_srresnet_int8_convs,
        upsample_steps=_srresnet_upsample_steps,
    ),
}

# Community networks (spandrel's classes): not a checkpoint architecture (`get` never returns it),
# the entry `of` gives their modules so the backends' rewrites leave them as they are.
COMMUNITY = Architecture(
    name="community",
    network=nn.Module,
    make_config=lambda d: None,
    radius=lambda config: None,
    fold_batchnorm=Unchanged.module,
    polyphase_tail=Unchanged.module,
    int8_convs=_community_int8_convs,
    upsample_steps=Unchanged.nothing,
)
COMMUNITY_MODULES = ("spandrel", "srtrt.community")  # where community network classes (and their wrapper) live


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
    if type(generator).__module__.startswith(COMMUNITY_MODULES):
        return COMMUNITY
    raise KeyError(f"{type(generator).__name__} is not a registered architecture")


def inference_view(generator: nn.Module) -> InferenceView:
    return InferenceView(generator).eval()
