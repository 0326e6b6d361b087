"""Training patches: random aligned LR/HR crops with flips and 90-degree rotations.

Every HR photo is decoded once, cropped to a multiple of the scale and downscaled whole with
PIL bicubic (the same degradation `srtrt eval` applies), so LR pixels are exactly those a
test image would get. A patch is a pure function of (seed, index): results do not depend on
the number of worker processes, and a resumed run draws the same patches it would have.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srtrt.engine.datapath.imageio import read_eight_bit_rgb
from srtrt.errors import SrtrtError

from .degrade import bicubic_downscale, modcrop


def load_rgb(path: Path) -> Image.Image:
    return read_eight_bit_rgb(path)


def readable_rgb(path: Path) -> Image.Image | None:
    """The photo as load_rgb reads it, or None after naming it on one line: an unreadable file in a
    folder of photos is skipped, as `srtrt calibrate` skips one."""
    try:
        return load_rgb(path)
    except SrtrtError as e:
        print(f"srtrt: {e} (skipped)", file=sys.stderr)
        return None


def split_holdout(paths: list[Path], count: int) -> tuple[list[Path], list[Path]]:
    """Every k-th photo is held out for validation, so it spreads over the (sorted) folder."""
    if count <= 0:
        return paths, []
    step = max(1, len(paths) // count)
    held = set(paths[step - 1::step][:count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


class PatchDataset(torch.utils.data.Dataset):
    """Index i -> (lr, hr): lr float32 CHW in [0,1] of size patch/scale, hr float32 CHW in [-1,1]."""

    def __init__(self, paths: list[Path], scale: int = 4, patch: int = 96, seed: int = 0, length: int = 1 << 40):
        if patch % scale:
            raise ValueError(f"patch {patch} must be a multiple of scale {scale}")
        self.scale, self.patch, self.seed, self.length = scale, patch, seed, length
        self.hr, self.lr = [], []
        readable = 0
        for p in paths:
            photo = readable_rgb(p)
            if photo is None:
                continue
            readable += 1
            hr = modcrop(photo, scale)
            if min(hr.size) < patch:
                continue
            self.hr.append(np.asarray(hr))
            self.lr.append(np.asarray(bicubic_downscale(hr, scale)))
        if not readable:
            raise ValueError(f"none of the {len(paths)} training photos could be read")
        if not self.hr:
            raise ValueError(f"no training image is at least {patch}x{patch}")

    def __len__(self):
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.hr)))
        lr_img, hr_img, s, lp = self.lr[k], self.hr[k], self.scale, self.patch // self.scale
        y = int(rng.integers(lr_img.shape[0] - lp + 1))
        x = int(rng.integers(lr_img.shape[1] - lp + 1))
        lr = lr_img[y:y + lp, x:x + lp]
        hr = hr_img[y * s:(y + lp) * s, x * s:(x + lp) * s]
        flip, rot = bool(rng.integers(2)), int(rng.integers(4))
        if flip:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        lr, hr = np.rot90(lr, rot), np.rot90(hr, rot)
        lr = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1).float().div_(255)
        hr = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1).float().div_(127.5).sub_(1)
        return lr, hr


class OffsetSampler(torch.utils.data.Sampler):
    """Indices start .. start+count: a resumed run continues the same patch sequence."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def __iter__(self):
        return iter(range(self.start, self.start + self.count))

    def __len__(self):
        return self.count
