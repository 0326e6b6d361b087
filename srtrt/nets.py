"""SRGAN networks (Ledig et al., CVPR 2017): the SRResNet generator, the discriminator, and
the inference view that every backend runs.

Value ranges follow the paper: the generator takes LR RGB in [0, 1] and returns tanh output in
[-1, 1]; the inference view maps that back to [0, 1] so callers never see the training range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

# Far beyond any SRResNet worth building (the paper's: 16 blocks, 64 channels, 9x9 kernels), and
# small enough that a damaged config cannot ask for terabytes or build for hours.
MAX_BLOCKS, MAX_CHANNELS, MAX_KERNEL = 256, 1024, 15


@dataclass(frozen=True)
class SRResNetConfig:
    scale: int = 4
    blocks: int = 16
    channels: int = 64
    head_kernel: int = 9
    tail_kernel: int = 9

    def __post_init__(self):
        for name in ("scale", "blocks", "channels", "head_kernel", "tail_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):  # 4.0, NaN or true would build nonsense
                raise ValueError(f"{name} must be a whole number, not {value!r}")
        if self.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, not {self.scale!r}")
        if not (0 <= self.blocks <= MAX_BLOCKS and 1 <= self.channels <= MAX_CHANNELS):
            raise ValueError(f"blocks must be >= 0 and channels >= 1 (at most {MAX_BLOCKS} and {MAX_CHANNELS}), "
                             f"not {self.blocks} and {self.channels}")
        for name in ("head_kernel", "tail_kernel"):
            k = getattr(self, name)
            if not (1 <= k <= MAX_KERNEL and k % 2 == 1):
                raise ValueError(f"kernel sizes must be odd and 1..{MAX_KERNEL}, not {name} {k}")

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResidualBlock(nn.Module):
    """conv3-BN-PReLU-conv3-BN plus identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv(channels, channels, 3)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)
        self.conv2 = _conv(channels, channels, 3)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class UpsampleBlock(nn.Module):
    """conv C->4C, PixelShuffle(2), PReLU: one x2 step (sub-pixel convolution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels * 4, 3)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return self.act(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """The SRGAN generator. Input LR RGB in [0, 1], output HR RGB in [-1, 1] (tanh)."""

    def __init__(self, config: SRResNetConfig = SRResNetConfig()):
        super().__init__()
        c = config.channels
        self.config = config
        self.head = _conv(3, c, config.head_kernel)
        self.head_act = nn.PReLU(c)
        self.body = nn.Sequential(*(ResidualBlock(c) for _ in range(config.blocks)))
        self.body_conv = _conv(c, c, 3)
        self.body_bn = nn.BatchNorm2d(c)
        self.upsample = nn.Sequential(*(UpsampleBlock(c) for _ in range(int(math.log2(config.scale)))))
        self.tail = _conv(c, 3, config.tail_kernel)

    def forward(self, x):
        feat = self.head_act(self.head(x))
        feat = feat + self.body_bn(self.body_conv(self.body(feat)))
        return torch.tanh(self.tail(self.upsample(feat)))


def receptive_field_radius(config: SRResNetConfig) -> int:
    """Radius in LR pixels of the input window that one output pixel depends on.

    Walks the layers backwards from an HR pixel, widening the dependency interval by each
    conv's half-kernel at that layer's resolution and mapping through each PixelShuffle(2)
    with floor(j / 2), exactly as the tensors do. The worst case over the `scale` output
    phases is the radius; 40 for the default x4 network.
    """
    steps = int(math.log2(config.scale))
    worst = 0
    base = config.scale * 10_000  # far from 0 so floor division behaves like the interior
    for phase in range(config.scale):
        lo = hi = base + phase
        lo, hi = lo - config.tail_kernel // 2, hi + config.tail_kernel // 2
        for _ in range(steps):  # each upsample block: shuffle back to half resolution, then conv3
            lo, hi = lo // 2, hi // 2
            lo, hi = lo - 1, hi + 1
        body = 1 + 2 * config.blocks + config.head_kernel // 2  # body conv, 2 per block, head
        lo, hi = lo - body, hi + body
        centre = (base + phase) // config.scale
        worst = max(worst, centre - lo, hi - centre)
    return worst


class InferenceView(nn.Module):
    """What every backend runs: RGB [0, 1] in, RGB [0, 1] out, clamped inside the graph.

    Carries `scale` and `radius` (receptive-field radius in LR pixels), asked of the registry.
    """

    def __init__(self, generator: nn.Module):
        from . import registry  # the registry imports this module

        super().__init__()
        self.generator = generator
        self.facts = registry.srresnet_facts(generator.config)
        self.scale = self.facts.scale
        self.radius = self.facts.margin

    def forward(self, x):
        return ((self.generator(x) + 1.0) * 0.5).clamp(0.0, 1.0)

    def with_generator(self, generator: nn.Module) -> InferenceView:
        """The same kind of view over another generator (a backend's folded or rewritten copy)."""
        return InferenceView(generator)


class CommunityView(nn.Module):
    """The same contract for a community network read by spandrel (srtrt/community.py): image in
    [0, 1] in, image in [0, 1] out, clamped inside the graph. `facts` (a registry.ModelFacts)
    holds its scale, channels, size requirements and tile margin; `radius` is that margin."""

    def __init__(self, generator: nn.Module, facts, sha256: str, source=None, allow_noncommercial: bool = False):
        super().__init__()
        self.generator = generator
        self.facts = facts
        self.scale = facts.scale
        self.radius = facts.margin
        self.checkpoint_sha256 = sha256
        self.source = source  # the model file, for work done in another process (ONNX export)
        self.allow_noncommercial = allow_noncommercial  # how the file was allowed to load (spandrel_extra_arches)
        self.int8_calibration = None
        self.eval()  # an inference view, as srtrt's own: `.training` says so too, not only the generator's

    def forward(self, x):
        return self.generator(x).clamp(0.0, 1.0)

    def with_generator(self, generator: nn.Module) -> CommunityView:
        return CommunityView(generator, self.facts, self.checkpoint_sha256, self.source, self.allow_noncommercial)


class Discriminator(nn.Module):
    """The paper's discriminator: 8 convs (64->512, strides 1/2 alternating), dense 1024, dense 1.

    Returns logits; the sigmoid lives in the loss. The adaptive pool fixes the dense input at
    512x6x6, which is an identity for the paper's 96x96 crops and lets other crop sizes work.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        layers = [nn.Conv2d(3, channels, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        cin = channels
        for cout, stride in [(channels, 2), (channels * 2, 1), (channels * 2, 2), (channels * 4, 1),
                             (channels * 4, 2), (channels * 8, 1), (channels * 8, 2)]:
            layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * 36, 1024), nn.LeakyReLU(0.2, inplace=True), nn.Linear(1024, 1))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def fold_batchnorm(generator: SRResNet) -> SRResNet:
    """Fold every eval-mode BatchNorm into the conv before it (in place); returns the generator.

    Inference then does one conv where training did conv + affine, with identical results up
    to rounding. The folded model is for inference only.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    generator.eval()
    pairs = [(generator, "body_conv", "body_bn")]
    pairs += [(block, conv, bn) for block in generator.body for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"))]
    for owner, conv, bn in pairs:
        if isinstance(getattr(owner, bn), nn.BatchNorm2d):
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
    return generator


class PreShuffleUpsample(nn.Module):
    """An UpsampleBlock without its PixelShuffle: conv, then PReLU with each slope repeated over
    the r*r sub-pixel channels it covers (PReLU is per channel, so it commutes with the shuffle)."""

    def __init__(self, block: UpsampleBlock):
        super().__init__()
        r2 = block.shuffle.upscale_factor ** 2
        self.conv = block.conv
        slopes = block.act.weight.detach()
        slopes = slopes.repeat_interleave(r2) if slopes.numel() > 1 else slopes  # one shared slope stays one
        self.act = nn.PReLU(slopes.numel())
        self.act.weight.data.copy_(slopes)

    def forward(self, x):
        return self.act(self.conv(x))


def polyphase_kernel(weight: torch.Tensor, r: int) -> torch.Tensor:
    """The kernel that computes conv(PixelShuffle_r(z), weight) from z directly, r*r outputs per
    output channel (one per sub-pixel phase, in PixelShuffle's order).

    Output pixel (r*P + a, r*Q + b) of a KxK conv reads shuffled pixel (r*P + a + dy, ...),
    which is z's channel c*r*r + ((a + dy) mod r)*r + ((b + dx) mod r) at (P + (a + dy) // r, ...):
    each tap of the original kernel lands in exactly one tap of the new one, zero padding on
    the shuffled grid is zero padding on z's, so the two compute the same sums.
    """
    cout, cin, k, _ = weight.shape
    half = k // 2
    lo, hi = -half // r, (r - 1 + half) // r  # the taps' offsets on z's grid
    if -lo != hi:
        raise ValueError(f"a {k}x{k} kernel at x{r} has no centred polyphase form")
    size = hi - lo + 1
    out = weight.new_zeros(cout * r * r, cin * r * r, size, size)
    for a in range(r):
        for b in range(r):
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    ty, tx = a + dy, b + dx
                    out[a * r + b::r * r, (ty % r) * r + (tx % r)::r * r, ty // r - lo, tx // r - lo] = \
                        weight[:, :, dy + half, dx + half]
    return out


class PolyphaseTail(nn.Conv2d):
    """conv(PixelShuffle_r(z)) computed as PixelShuffle_r(conv'(z)): the same values, with r*r
    times the output channels (AMX and tensor cores want 16 or more, the RGB tail has 3) and
    the big C-channel shuffle at full resolution replaced by a 3*r*r-channel one. A conv itself,
    so its weights keep the tail's name (what int8 calibration ranges are named by)."""

    def __init__(self, tail: nn.Conv2d, r: int):
        kernel = polyphase_kernel(tail.weight.detach(), r)
        super().__init__(kernel.shape[1], kernel.shape[0], kernel.shape[-1], padding=kernel.shape[-1] // 2)
        self.weight.data.copy_(kernel)
        bias = tail.bias.detach() if tail.bias is not None else torch.zeros(tail.out_channels)
        self.bias.data.copy_(bias.repeat_interleave(r * r))
        self.shuffle = nn.PixelShuffle(r)

    def forward(self, z):
        return self.shuffle(super().forward(z))


def polyphase_tail(generator: SRResNet) -> SRResNet:
    """Rewrite the last upsample step and the tail conv into their polyphase form (in place);
    returns the generator. Same results up to rounding, same receptive field; inference only.

    Measured with OpenVINO bf16 on AMX (bench/): the 9x9 conv to 3 channels at full resolution
    and the 64-channel shuffle before it were 40% of the time of a 2K-output image.
    """
    generator.eval()
    last = generator.upsample[-1]
    r = last.shuffle.upscale_factor
    generator.upsample[-1] = PreShuffleUpsample(last)
    generator.tail = PolyphaseTail(generator.tail, r)
    return generator
