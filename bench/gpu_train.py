"""Train both phases for a wall-clock budget on a lent GPU, from the shipped weights.

    python bench/srtrt_path.py bench/gpu_train.py OUTDIR --minutes 20            # on the GPU machine
    python bench/srtrt_path.py bench/gpu_train.py OUTDIR --minutes 0.2 --smoke   # a check of this script, any device

Phase 1 continues the shipped SRResNet (srtrt/weights/srresnet_x4) on ../shared/data/train.
Phase 2 trains SRGAN-MSE (content loss mse: no VGG weights needed) from phase 1's best
checkpoint if its held-out Y-PSNR beats the shipped SRResNet's on the same held-out photos,
else from the shipped SRResNet. Both call train/trainer.py's `train()`; each phase gets its
share of the budget (`--gan-share`) and stops with a validated, saved checkpoint
(TrainConfig.minutes). A phase first runs a short probe at constant learning rate to measure
its speed, then resumes (exactly: same state file) with a cosine schedule sized to the time
left, so the learning rate has decayed when the budget ends.

OUTDIR receives:
    srresnet/, srgan_mse/   each a run directory: model.* (the checkpoint the trainer selected
                            on held-out photos), last.*, state.*, metrics.jsonl, curve.png
    gpu_train.json          device, budget, and per phase: init, steps, held-out scores, paths

Shipping rule. Nothing here writes into srtrt/weights. The checkpoints are evaluated on the
CPU afterwards, and one replaces or joins the embedded weights only if held-out validation
(photos of the training folder the run held out; Set5/Set14 are reported, never used to
choose) says it is better: an srresnet checkpoint needs a higher held-out Y-PSNR than the
shipped srresnet_x4; an srgan checkpoint needs a held-out HF ratio closer to 1 than the
shipped srgan_x4's (with none shipped, clearly closer than the srresnet's) while staying
within the trainer's PSNR floor (gan_psnr_drop dB below its start) and grid cap (no more than
GRID_GROWTH_MAX times its start's sub-pixel grid: trainer.selection_score). Its sidecar then gets the
Set5/Set14 scores `srtrt eval` measures, which tests/test_eval.py checks.

--smoke: a tiny budget-shaped run (small patches and batches, generated photos unless --data
is given, no autocast) that checks the whole path on a CPU; its checkpoints mean nothing.
Exit codes: 0 done, 2 bad usage or missing data/weights (one line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from workloads import photo_like, shared_data  # noqa: E402

PROBE_SHARE = 0.1          # of each phase's budget, at constant learning rate, to measure it/s
SCHEDULE_MARGIN = 0.9      # size the cosine schedule for 90% of the measured rate (validations, jitter)
SMOKE_PHOTOS = 6


def phase_configs(data: str, out: Path, smoke: bool):
    """(srresnet config, srgan-mse config), before init, budget and schedule are filled in."""
    from srtrt.train.config import TrainConfig

    if smoke:
        common = dict(patch=32, batch=2, val_count=1, val_crop=48, val_every=4, log_every=1, workers=0,
                      amp="off", progress=False)
    else:
        common = dict(val_count=4, val_crop=256, val_every=500, log_every=50, workers=min(8, os.cpu_count() or 1),
                      amp="auto", progress=False)
    srresnet = TrainConfig(data=data, out=str(out / "srresnet"), phase="srresnet", lr=1e-4,
                           **{"patch": 128, "batch": 16, **common})
    srgan = TrainConfig(data=data, out=str(out / "srgan_mse"), phase="srgan", content_loss="mse", lr=1e-4,
                        **{"patch": 96, "batch": 16, **common})
    return srresnet, srgan


def last_speed(run: Path) -> float:
    """The latest iterations per second the trainer logged in `run`."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["it_s"] for r in rows if "it_s" in r]
    return speeds[-1] if speeds else 0.0


