"""Training options and their defaults (torch-free, so the CLI can show them quickly)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from srtrt.errors import SrtrtError

DEFAULT_OUT = {"srresnet": "runs/srresnet_x4", "srgan": "runs/srgan_x4"}  # each phase its own run folder

@dataclass
class TrainConfig:
    data: str
    out: str | None = None           # None: DEFAULT_OUT[phase]
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

    def __post_init__(self):
        if self.out is None:
            self.out = DEFAULT_OUT.get(self.phase, DEFAULT_OUT["srresnet"])

    def check(self) -> None:
        """Refuse, in one line, a value no run can use, before any work starts."""
        limits = [
            (self.phase in DEFAULT_OUT, f"--phase must be srresnet or srgan, not {self.phase!r}"),
            (self.iters >= 1, f"--iters must be >= 1, not {self.iters}"),
            (self.batch >= 1, f"--batch must be >= 1, not {self.batch}"),
            (0 <= self.lr < math.inf, f"--lr must be a number >= 0, not {self.lr}"),
            (self.log_every >= 1, f"--log-every must be >= 1, not {self.log_every}"),
            (self.val_every >= 1, f"--val-every must be >= 1, not {self.val_every}"),
            (self.val_count >= 0, f"--val-count must be >= 0, not {self.val_count}"),
            (self.workers >= 0, f"--workers must be >= 0, not {self.workers}"),
            (self.minutes >= 0, f"--minutes must be >= 0, not {self.minutes}"),
            # numpy's generators take no negative seed and torch's no seed past 64 bits
            (0 <= self.seed < 2**63, f"--seed must be in [0, 2**63), not {self.seed}"),
            (self.scale >= 1 and self.patch % self.scale == 0,
             f"--patch {self.patch} must be a multiple of --scale {self.scale}"),
            # One LR pixel per patch side leaves nothing to crop or rotate.
            (self.patch >= 2 * self.scale, f"--patch must be at least {2 * self.scale} (2 x --scale), not {self.patch}"),
            # PSNR leaves out `scale` pixels on each side and the grid metric needs a few periods.
            (self.val_crop >= 4 * self.scale,
             f"--val-crop must be at least {4 * self.scale} (4 x --scale), not {self.val_crop}"),
        ]
        limits += [(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
                   for name in ("adv_weight", "pixel_weight", "grid_weight", "gan_psnr_drop")]
        for ok, message in limits:
            if not ok:
                raise SrtrtError(message)
