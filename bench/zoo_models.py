"""Community architectures for bench/test_zoo.py: spandrel's own classes with random weights.

No downloads: speed does not depend on the weights' values, only on their shapes and on the
activations staying in range (no overflow, no denormals, outputs not all clamped), which the
initialisation below sees to. Each file is written once into srtrt's cache (`bench-models`)
from a fixed seed, so every run -- and the `srtrt run` subprocess of the RSS case -- reads the
same bytes, and srtrt's per-sha256 caches (tile margin, bf16 agreement, ONNX export, OpenVINO
blobs) measure once and are hit afterwards.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from srtrt.cache import cache_dir

CACHE_KIND = "bench-models"
SEED = 0
INIT_VERSION = 2       # part of the file name: a changed initialisation must not reuse an old file
PROBE_SIDE = 32        # LR side of the probe image the initialisation and the output check run on
OUTPUT_MEAN, OUTPUT_STD = 0.5, 0.2  # RRDBNet's output is set to this on the probe: mid-grey, unclamped
RESIDUAL_STD = 0.1                  # Compact's residual over the nearest-upscaled input, on the probe


@dataclass(frozen=True)
class ZooModel:
    name: str                               # file stem and test id
    label: str                              # what it stands for
    build: Callable[[], nn.Module]
    initialise: Callable[[nn.Module], None]
    eager_tile: int                         # LR side of the eager baseline's no-overlap tiles; 0: whole image

    @property
    def path(self) -> Path:
        return cache_dir(CACHE_KIND) / f"{self.name}-seed{SEED}-init{INIT_VERSION}.safetensors"


def _rrdbnet() -> nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)


def _compact() -> nn.Module:
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4)


def _kaiming(module: nn.Module, scale_of: Callable[[str], float]) -> None:
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.2)  # both networks use slope-0.2-ish (Leaky/P)ReLUs
            m.weight.data.mul_(scale_of(name))
            nn.init.zeros_(m.bias)


def probe_input() -> torch.Tensor:
    from workloads import photo_like

    image = photo_like(PROBE_SIDE, PROBE_SIDE, seed=SEED)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)


def _init_rrdbnet(module: nn.Module) -> None:
    # BasicSR's scheme: Kaiming, times 0.1 inside the dense blocks' residual branches. Plain
    # Kaiming x0.1 everywhere shrinks the upsampling path's output to ~1e-30 (denormals, which
    # slow CPUs down); unscaled, its output is ~50 and clamps to white. So the last conv is then
    # rescaled, an affine map of the output, to mean 0.5 and std 0.2 on the probe.
    _kaiming(module, lambda name: 0.1 if ".RDB" in name else 1.0)
    last = [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.inference_mode():
        y = module.eval()(probe_input())
    gain = OUTPUT_STD / y.std().item()
    last.weight.data.mul_(gain)
    last.bias.data.mul_(gain).add_(OUTPUT_MEAN - gain * y.mean().item())


def _init_compact(module: nn.Module) -> None:
    # Kaiming keeps the body's activations near 1 (x0.1 per layer would shrink them 10x a conv,
    # to ~1e-19 after 16). Compact adds its output to the nearest-upscaled input, so the last
    # conv is then scaled for a residual of std 0.1 on the probe: image-like and not clamped.
    _kaiming(module, lambda name: 1.0)
    last = [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]
    x = probe_input()
    with torch.inference_mode():
        residual = module.eval()(x) - F.interpolate(x, scale_factor=module.upscale, mode="nearest")
    last.weight.data.mul_(RESIDUAL_STD / residual.std().item())


MODELS = (
    ZooModel("rrdbnet-x4plus", "RRDBNet x4, Real-ESRGAN x4plus shape (23 RRDB, 64 filters)", _rrdbnet, _init_rrdbnet,
             eager_tile=128),  # the compute alone; bench/README.md has the whole-image figures
    ZooModel("compact-animevideov3", "Compact x4, realesr-animevideov3 shape (16 convs, 64 features)", _compact,
             _init_compact, eager_tile=0),
)
BY_NAME = {m.name: m for m in MODELS}


def weights_file(model: ZooModel) -> Path:
    """The model's safetensors file, written on first use (atomically: concurrent runs never read half a file)."""
    from safetensors.torch import save_file

    path = model.path
    if path.is_file():
        return path
    torch.manual_seed(SEED)
    module = model.build().eval()
    model.initialise(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(partial))
    os.replace(partial, path)
    return path


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_flop_per_lr_pixel(module: nn.Module, channels: int = 3) -> float:
    """Convolution FLOPs (2 * k^2 * Cin/groups * Cout per output pixel, every layer at its own
    resolution) per LR input pixel. Same-padded convolutions scale exactly with the input's area,
    so one small probe gives the figure for any window."""
    total = 0

    def count(conv: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * kh * kw * conv.in_channels // conv.groups * out.shape[1] * out.shape[-2] * out.shape[-1]

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.rand(1, channels, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    return total / (16 * 16)


def output_check(module: nn.Module) -> dict:
    """How image-like the random network's output is on the probe (recorded with every case)."""
    with torch.inference_mode():
        y = module(probe_input())
    inside = ((y >= 0) & (y <= 1)).float().mean().item()
    return {"probe_output_mean": round(y.mean().item(), 4), "probe_output_std": round(y.std().item(), 4),
            "probe_output_unclamped_share": round(inside, 4)}


def no_overlap_tiles(height: int, width: int, side: int) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) boxes covering the image exactly once; side 0: the whole image."""
    if side <= 0:
        return [(0, 0, height, width)]
    return [(top, left, min(side, height - top), min(side, width - left))
            for top in range(0, height, side) for left in range(0, width, side)]


def crop_centre(image: np.ndarray, width: int, height: int) -> np.ndarray:
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])