def run_phase(cfg, seconds: float) -> dict:
    """Train `cfg` for `seconds` of wall clock: a constant-rate probe, then a cosine run sized to the rest."""
    from srtrt.train.trainer import train

    end = time.time() + seconds
    probe = replace(cfg, iters=10**9, schedule="constant", minutes=PROBE_SHARE * seconds / 60)
    train(probe)
    state = json.loads((Path(cfg.out) / "state.json").read_text())
    done, left = state["step"], max(end - time.time(), 0.0)
    iters = done + max(1, int(left * last_speed(Path(cfg.out)) * SCHEDULE_MARGIN))
    best = train(replace(cfg, iters=iters, schedule="cosine", minutes=max(left, 1.0) / 60))
    return {"probe_steps": done, "planned_iters": iters,
            "steps": json.loads((Path(cfg.out) / "state.json").read_text())["step"], "model": str(best)}


def held_out_psnr(model_path: str | Path, cfg) -> float:
    """Y-PSNR of a checkpoint on the photos `cfg`'s runs hold out (the trainer's own validation)."""
    from srtrt import checkpoint
    from srtrt.engine.datapath.imageio import images_in
    from srtrt.train.data import split_holdout
    from srtrt.train.trainer import pick_device, validate, validation_pairs

    device = pick_device(cfg.device)
    _, val_paths = split_holdout(images_in(cfg.data), cfg.val_count)
    generator = checkpoint.load(model_path).build().to(device)
    return validate(generator, validation_pairs(val_paths, cfg.scale, cfg.val_crop), device)[0]


def smoke_photos(folder: Path) -> Path:
    """A few generated photo-like images, so a smoke run needs no shared data."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(SMOKE_PHOTOS):
        Image.fromarray(photo_like(96, 80, seed=i)).save(folder / f"photo{i}.png")
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget for both phases together")
    ap.add_argument("--gan-share", type=float, default=0.5, help="fraction of the budget for the srgan-mse phase")
    ap.add_argument("--data", help="folder of HR training photos (default ../shared/data/train; --smoke: generated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration: checks the script, on any device")
    args = ap.parse_args(argv)

    from srtrt import atomic, checkpoint
    from srtrt.errors import SrtrtError
    from srtrt.train.trainer import pick_device

    try:
        if args.minutes <= 0 or not 0 < args.gan_share < 1:
            raise SrtrtError("--minutes must be > 0 and --gan-share in (0, 1)")
        out = args.outdir
        out.mkdir(parents=True, exist_ok=True)
        if args.data:
            data = Path(args.data)
        elif args.smoke:
            data = smoke_photos(out / "smoke_photos")
        else:
            data = shared_data("train")
        if not data.is_dir():
            raise SrtrtError("training photos not found (pass --data DIR)", data)
        shipped = checkpoint.resolve(checkpoint.DEFAULT_MODEL)
        srresnet, srgan = (replace(c, device=args.device) for c in phase_configs(str(data), out, args.smoke))
        started = time.time()
        budget = args.minutes * 60
        summary = {"device": str(pick_device(args.device)), "minutes": args.minutes, "smoke": args.smoke,
                   "data": str(data), "shipped_srresnet": str(shipped)}

        phase1 = run_phase(replace(srresnet, init=str(shipped)), budget * (1 - args.gan_share))
        phase1["val_psnr_y"] = held_out_psnr(phase1["model"], srresnet)
        phase1["shipped_val_psnr_y"] = held_out_psnr(shipped, srresnet)
        better = phase1["val_psnr_y"] > phase1["shipped_val_psnr_y"]
        summary["srresnet"] = phase1

        init = phase1["model"] if better else str(shipped)
        left = max(budget - (time.time() - started), 1.0)
        phase2 = run_phase(replace(srgan, init=init), left)
        trained = checkpoint.load(phase2["model"]).meta.get("training", {})
        phase2.update(init=init, val_psnr_y=trained.get("val_psnr_y"), val_hf_ratio_y=trained.get("val_hf_ratio_y"))
        summary["srgan_mse"] = phase2
        summary["seconds"] = round(time.time() - started, 1)
        atomic.write_text(out / "gpu_train.json", json.dumps(summary, indent=2) + "\n")
    except (SrtrtError, FileNotFoundError, ValueError) as e:
        print(f"gpu_train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
