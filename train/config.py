"""Training options and their defaults (torch-free, so the CLI can show them quickly)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/srresnet_x4"
    phase: str = "srresnet"          # srresnet | srgan
    architecture: str = "srresnet"   # a name in srtrt/registry.py
    init: str | None = None          # weights to start from (required by srgan: the SRResNet)
    scale: int = 4
    blocks: int = 16
    channels: int = 64
    patch: int = 96                  # HR crop size
    batch: int = 16
    iters: int = 100_000
    minutes: float = 0.0             # wall-clock budget: stop, validate and save once it is spent (0 = none)
    lr: float = 1e-4
    schedule: str = "constant"       # constant | cosine | step (x0.1 at half, the paper's SRGAN)
    content_loss: str = "vgg54"      # srgan: mse | vgg22 | vgg54 (Ledig et al., Table 1)
    adv_weight: float = 1e-3
    pixel_weight: float = 0.0        # srgan: optional MSE term
    grid_weight: float = 10.0        # srgan: weight of losses.grid_loss (0 = off)
    gan_psnr_drop: float = 1.5       # srgan: checkpoints more than this many dB below the start are not kept
    vgg_weights: str | None = None
    val_count: int = 4               # photos of `data` held out for validation (never set5/set14)
    val_crop: int = 256
    val_every: int = 1000
    log_every: int = 20
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"                # auto | bf16 | fp16 | off
    resume: bool = True
    progress: bool = True
