"""`srtrt eval`: Y-PSNR / SSIM / HF ratio of one or more models and of bicubic on folders of HR images.

The protocol of the SR literature: HR cropped to a multiple of the scale, LR by PIL bicubic
downscale, the model run on the whole LR image, its output quantised to 8 bits, and the
metrics computed on BT.601 studio-range Y with `scale` pixels cut from each border. The
bicubic baseline is PIL bicubic upscaling of the same LR image. Averages are over images.

PSNR and SSIM reward the blur an MSE-trained model produces; what a GAN-trained model is for
shows in the third measure, `hf`: the high-frequency (Laplacian) energy of the output relative
to the HR image's (train/metrics.py `hf_ratio_y`). 1 is as much fine detail as the original;
bicubic and MSE models sit well below it, a GAN should come closer without passing it. The
fourth, `grid`, is what a GAN must not buy that detail with: a pattern repeating at the
network's sub-pixel period (`grid_ratio_y`; HR photos read about 0.01).

Several models (`--model srresnet --model srgan`) are scored on the same images in one run.
The JSON keeps the one-model shape, `model` / `model_*` being the first model's scores, and
adds `models` ({label: {psnr, ssim, hf, grid}}) per folder and per image for all of them.

Every output crosses back from torch through `tensor_to_uint8`, which checks the [0, 1] value
range: a tensor on the [-1, 1] training scale (or one mapped twice) fails loudly instead of
producing a plausible-looking low score. RGB inputs go in through `image_to_tensor`; a grey
model's luma plane is made beside it, on the same [0, 1] scale.

Any model srtrt.load_model reads is scored, community model files included: the scale, image
channels and size requirements are the model's (its `.facts`, registry.ModelFacts). A grey model
is given the LR image's luma and its output is scored as a grey image, so its scores are on Y
like every other column's.
"""
from __future__ import annotations

import json
import math
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srtrt.engine.datapath.imageio import images_in, read_eight_bit_rgb
from srtrt.errors import SrtrtError, shown

from .degrade import bicubic_downscale, bicubic_upscale, modcrop
from .metrics import grid_ratio_y, hf_ratio_y, mean_of_defined, psnr_y, ssim_y

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


def read_hr(path: Path, scale: int, multiple_of: int = 1, minimum: int = 1) -> Image.Image:
    """An HR test image as RGB (grey, palette, alpha dropped), cropped to a multiple of `scale`
    (times `multiple_of`: LR sides the models need to be multiples of); refused when its LR is
    smaller than `minimum`."""
    img = read_eight_bit_rgb(path)  # a bad file: one SrtrtError line naming it
    hr = modcrop(img, scale * multiple_of)
    if min(hr.size) < 2 * scale + SSIM_WINDOW or min(hr.size) // scale < minimum:
        raise SrtrtError(f"image is {img.size[0]}x{img.size[1]}, too small to evaluate at x{scale}", path)
    return hr


@torch.inference_mode()
def super_resolve(model: torch.nn.Module, lr: Image.Image) -> np.ndarray:
    """Run the inference view ([0,1] in and out) on the whole LR image; uint8 HxWx3.

    A grey model (facts.channels 1) gets the LR luma (PIL "L": BT.601 weights, the ones the
    Y metrics use) and its output comes back as grey RGB, whose Y is that luma."""
    if model_channels(model) == 1:
        luma = torch.from_numpy(np.asarray(lr.convert("L"), dtype=np.float32) / 255.0)[None, None]
        return tensor_to_uint8(model(luma).expand(-1, 3, -1, -1))
    return tensor_to_uint8(model(image_to_tensor(lr)))


def model_channels(model: torch.nn.Module) -> int:
    """Image channels the model takes and gives: 3 (RGB) or 1 (grey); models without facts are RGB."""
    facts = getattr(model, "facts", None)
    return facts.channels if facts is not None else 3


