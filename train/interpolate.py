"""`srtrt interpolate`: network interpolation between a PSNR-trained model and its GAN fine-tune.

θ(α) = (1 - α)·θ_psnr + α·θ_gan, parameter by parameter (Wang et al., ESRGAN 2018, §3.4). The
GAN model is a fine-tune of the PSNR model, so the two sit in one basin and every α between
them is a working network: α = 0 is the SRResNet's blur, α = 1 the GAN's full texture (and its
noise). The trade-off is picked on the same held-out training photos the trainer validates on
(never Set5/Set14), by the trainer's own srgan selection rule: the α whose fine-detail energy
comes closest to the HR photos', among those within `psnr_drop` dB of the PSNR model and with
no more than GRID_GROWTH_MAX times its sub-pixel grid.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from srtrt import checkpoint
from srtrt.engine.datapath.imageio import images_in
from srtrt.errors import SrtrtError
from srtrt.outputs import check_output_file, check_overwrite

from .config import TrainConfig
from .data import split_holdout
from .trainer import GRID_GROWTH_MAX, Validation, load_srtrt_checkpoint, make_folder, selection_score, validate, validation_pairs

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def blend(psnr: checkpoint.Checkpoint, gan: checkpoint.Checkpoint, alpha: float) -> torch.nn.Module:
    """The generator with weights (1 - alpha) * psnr + alpha * gan (floating tensors; others from psnr)."""
    if psnr.architecture != gan.architecture or psnr.config != gan.config:
        raise SrtrtError(f"cannot interpolate {psnr.architecture} {psnr.config} with {gan.architecture} {gan.config}")
    if not 0.0 <= alpha <= 1.0:
        raise SrtrtError(f"alpha must be in [0, 1], got {alpha}")
    mixed = {}
    for name, a in psnr.state_dict.items():
        b = gan.state_dict[name]
        mixed[name] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype) if a.dtype.is_floating_point else a
    return checkpoint.Checkpoint(psnr.architecture, psnr.config, mixed).build()


def sweep(psnr, gan, pairs, alphas=DEFAULT_ALPHAS) -> list[dict]:
    """Validation Y-PSNR, HF ratio and grid strength of each blend, in the order of `alphas`."""
    rows = []
    for alpha in alphas:
        val, hf, grid = validate(blend(psnr, gan, alpha), pairs, torch.device("cpu"))
        rows.append({"alpha": alpha, "val_psnr_y": round(val, 4), "val_hf_ratio_y": round(hf, 4),
                     "val_grid_ratio_y": round(grid, 4)})
    return rows


def _validation(row: dict) -> Validation:
    return Validation(row["val_psnr_y"], row["val_hf_ratio_y"], row.get("val_grid_ratio_y", float("nan")))


def choose(rows: list[dict], psnr_drop: float) -> dict:
    """The trainer's srgan rule over the sweep; the floor is relative to the PSNR model (alpha 0)."""
    start = next((_validation(r) for r in rows if r["alpha"] == 0.0), None)
    if start is None:
        raise SrtrtError("the sweep must include alpha 0 (the PSNR model) to set the PSNR floor")
    # Ties (all below the floor but alpha 0) go to the higher PSNR.
    return max(rows, key=lambda r: (selection_score("srgan", _validation(r), start, psnr_drop), r["val_psnr_y"]))


def refuse_output_over_inputs(out: str, inputs: list[str | None], overwrite: bool = False) -> None:
    """The blend's weights and sidecar may not replace a checkpoint it is made from, nor any other
    file without `overwrite` (as export, build and compare)."""
    sources = [path for model in inputs for path in checkpoint.model_files(model)]
    check_output_file(out, flag="--out")  # as given: a folder, "/" at its end included, is refused
    for written in checkpoint.model_files(out)[1:]:  # the weights and the sidecar `out` names
        check_output_file(written, sources, flag="--out")
        check_overwrite(written, overwrite)


def interpolate(data: str, psnr_model: str, gan_model: str, out: str, psnr_drop: float,
                alpha: float | None = None, val_count: int | None = None, val_crop: int | None = None,
                overwrite: bool = False) -> tuple[Path, dict]:
    """Write the chosen (or given) blend to `out` as an srtrt checkpoint; returns its path and the choice."""
    if not 0 <= psnr_drop < float("inf"):  # a negative floor leaves no alpha but the PSNR model's
        raise SrtrtError(f"--psnr-drop must be a number >= 0, not {psnr_drop}")
    d = TrainConfig(data=data)
    val_count = d.val_count if val_count is None else val_count
    val_crop = d.val_crop if val_crop is None else val_crop
    refuse_output_over_inputs(out, [psnr_model, gan_model], overwrite)
    make_folder(Path(out).parent, "--out")
    psnr, gan = load_srtrt_checkpoint(psnr_model, "--psnr"), load_srtrt_checkpoint(gan_model, "--gan")
    scale = psnr.config.scale  # the validation options are judged as `srtrt train` judges them
    TrainConfig(data=data, scale=scale, patch=4 * scale, val_count=val_count, val_crop=val_crop).check()
    _, val_paths = split_holdout(images_in(data), val_count)
    if not val_paths:
        raise SrtrtError("no held-out photos to choose alpha on (use --val-count >= 1)", data)
    pairs = validation_pairs(val_paths, psnr.config.scale, val_crop)
    if not pairs:
        raise SrtrtError("none of the held-out photos could be read, so there is nothing to choose alpha on", data)
    alphas = DEFAULT_ALPHAS if alpha is None else (0.0, alpha)
    rows = sweep(psnr, gan, pairs, alphas)
    chosen = choose(rows, psnr_drop) if alpha is None else rows[-1]
    model = blend(psnr, gan, chosen["alpha"])
    meta = {"training": {
        "phase": "interpolate", "alpha": chosen["alpha"], "rule": None if alpha is not None else
        f"HF ratio closest to 1 within {psnr_drop} dB of the PSNR model and at most {GRID_GROWTH_MAX}x its "
        "grid strength, on held-out training photos",
        "val_psnr_y": chosen["val_psnr_y"], "val_hf_ratio_y": chosen["val_hf_ratio_y"],
        "val_grid_ratio_y": chosen["val_grid_ratio_y"],
        "val_images": [pair.name for pair in pairs], "val_crop": val_crop, "sweep": rows,
        "psnr_model": {"sha256": psnr.sha256, **psnr.meta.get("training", {})},
        "gan_model": {"sha256": gan.sha256, **gan.meta.get("training", {})},
    }}
    path = checkpoint.save(out, model, psnr.architecture, psnr.config, meta)
    return path, chosen


def main(args: argparse.Namespace) -> int:
    path, chosen = interpolate(args.data, args.psnr, args.gan, args.out, args.psnr_drop, args.alpha,
                               args.val_count, args.val_crop, args.overwrite)
    print(f"alpha {chosen['alpha']}: validation Y-PSNR {chosen['val_psnr_y']:.3f} dB, "
          f"HF ratio {chosen['val_hf_ratio_y']:.3f}, grid {chosen['val_grid_ratio_y']:.3f} -> {path}")
    return 0
