"""SRGAN losses: the content losses (MSE, VGG22, VGG54), the adversarial BCE (Ledig et al., eq. 3-6)
and the grid loss that keeps the adversarial term from buying detail with a sub-pixel pattern.

VGG19 is defined here with torchvision's layer indices so torchvision's ImageNet weights
(`vgg19-dcbb9e9d.pth`) load as they are; torchvision itself is not needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from srtrt.community import read_state_dict
from srtrt.errors import SrtrtError

# torchvision's vgg19 "E" config; "M" = max-pool. features[:9] ends at relu2_2, [:36] at relu5_4.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
VGG19_FILE = "vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_LAYERS = {"vgg22": 9, "vgg54": 36}  # content-loss name -> number of `features` layers kept
CONTENT_LOSSES = ("mse", *VGG_LAYERS)


def vgg19_features() -> nn.Sequential:
    layers, cin = [], 3
    for v in _VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


def torchvision_cache_path() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints" / VGG19_FILE


def load_vgg19_weights(path: str | os.PathLike | None, layers: int = VGG_LAYERS["vgg54"]) -> dict[str, torch.Tensor]:
    """The `features.*` tensors VGG19's first `layers` layers need, from `path` or torchvision's
    cache; one line if neither exists or the file is not such weights."""
    candidate = Path(path) if path else torchvision_cache_path()
    if not candidate.is_file():
        raise SrtrtError(
            "VGG19 ImageNet weights are needed for the SRGAN phase and were not found. Put torchvision's "
            f"{VGG19_FILE} there (python -c 'import torchvision; torchvision.models.vgg19(weights=\"DEFAULT\")' "
            "on a networked machine) or pass --vgg-weights PATH (.pth or .safetensors), "
            "or train SRGAN-MSE with --content-loss mse, which needs no VGG", candidate)
    # As community model files are read: tensors only, a pickle naming any other global refused.
    state = read_state_dict(candidate)
    return vgg_features(state, layers, candidate)


def vgg_features(state, layers: int, path: Path) -> dict[str, torch.Tensor]:
    """`state`'s `features.*` tensors for the first `layers` layers, checked against VGG19's shapes."""
    features = {k[len("features."):]: v for k, v in state.items() if str(k).startswith("features.")}
    if not features:
        raise SrtrtError("holds no VGG19 weights (no features.* tensors; torchvision's vgg19 state dict is expected)",
                         path)
    wanted = vgg19_features()[:layers].state_dict()
    missing = [f"features.{k}" for k in wanted if k not in features]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise SrtrtError(f"VGG19 weights lack {', '.join(missing[:3])}{more}, which this content loss needs", path)
    for k, v in wanted.items():
        if not torch.is_tensor(features[k]) or features[k].shape != v.shape:
            got = tuple(features[k].shape) if torch.is_tensor(features[k]) else type(features[k]).__name__
            raise SrtrtError(f"features.{k} is {got}, not VGG19's {tuple(v.shape)}", path)
    return {k: features[k] for k in wanted}


class VGGContentLoss(nn.Module):
    """MSE between VGG19 features (relu5_4 by default, relu2_2 with layers=9) of SR and HR, both in [-1, 1].

    Inputs are mapped to [0, 1] and ImageNet-normalised, as VGG was trained; features are
    scaled by 1/12.75 as in the paper, which keeps the 1e-3 adversarial weight meaningful.
    """

    def __init__(self, weights: dict[str, torch.Tensor] | None, feature_scale: float = 1 / 12.75,
                 layers: int = VGG_LAYERS["vgg54"]):
        super().__init__()
        self.features = vgg19_features()[:layers]
        if weights is not None:
            self.features.load_state_dict({k: v for k, v in weights.items() if int(k.split(".")[0]) < layers})
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.feature_scale = feature_scale

    def train(self, mode: bool = True):
        return super().train(False)  # VGG stays a fixed feature extractor

    def _phi(self, x):
        return self.features(((x + 1) * 0.5 - self.mean) / self.std) * self.feature_scale

    def forward(self, sr, hr):
        with torch.no_grad():
            target = self._phi(hr)
        return F.mse_loss(self._phi(sr), target)


class PixelContentLoss(nn.Module):
    """SRGAN-MSE's content loss: pixel MSE on the [-1, 1] scale, as the SRResNet phase uses."""

    def forward(self, sr, hr):
        return F.mse_loss(sr.float(), hr.float())


def content_loss(name: str, vgg_weights: str | os.PathLike | None) -> nn.Module:
    """The content loss a phase-srgan run names; only the VGG variants need VGG19 weights."""
    if name == "mse":
        return PixelContentLoss()
    if name not in VGG_LAYERS:
        raise SrtrtError(f"unknown content loss {name!r} (one of {', '.join(CONTENT_LOSSES)})")
    return VGGContentLoss(load_vgg19_weights(vgg_weights, VGG_LAYERS[name]), layers=VGG_LAYERS[name])


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def phase_means(x: torch.Tensor, period: int) -> torch.Tensor:
    """Per channel, the Laplacian of `x` (N,C,H,W) averaged over each of the period x period
    sub-pixel phases and the whole batch: (C, period, period)."""
    c = x.shape[1]
    lap = F.conv2d(x.float(), _LAPLACIAN.to(x.device).expand(c, 1, 3, 3), groups=c)
    h, w = lap.shape[-2] // period * period, lap.shape[-1] // period * period
    lap = lap[..., :h, :w].reshape(x.shape[0], c, h // period, period, w // period, period)
    return lap.mean(dim=(0, 2, 4))


def grid_loss(sr: torch.Tensor, hr: torch.Tensor, period: int) -> torch.Tensor:
    """Squared difference of SR's and HR's per-phase Laplacian means (phase_means) over the batch.

    A x`period` generator computes each sub-pixel phase with its own weights. Under the
    adversarial term alone it learns to add detail as a fixed pattern at that period (the
    GAN cross-hatch; metrics.grid_ratio_y reads it), because phase-specific weights see every
    pixel of every image and move fastest. HR photos have no such pattern: their phase means
    are equal up to sampling noise, which comparing with HR's own (same crops) cancels. The
    loss leaves texture alone, since texture averages out over the phases.
    """
    return F.mse_loss(phase_means(sr, period), phase_means(hr, period))


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE on logits; the generator's loss is adversarial_loss(D(G(lr)), real=True) = -log D(G(lr))."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())