def lr_requirements(models) -> tuple[int, int]:
    """(multiple_of, minimum) that LR images must meet for every one of `models` (their facts)."""
    facts = [f for f in (getattr(m, "facts", None) for m in models) if f is not None]
    return reduce(math.lcm, (f.multiple_of for f in facts), 1), max((f.minimum for f in facts), default=1)


def model_scale(model: torch.nn.Module) -> int:
    scale = getattr(model, "scale", None)
    if not isinstance(scale, int):
        raise ValueError("the model must carry an integer `.scale` (use srtrt.load_model)")
    return scale


def scores(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict:
    """PSNR, SSIM, HF ratio and grid strength of one uint8 RGB output against its HR image, on Y,
    with `scale` pixels cut from each border (the grid's period is the scale)."""
    return {"psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale), "hf": hf_ratio_y(sr, hr, scale),
            "grid": grid_ratio_y(sr, scale, scale)}


def evaluate_image(path: Path, models: dict[str, torch.nn.Module], scale: int) -> dict:
    """One row: `models` (label -> inference view) and bicubic scored on one HR image."""
    hr_img = read_hr(path, scale, *lr_requirements(models.values()))
    hr = np.asarray(hr_img)
    lr = bicubic_downscale(hr_img, scale)
    per_model = {}
    for label, model in models.items():
        sr = super_resolve(model, lr)
        if sr.shape != hr.shape:
            raise SrtrtError(f"model output {sr.shape[1]}x{sr.shape[0]} does not match HR {hr.shape[1]}x{hr.shape[0]}",
                             path)
        per_model[label] = scores(sr, hr, scale)
    bicubic = scores(np.asarray(bicubic_upscale(lr, scale)), hr, scale)
    first = next(iter(per_model.values()))
    return {"name": path.name, **{f"model_{k}": v for k, v in first.items()},
            **{f"bicubic_{k}": v for k, v in bicubic.items()}, "models": per_model}


BASELINE = "bicubic"  # the method every model is scored beside, under this name in the table and the JSON


def evaluate_folder(folder: str | Path, model, scale: int | None = None) -> dict:
    """Scores of a model (an inference view with `.scale`), or of several ({label: view}), and of
    bicubic on every image in `folder`.

    Returns {"model": {"psnr", "ssim", "hf", "grid"}, "bicubic": {...}, "images": [per-image rows],
    "models": {label: {...}}}, "model" being the first model; averages over images, as the SR
    literature takes them.
    """
    models = dict(model) if isinstance(model, dict) else {"model": model}
    if not models:
        raise ValueError("no model to evaluate")
    scale = one_scale(models, scale)
    rows = [evaluate_image(p, models, scale) for p in images_in(folder)]
    averages = {label: _means([r["models"][label] for r in rows]) for label in models}
    return {
        "model": next(iter(averages.values())),
        BASELINE: _means([_prefixed(r, "bicubic_") for r in rows]),
        "images": rows,
        "models": averages,
    }


def one_scale(models: dict[str, torch.nn.Module], asked: int | None = None) -> int:
    """The scale every model shares (a table compares one scale), checked against `--scale` when given."""
    scales = {label: model_scale(m) for label, m in models.items()}
    if len(set(scales.values())) > 1:
        raise SrtrtError("models of different scales cannot share a table: "
                         + ", ".join(f"{label} is x{s}" for label, s in scales.items()))
    have = next(iter(scales.values()))
    if asked is not None and asked != have:
        raise SrtrtError(f"--scale {asked} does not match the model's scale x{have}")
    return have


def _means(rows: list[dict]) -> dict:
    """Per-key average of score dicts (psnr, ssim, hf, grid); an undefined score (NaN: HF of a flat
    image) is left out, and a key undefined on every image stays NaN. An exact reconstruction's
    infinite PSNR is left out of the PSNR average too (one such image made the whole average
    infinite; the table says how many were); every image exact keeps it infinite."""
    means = {k: mean_of_defined([r[k] for r in rows]) for k in rows[0]}
    finite = [r["psnr"] for r in rows if r["psnr"] != math.inf]
    if finite:
        means["psnr"] = mean_of_defined(finite)
    return means


def _folder_keys(dirs: list[str]) -> list[str]:
    """Each folder's name; the path as given when two folders share a name."""
    names = [Path(d).resolve().name or str(d) for d in dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, dirs, strict=True)]


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
    """One block per folder: a row per image and the average, columns PSNR / SSIM / HF / grid per method."""
    lines = []
    for key, res in results.items():
        methods = [*res["models"], BASELINE]
        names = [shown(r["name"]) for r in res["images"]]  # a newline or an escape in a name: one row still
        width = max([len("average")] + [len(name) for name in names])
        heads = [max(10, len(m) + 5) for m in methods]
        lines.append(f"{shown(key)} (x{scale}, Y channel, {scale}-pixel border cut; HF = fine-detail energy / HR's, "
                     f"grid = {scale}-pixel pattern strength, HR photos ~0.01)")
        lines.append(f"  {'image':<{width}}" + "".join(f"  {m + ' PSNR':>{h}}  {'SSIM':>6}  {'HF':>5}  {'grid':>5}"
                                                       for m, h in zip(methods, heads, strict=True)))
        rows = [(name, [*r["models"].values(), _prefixed(r, "bicubic_")]) for name, r in zip(names, res["images"], strict=True)]
        rows.append(("average", [*res["models"].values(), res[BASELINE]]))
        for name, cells in rows:
            lines.append(f"  {name:<{width}}" + "".join(
                f"  {c['psnr']:>{h}.3f}  {c['ssim']:>6.4f}  {c['hf']:>5.3f}  {c['grid']:>5.3f}"
                for c, h in zip(cells, heads, strict=True)))
        for method, column in zip(methods, zip(*(cells for _, cells in rows[:-1]), strict=True), strict=True):
            if 0 < (exact := sum(c["psnr"] == math.inf for c in column)) < len(column):
                lines.append(f"  ({method}: {exact} exact image(s), PSNR infinite, left out of its PSNR average)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _prefixed(row: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def model_labels(specs: list) -> list[str]:
    """Column names for `--model` values: embedded names or file stems; the value as given where two
    collide, or where a stem is the baseline's own name (a model file called bicubic.safetensors)."""
    from srtrt import checkpoint

    labels = [checkpoint.model_label(spec) for spec in specs]
    return [label if labels.count(label) == 1 and label != BASELINE else str(spec)
            for label, spec in zip(labels, specs, strict=True)]


def load_models(specs: list | None, allow_noncommercial: bool = False) -> dict[str, torch.nn.Module]:
    """label -> inference view for each `--model` value (None or [] = the default model)."""
    import srtrt

    specs = list(specs or [None])
    labels = model_labels(specs)
    if len(set(labels)) != len(labels):
        raise SrtrtError(f"a model is named twice: {', '.join(map(str, specs))}")
    return {label: srtrt.load_model(spec, allow_noncommercial) for label, spec in zip(labels, specs, strict=True)}


def main(args) -> int:
    models = load_models(args.model, getattr(args, "allow_noncommercial", False))
    scale = one_scale(models, args.scale)
    if scale == 1:  # the input would be the reference itself: bicubic scores infinity, the model whatever it changes
        raise SrtrtError("eval scores super-resolution from a bicubic downscale; an x1 (restoration) model has "
                         "no downscaled input to score: use srtrt compare to see what it does")
    keys = _folder_keys(args.dirs)
    results = {key: evaluate_folder(d, models, scale) for key, d in zip(keys, args.dirs, strict=True)}
    if args.json:
        print(json.dumps(_json_safe(results)))
    else:
        print(format_table(results, scale), end="")
    return 0
