"""The quality guard: Set5 Y-PSNR of each backend and precision of the default model.

    python bench/quality_guard.py [--set5 DIR] [--device all|cpu|cuda] [--json PATH]

Every path runs each Set5 LR image through the tiled runtime (as `srtrt run` does), output
quantised to uint8, and is scored with the evaluation protocol of train/evaluate.py (HR
modcropped, LR by bicubic downscale, BT.601 Y, `scale` pixels of border cut). Each entry
records its change against torch-cpu-fp32 measured in the same run. engine/backends/precision.py lets
`--precision auto` use a reduced precision only when |delta_db| <= 0.05.

Results merge into srtrt/weights/quality_guard.json under "{backend}-{device}-{precision}";
a GPU run adds CUDA entries and keeps the CPU ones. Entries measured on another model are
dropped, since they say nothing about this one. Only the real default model is measured:
without srtrt/weights/srresnet_x4.safetensors the guard refuses (exit 2).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import machine_info  # noqa: E402
from workloads import shared_data  # noqa: E402

SET5 = shared_data("set5")
REFERENCE = ("torch", "cpu", "fp32")
CPU_PATHS = [REFERENCE, ("torch", "cpu", "bf16"), ("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "fp16")]
CUDA_PATHS = [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("torch", "cuda", "bf16")]
EXIT_REFUSED = 2


def guard_file() -> Path:
    import srtrt

    return Path(srtrt.__file__).parent / "weights" / "quality_guard.json"  # where engine/backends/precision.py reads


def key(path: tuple[str, str, str]) -> str:
    return "-".join(path)


def paths_for(device: str) -> list[tuple[str, str, str]]:
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise SystemExit("quality guard: --device cuda asked, but no CUDA device is visible")
    chosen = [REFERENCE]  # always: every delta is against this run's own fp32 reference
    if device in ("all", "cpu"):
        chosen += CPU_PATHS[1:]
    if device in ("all", "cuda") and cuda:
        chosen += CUDA_PATHS
    return chosen


def set5_pairs(folder: Path, scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR uint8, HR uint8) per image, by the evaluation protocol."""
    from srtrt.train.degrade import bicubic_downscale
    from srtrt.train.evaluate import list_test_images, read_hr

    pairs = []
    for p in list_test_images(folder):
        hr = read_hr(p, scale)
        pairs.append((p.name, np.array(bicubic_downscale(hr, scale)), np.array(hr)))  # writable copies
    return pairs


def score(path: tuple[str, str, str], view, pairs, scale: int) -> float:
    from srtrt.engine.backends import create_backend
    from srtrt.engine.datapath.runtime import Planes, TiledUpscaler
    from srtrt.train.metrics import psnr_y

    backend_name, device, precision = path
    backend = create_backend(backend_name, precision=precision, device=device, view=view).backend
    upscaler = TiledUpscaler(backend)
    values = []
    for _, lr, hr in pairs:
        sr, _ = upscaler.run_to_array(Planes(lr), out_dtype=np.uint8)
        values.append(psnr_y(sr, hr, border=scale))
    backend.close()
    return float(np.mean(values))


def device_description(device: str) -> str:
    return machine_info.describe(machine_info.gpu_info() if device == "cuda" else machine_info.cpu_info())


def merge(existing: dict, measured: dict, model_sha: str) -> tuple[dict, list[str]]:
    kept, dropped = {}, []
    for k, entry in existing.items():
        if entry.get("model_sha256") not in (None, model_sha):
            dropped.append(k)
        else:
            kept[k] = entry
    return {**kept, **measured}, dropped


def write_atomically(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Set5 Y-PSNR of each backend/precision against fp32")
    parser.add_argument("--set5", type=Path, default=SET5, help=f"Set5 HR images (default {SET5})")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="which paths to measure (the CPU fp32 reference always runs)")
    parser.add_argument("--json", type=Path, default=None, help="file to update (default srtrt/weights/quality_guard.json)")
    args = parser.parse_args(argv)

    from srtrt.checkpoint import DEFAULT_WEIGHTS
    from srtrt.engine.backends.precision import QUALITY_GUARD_DB

    if not DEFAULT_WEIGHTS.is_file():
        print(f"quality guard: {DEFAULT_WEIGHTS} is absent. The guard measures the real default model only "
              "(random weights would make the deltas meaningless); train or install it first.", file=sys.stderr)
        return EXIT_REFUSED
    if not args.set5.is_dir():
        print(f"quality guard: Set5 folder {args.set5} not found (pass --set5 DIR)", file=sys.stderr)
        return EXIT_REFUSED

    import srtrt

    view = srtrt.load_model()
    pairs = set5_pairs(args.set5, view.scale)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    measured, reference = {}, None
    for path in paths_for(args.device):
        psnr = score(path, view, pairs, view.scale)
        reference = psnr if path == REFERENCE else reference
        measured[key(path)] = {"psnr": round(psnr, 4), "delta_db": round(psnr - reference, 4),
                               "measured_on": device_description(path[1]), "date": today,
                               "model_sha256": view.checkpoint_sha256, "reference": key(REFERENCE),
                               "images": len(pairs)}
        verdict = "within" if abs(psnr - reference) <= QUALITY_GUARD_DB else "OUTSIDE"
        print(f"{key(path):<26} {psnr:8.4f} dB  delta {psnr - reference:+.4f} dB  ({verdict} ±{QUALITY_GUARD_DB})")

    target = args.json or guard_file()
    try:
        existing = json.loads(target.read_text())
    except (OSError, ValueError):
        existing = {}
    doc, dropped = merge(existing, measured, view.checkpoint_sha256)
    if dropped:
        print(f"dropped entries measured on another model: {', '.join(sorted(dropped))}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, doc)
    print(f"wrote {target} ({len(measured)} entries measured, {len(doc)} in the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
