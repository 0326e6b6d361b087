"""SRResNet / SRGAN training, readable in one sitting.

Phase "srresnet": MSE between G(lr) and hr (both on the [-1, 1] tanh scale).
Phase "srgan":    content loss (MSE, VGG22 or VGG54: Ledig et al.'s SRGAN-MSE/-VGG22/-VGG54)
                  + 1e-3 adversarial BCE + grid loss (no sub-pixel pattern; losses.grid_loss)
                  (+ optional pixel MSE), one D step per G step, the generator initialised
                  from an SRResNet checkpoint.

Checkpoint selection uses held-out training photos only: the srresnet phase keeps the best
validation PSNR; the srgan phase keeps the most faithful detail (high-frequency energy
closest to the HR photos') among checkpoints within `gan_psnr_drop` dB of its start and
without a grown sub-pixel grid (selection_score).

A run directory holds `state.*` (everything needed to resume), `model.*` (the best generator
by validation PSNR, an srtrt checkpoint), `metrics.jsonl` and `curve.png`.
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from srtrt import atomic, checkpoint, community, registry
from srtrt.engine.batch.signals import StopOnSignals
from srtrt.engine.datapath.imageio import images_in
from srtrt.errors import CannotWrite, SrtrtError, shown
from srtrt.hardware import cpu_has_fast_bf16
from srtrt.nets import Discriminator
from srtrt.outputs import check_writable_folder

from .config import TrainConfig
from .data import OffsetSampler, PatchDataset, readable_rgb, split_holdout
from .degrade import bicubic_downscale, modcrop
from .losses import adversarial_loss, content_loss, grid_loss
from .metrics import grid_ratio_y, hf_ratio_y, mean_of_defined, psnr_y
from .state import load_state, save_state


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SrtrtError(f"--device {name}: not a device (auto, cpu or cuda[:i])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SrtrtError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SrtrtError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def pick_amp(name: str, device: torch.device) -> torch.dtype | None:
    if name == "off":
        return None
    if name in ("bf16", "fp16"):
        return torch.bfloat16 if name == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, cfg.iters) / cfg.iters))
    if cfg.schedule == "step":
        return cfg.lr if step < cfg.iters // 2 else cfg.lr * 0.1
    return cfg.lr


MIN_VAL_CROP = 4  # in multiples of the scale: the smallest held-out crop the validation scores measure


class ValidationPair(NamedTuple):
    lr: torch.Tensor  # 1x3xhxw in [0, 1]
    hr: np.ndarray    # HxWx3 uint8
    name: str         # the photo's file name, as a checkpoint's sidecar records it


def validation_pairs(paths, scale: int, crop: int) -> list[ValidationPair]:
    """Centre crops of the held-out photos that can be read and measured (one that cannot is named
    and left out)."""
    pairs = []
    for p in paths:
        img = readable_rgb(p)
        if img is None:
            continue
        w, h = img.size
        c = min(crop, w, h) // scale * scale
        if c < MIN_VAL_CROP * scale:  # the scores shave a border of `scale` pixels and need pixels left
            print(f"srtrt: {shown(p)}: {w}x{h} is too small to validate on (a square of at least "
                  f"{MIN_VAL_CROP * scale} px is needed at x{scale}) (skipped)", file=sys.stderr)
            continue
        hr = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
        hr = modcrop(hr, scale)
        lr = torch.from_numpy(np.array(bicubic_downscale(hr, scale))).permute(2, 0, 1)[None].float() / 255
        pairs.append(ValidationPair(lr, np.asarray(hr), p.name))
    return pairs


class Validation(NamedTuple):
    psnr: float  # mean Y-PSNR
    hf: float    # mean high-frequency energy ratio, SR / HR
    grid: float  # mean sub-pixel grid strength (metrics.grid_ratio_y)


@torch.no_grad()
def validate(generator: torch.nn.Module, pairs, device) -> Validation:
    """Y-PSNR, HF ratio and grid strength averaged over the held-out pairs."""
    view = registry.inference_view(generator)
    scale = generator.config.scale
    rows = []
    for lr, hr, _ in pairs:
        sr = view(lr.to(device))[0].permute(1, 2, 0).mul(255).round().byte().cpu().numpy()
        rows.append((psnr_y(sr, hr, scale), hf_ratio_y(sr, hr, scale), grid_ratio_y(sr, scale, scale)))
    generator.train()
    return Validation(*(mean_of_defined(col) for col in zip(*rows))) if rows else Validation(*[float("nan")] * 3)


GRID_GROWTH_MAX = 2.0  # srgan: a checkpoint may carry at most this many times its start's grid strength


def selection_score(phase: str, val: Validation, start: Validation, max_drop: float) -> float:
    """Higher is better. srresnet: PSNR. srgan: detail (HF ratio, capped at HR's), within a PSNR
    floor `max_drop` dB below the start and without growing the start's sub-pixel grid more
    than GRID_GROWTH_MAX times: detail bought with a regular pattern is not detail."""
    if phase != "srgan":
        return val.psnr
    if val.psnr < start.psnr - max_drop or val.grid > GRID_GROWTH_MAX * start.grid:
        return -float("inf")
    return -abs(1.0 - val.hf)


def plot_curve(metrics_path: Path, png: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the curve is a convenience; metrics.jsonl has the numbers
    rows = metric_rows(metrics_path)
    train = [(r["step"], r["loss_g"]) for r in rows if "loss_g" in r]
    val = [(r["step"], r["val_psnr"]) for r in rows if "val_psnr" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        ax[0].plot(*zip(*train), lw=0.8)
        ax[0].set_yscale("log")
    ax[0].set(xlabel="iteration", ylabel="generator loss", title="training loss")
    if val:
        ax[1].plot(*zip(*val), marker="o")
    ax[1].set(xlabel="iteration", ylabel="Y-PSNR (dB)", title="held-out validation")
    fig.tight_layout()
    picture = io.BytesIO()
    try:
        fig.savefig(picture, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic.write_or_refuse(png, picture.getvalue(), "training curve")  # a full disk leaves the last curve whole


def load_srtrt_checkpoint(path: str | None, flag: str) -> checkpoint.Checkpoint:
    """checkpoint.load, but a community model file is named as what it is: checkpoint.load would
    look for its NAME.json and name that, a file the user never gave."""
    if path is not None and Path(path).is_file() and community.is_community_file(path):
        raise SrtrtError(f"not an srtrt checkpoint but a community model file (no srtrt NAME.json beside it); "
                         f"{flag} takes srtrt checkpoints (NAME.safetensors + NAME.json)", path)
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt.meta.get("training", {}), dict):  # its runs are copied into the new sidecar
        raise SrtrtError(f'the sidecar\'s "training" is not a JSON object; {flag} takes srtrt checkpoints',
                         checkpoint.model_files(path)[-1])
    return ckpt


def network_config(cfg: TrainConfig):
    """The generator's config for these options, or one line saying which one no network takes."""
    try:
        return registry.get(cfg.architecture).make_config(
            {"scale": cfg.scale, "blocks": cfg.blocks, "channels": cfg.channels})
    except (KeyError, TypeError, ValueError) as e:
        raise SrtrtError(f"--scale/--blocks/--channels: {e.args[0] if e.args else e}") from None


def make_folder(folder: Path, flag: str) -> Path:
    """Create `folder` now, so an --out that cannot be one fails before any work."""
    if folder.exists() and not folder.is_dir():
        raise SrtrtError(f"is a file, not a folder ({flag} writes into it)", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SrtrtError(f"cannot create this folder ({flag}): {e.strerror or e}", folder) from None
    check_writable_folder(folder / "metrics.jsonl")  # a read-only one, before any photo is read
    return folder


def training_split(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos) of cfg.data; one line when no photo is left to train on."""
    paths = images_in(cfg.data)
    train_paths, val_paths = split_holdout(paths, cfg.val_count)
    if not train_paths:
        raise SrtrtError(f"all {len(paths)} photos are held out for validation (--val-count {cfg.val_count}): "
                         "lower --val-count or add photos", cfg.data)
    return train_paths, val_paths


# A run's saved state holds the weights of a network of these options (and, for srgan, a discriminator).
NETWORK_OPTIONS = ("phase", "architecture", "scale", "blocks", "channels")
RUN_FILES = ("state.safetensors", "state.json", "model.safetensors", "model.json", "last.safetensors", "last.json",
             "metrics.jsonl", "curve.png")


def saved_run_config(state_path: Path) -> dict | None:
    """The options the run in a folder was saved with, or None when the folder holds no saved state."""
    sidecar = state_path.with_suffix(".json")
    if not sidecar.exists():
        return None
    try:
        return json.loads(sidecar.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError, RecursionError) as e:
        raise SrtrtError(f"unreadable training state ({e}); --no-resume starts fresh", sidecar) from None


def refuse_another_network(out: Path, saved: dict, cfg: TrainConfig) -> None:
    """Resuming loads the saved weights into this run's networks: they must be the same networks."""
    differs = [f"{k} {saved[k]}, not {getattr(cfg, k)}" for k in NETWORK_OPTIONS
               if k in saved and saved[k] != getattr(cfg, k)]
    if differs:
        raise SrtrtError(f"holds a run with {'; '.join(differs)}, so it cannot be resumed as this run: "
                         "--no-resume starts fresh there (the earlier run is kept in a sub-folder), "
                         "or choose another --out", out)


def set_aside_earlier_run(out: Path) -> Path | None:
    """--no-resume in a folder that holds a run: its files move to out/earlier-N/, so the new run's
    record starts clean and nothing written is lost."""
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    n = 1
    while (out / f"earlier-{n}").exists():
        n += 1
    aside = out / f"earlier-{n}"
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    return aside


def refuse_diverged(loss: float, step: int, out: Path) -> None:
    """One line, exit 1, when the loss is no longer a number: the weights are lost (NaN or inf), and
    saving them would make a "best" model that upscales to black. What was saved before stays."""
    if not math.isfinite(loss):
        failed = SrtrtError(f"training diverged at step {step} (loss {loss}): nothing of this step is saved; "
                            "a lower --lr may hold it", out)
        failed.exit_code = 1
        raise failed


def resumed_lineage(saved: dict | None, given: dict | None, out: Path) -> dict | None:
    """The model a resumed run started from: its state says so; an --init naming another (or naming one
    for a run that started from scratch, whose weights it would never reach) is refused."""
    if given and (saved or {}).get("sha256") != given.get("sha256"):
        started = f"sha256 {str(saved.get('sha256'))[:12]}..." if saved else "none: it started from scratch"
        raise SrtrtError(f"--init names another model than the one this run started from ({started}): "
                         "--no-resume starts a new run from it", out)
    return saved


def log_row(log, row: dict, metrics_path: Path) -> None:
    """Append one metrics row; a full disk is one line naming the file."""
    try:
        log.write(json.dumps(row) + "\n")
        log.flush()
    except OSError as e:
        raise CannotWrite.of(e, metrics_path) from None


def _drop_rows_after(metrics_path: Path, step: int) -> None:
    if metrics_path.exists():
        rows = metric_rows(metrics_path)
        kept = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step)
        try:
            atomic.write_text(metrics_path, kept)
        except OSError as e:
            raise CannotWrite.of(e, metrics_path) from None


def metric_rows(metrics_path: Path) -> list[dict]:
    """The rows of metrics.jsonl. A cut-off last line (a power cut or a full disk mid-write) is
    left out, as the steps it logged run again; damage anywhere else is one line."""
    lines = [line for line in metrics_path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if n == len(lines):
                break
            raise SrtrtError(f"line {n} is not a metrics row; --no-resume starts fresh", metrics_path) from None
        rows.append(row)
    return rows


def train(cfg: TrainConfig) -> Path:
    # Every option, the device and the run folder are checked before any photo is read.
    cfg.check()
    gcfg = network_config(cfg)
    deadline = time.time() + cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    device = pick_device(cfg.device)
    amp = pick_amp(cfg.amp, device)
    gan = cfg.phase == "srgan"
    # the model files, the run to resume and the photos too, before --out is made: a refused run
    # leaves no empty run folder behind
    content = content_loss(cfg.content_loss, cfg.vgg_weights) if gan else None
    parent = load_srtrt_checkpoint(cfg.init, "--init") if cfg.init else None
    out = Path(cfg.out)
    state_path, metrics_path = out / "state", out / "metrics.jsonl"
    saved = saved_run_config(state_path) if cfg.resume else None
    if saved is not None:
        refuse_another_network(out, saved, cfg)
    elif parent is not None and parent.config != gcfg:
        raise SrtrtError(f"--init has config {parent.config}, this run {gcfg}: give this run the network options "
                         "it was trained with (--scale, --blocks, --channels)", cfg.init)
    elif parent is None and gan:
        raise SrtrtError("the srgan phase starts from an SRResNet checkpoint: pass --init PATH")
    # Data: held-out validation photos come from the training folder, never from test sets.
    train_paths, val_paths = training_split(cfg)
    out = make_folder(out, "--out")
    torch.manual_seed(cfg.seed)

    try:
        dataset = PatchDataset(train_paths, cfg.scale, cfg.patch, cfg.seed)
    except ValueError as e:  # no photo to cut patches from
        raise SrtrtError(str(e), cfg.data) from None
    val_pairs = validation_pairs(val_paths, cfg.scale, cfg.val_crop)

    # Models and optimisers.
    arch = registry.get(cfg.architecture)
    generator = arch.build(gcfg).to(device, memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    modules, optimizers = {"g": generator}, {"g": opt_g}
    if gan:
        content = content.to(device, memory_format=torch.channels_last)
        discriminator = Discriminator().to(device, memory_format=torch.channels_last)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        modules["d"], optimizers["d"] = discriminator, opt_d

    lineage = {"sha256": parent.sha256, **parent.meta.get("training", {})} if parent else None
    step, best, start = 0, -float("inf"), Validation(*[float("nan")] * 3)
    if saved is not None:
        doc = load_state(state_path, modules, optimizers)
        step, best = doc["step"], doc.get("best_score", doc.get("best_val_psnr", best))
        start = Validation(doc.get("start_val_psnr", start.psnr), float("nan"), doc.get("start_val_grid", start.grid))
        lineage = resumed_lineage(doc.get("initialised_from"), lineage, out)
    elif parent:  # start from trained weights (optimiser state starts fresh; its config checked above)
        generator.load_state_dict(parent.state_dict)
    if not cfg.resume and (aside := set_aside_earlier_run(out)):
        print(f"--no-resume: the earlier run in {out} is kept in {aside}")
    _drop_rows_after(metrics_path, step)  # a crash after the last save logged steps that will run again
    if saved is not None:  # said once the whole run folder has been read
        print(f"resumed {out} at step {step}")
    if gan and step == 0:  # the PSNR floor and grid cap for checkpoint selection are relative to the start
        start = validate(generator, val_pairs, device)

    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch, sampler=OffsetSampler(step * cfg.batch, (cfg.iters - step) * cfg.batch),
        num_workers=cfg.workers, drop_last=True, persistent_workers=cfg.workers > 0)
    generator.train()
    bar = tqdm(total=cfg.iters, initial=step, disable=not cfg.progress, dynamic_ncols=True, unit="it")
    log = open(metrics_path, "a")
    t0, seen = time.time(), 0
    for lr_img, hr_img in loader:
        lr_img = lr_img.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        hr_img = hr_img.to(device, non_blocking=True)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)

        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            sr = generator(lr_img)
        if gan:
            # Discriminator step: real HR vs the generator's (detached) output.
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss_d = 0.5 * (adversarial_loss(discriminator(hr_img), True)
                                + adversarial_loss(discriminator(sr.detach()), False))
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(loss_d).backward()
            scaler.step(opt_d)
            # Generator step: content + adversarial + grid (+ pixel).
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss_content = content(sr, hr_img)
                loss_adv = adversarial_loss(discriminator(sr), True)
            loss_g = loss_content + cfg.adv_weight * loss_adv
            loss_grid = grid_loss(sr, hr_img, cfg.scale)
            if cfg.grid_weight:
                loss_g = loss_g + cfg.grid_weight * loss_grid
            if cfg.pixel_weight:
                loss_g = loss_g + cfg.pixel_weight * F.mse_loss(sr.float(), hr_img)
        else:
            loss_g = F.mse_loss(sr.float(), hr_img)
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        step += 1
        seen += 1
        bar.update(1)
        out_of_time = time.time() >= deadline  # then this step is the last: logged, validated, saved

        validating = step % cfg.val_every == 0 or step == cfg.iters or out_of_time
        if step % cfg.log_every == 0 or validating:  # never a step's weights saved from a diverged run
            refuse_diverged(loss_g.item(), step, out)
        if step % cfg.log_every == 0 or step == cfg.iters or out_of_time:
            row = {"step": step, "loss_g": round(loss_g.item(), 6), "lr": learning_rate(cfg, step - 1),
                   "it_s": round(seen / (time.time() - t0), 3)}
            if gan:
                row.update(loss_d=round(loss_d.item(), 6), loss_content=round(loss_content.item(), 6),
                           loss_grid=float(f"{loss_grid.item():.4g}"))
            bar.set_postfix(loss=f"{row['loss_g']:.4g}", it_s=row["it_s"])
            log_row(log, row, metrics_path)
        if validating:
            scored = validate(generator, val_pairs, device)
            val, val_hf, val_grid = scored
            log_row(log, {"step": step, "val_psnr": round(val, 4), "val_hf": round(val_hf, 4),
                          "val_grid": round(val_grid, 4)}, metrics_path)
            meta = {"training": {"phase": cfg.phase, "data": Path(cfg.data).name, "iterations": step,
                                 "patch": cfg.patch, "batch": cfg.batch, "lr": cfg.lr, "schedule": cfg.schedule,
                                 "amp": str(amp).replace("torch.", "") if amp else "off",
                                 "val_psnr_y": round(val, 4), "val_hf_ratio_y": round(val_hf, 4),
                                 "val_grid_ratio_y": round(val_grid, 4),
                                 "val_images": [pair.name for pair in val_pairs]}}
            if gan:
                meta["training"].update(content_loss=cfg.content_loss, adv_weight=cfg.adv_weight,
                                        pixel_weight=cfg.pixel_weight, grid_weight=cfg.grid_weight)
            if lineage:  # a model's sidecar names every run that led to it
                meta["training"]["initialised_from"] = lineage
            score = selection_score(cfg.phase, scored, start, cfg.gan_psnr_drop)
            # a stop between a pair's two files (weights, sidecar) would leave a checkpoint or state no run can read
            with StopOnSignals() as held:
                if score > best or not val_pairs or not (out / "model.safetensors").exists():
                    best = score
                    checkpoint.save(out / "model", generator, arch.name, gcfg, meta)
                checkpoint.save(out / "last", generator, arch.name, gcfg, meta)
                save_state(state_path, step, modules, optimizers,
                           {"best_score": best, "start_val_psnr": start.psnr, "start_val_grid": start.grid,
                            "config": asdict(cfg), **({"initialised_from": lineage} if lineage else {})})
            held.check()
            plot_curve(metrics_path, out / "curve.png")
            bar.write(f"step {step}: validation Y-PSNR {val:.3f} dB, HF ratio {val_hf:.3f}, grid {val_grid:.3f} "
                      f"(best score {best:.4g})")
        if out_of_time:
            bar.write(f"stopped at step {step}: the {cfg.minutes:g}-minute budget is spent")
            break
    bar.close()
    log.close()
    return out / "model.safetensors"
