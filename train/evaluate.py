"""`srtrt eval`: Y-PSNR / SSIM of a model and of bicubic on folders of HR images.

The protocol of the SR literature: HR cropped to a multiple of the scale, LR by PIL bicubic
downscale, the model run on the whole LR image, its output quantised to 8 bits, and both
metrics computed on BT.601 studio-range Y with `scale` pixels cut from each border. The
bicubic baseline is PIL bicubic upscaling of the same LR image. Averages are over images.

Every image crosses between PIL and torch through `image_to_tensor` / `tensor_to_uint8`,
which check the [0, 1] value range: a tensor on the [-1, 1] training scale (or one mapped
twice) fails loudly instead of producing a plausible-looking low score.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from srtrt.errors import SrtrtError

from .data import IMAGE_SUFFIXES
from .degrade import bicubic_downscale, bicubic_upscale, modcrop
from .metrics import psnr_y, ssim_y

SSIM_WINDOW = 11  # the Gaussian window needs at least this many pixels after the border cut
RANGE_TOLERANCE = 1e-4  # float noise allowed outside [0, 1] before a tensor is refused


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 1x3xHxW in [0, 1] (the inference view's input range)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) float in [0, 1] -> uint8 HxWx3, rounded and clamped.

    Refuses anything outside [0, 1]: that is a tensor on the wrong scale, not a rounding
    matter, and clamping it silently is how a broken evaluation reports 11 dB.
    """
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected 3xHxW RGB, got shape {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"image tensor must be in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return x.detach().float().mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def read_hr(path: Path, scale: int) -> Image.Image:
    """An HR test image as RGB (grey, palette, alpha dropped), cropped to a multiple of `scale`."""
    try:
        with Image.open(path) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise SrtrtError(f"cannot read image ({e.__class__.__name__}: {detail})", path) from None
    hr = modcrop(img, scale)
    if min(hr.size) < 2 * scale + SSIM_WINDOW:
        raise SrtrtError(f"image is {img.size[0]}x{img.size[1]}, too small to evaluate at x{scale}", path)
    return hr


@torch.inference_mode()
def super_resolve(model: torch.nn.Module, lr: Image.Image) -> np.ndarray:
    """Run the inference view (RGB [0,1] in and out) on the whole LR image; uint8 HxWx3."""
    return tensor_to_uint8(model(image_to_tensor(lr)))


def model_scale(model: torch.nn.Module) -> int:
    scale = getattr(model, "scale", None)
    if not isinstance(scale, int):
        raise ValueError("the model must carry an integer `.scale` (use srtrt.load_model)")
    return scale


def evaluate_image(path: Path, model: torch.nn.Module, scale: int) -> dict:
    hr_img = read_hr(path, scale)
    hr = np.asarray(hr_img)
    lr = bicubic_downscale(hr_img, scale)
    sr = super_resolve(model, lr)
    if sr.shape != hr.shape:
        raise SrtrtError(f"model output {sr.shape[1]}x{sr.shape[0]} does not match HR {hr.shape[1]}x{hr.shape[0]}", path)
    bicubic = np.asarray(bicubic_upscale(lr, scale))
    return {"name": path.name,
            "model_psnr": psnr_y(sr, hr, border=scale), "model_ssim": ssim_y(sr, hr, border=scale),
            "bicubic_psnr": psnr_y(bicubic, hr, border=scale), "bicubic_ssim": ssim_y(bicubic, hr, border=scale)}


def list_test_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SrtrtError("not a directory", folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SrtrtError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this directory", folder)
    return paths


def evaluate_folder(folder: str | Path, model: torch.nn.Module, scale: int | None = None) -> dict:
    """Scores of `model` (an inference view with `.scale`) and of bicubic on every image in `folder`.

    Returns {"model": {"psnr", "ssim"}, "bicubic": {"psnr", "ssim"}, "images": [per-image rows]},
    averages taken over images as the SR literature does.
    """
    scale = check_scale(model, scale)
    rows = [evaluate_image(p, model, scale) for p in list_test_images(folder)]
    return {
        "model": {"psnr": _mean(rows, "model_psnr"), "ssim": _mean(rows, "model_ssim")},
        "bicubic": {"psnr": _mean(rows, "bicubic_psnr"), "ssim": _mean(rows, "bicubic_ssim")},
        "images": rows,
    }


def check_scale(model: torch.nn.Module, scale: int | None) -> int:
    have = model_scale(model)
    if scale is not None and scale != have:
        raise SrtrtError(f"--scale {scale} does not match the model's scale x{have}")
    return have


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _folder_keys(dirs: list[str]) -> list[str]:
    """Each folder's name; the path as given when two folders share a name."""
    names = [Path(d).resolve().name or str(d) for d in dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, dirs)]


def _json_safe(value):
    """JSON has no Infinity: an exact reconstruction (PSNR = inf) is written as null."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def format_table(results: dict[str, dict], scale: int) -> str:
    lines = []
    for key, res in results.items():
        width = max([len("average")] + [len(r["name"]) for r in res["images"]])
        lines.append(f"{key} (x{scale}, Y channel, {scale}-pixel border cut)")
        lines.append(f"  {'image':<{width}}  {'model PSNR':>10}  {'SSIM':>6}  {'bicubic PSNR':>12}  {'SSIM':>6}")
        for r in res["images"]:
            lines.append(f"  {r['name']:<{width}}  {r['model_psnr']:>10.3f}  {r['model_ssim']:>6.4f}"
                         f"  {r['bicubic_psnr']:>12.3f}  {r['bicubic_ssim']:>6.4f}")
        m, b = res["model"], res["bicubic"]
        lines.append(f"  {'average':<{width}}  {m['psnr']:>10.3f}  {m['ssim']:>6.4f}  {b['psnr']:>12.3f}  {b['ssim']:>6.4f}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(args) -> int:
    import srtrt

    model = srtrt.load_model(args.model)
    scale = check_scale(model, args.scale)
    results = {key: evaluate_folder(d, model, scale) for key, d in zip(_folder_keys(args.dirs), args.dirs)}
    if args.json:
        print(json.dumps(_json_safe(results)))
    else:
        sys.stdout.write(format_table(results, scale))
    return 0
