"""The quality guard: Set5 Y-PSNR of each backend and precision of a model.

    python bench/quality_guard.py [--model PATH|NAME] [--set5 DIR] [--device all|cpu|cuda] [--json PATH]

Every path runs each Set5 LR image through the tiled runtime (as `srtrt run` does), output
quantised to uint8, and is scored with the evaluation protocol of train/evaluate.py (HR
modcropped, LR by bicubic downscale, BT.601 Y, `scale` pixels of border cut). Each entry
records its change against torch-cpu-fp32 measured in the same run. engine/backends/precision.py lets
`--precision auto` use a reduced precision only when |delta_db| <= 0.05.

Results merge into srtrt/weights/quality_guard.json under the checkpoint's sha256 (the key
engine/backends/precision.py looks a model up by), then "{backend}-{device}-{precision}"; a GPU
run adds CUDA entries and keeps the CPU ones, and other models' entries stay. A model that was
measured under the same name with other weights (retrained) loses its old entries. Only real
weights are measured: without srtrt/weights/srresnet_x4.safetensors the default refuses (exit 2).
"""
from __future__ import annotations

import argparse
import datetime
import json
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
CPU_PATHS = [REFERENCE, ("torch", "cpu", "bf16"), ("openvino", "cpu", "fp32"), ("openvino", "cpu", "bf16"),
             ("openvino", "cpu", "int8"), ("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "fp16")]
CUDA_PATHS = [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("torch", "cuda", "bf16")]
EXIT_REFUSED = 2


def key(path: tuple[str, str, str]) -> str:
    return "-".join(path)


def paths_for(device: str, calibrated: bool = False) -> list[tuple[str, str, str]]:
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise SystemExit("quality guard: --device cuda asked, but no CUDA device is visible")
    from srtrt.hardware import cpu_has_fast_bf16

    chosen = [REFERENCE]  # always: every delta is against this run's own fp32 reference
    if device in ("all", "cpu"):  # emulated bf16 is not what --precision auto would ever run
        chosen += [p for p in CPU_PATHS[1:] if (p[2] != "bf16" or cpu_has_fast_bf16())
                   and (p[2] != "int8" or calibrated)]  # int8 needs the model's ranges
    if device in ("all", "cuda") and cuda:
        chosen += CUDA_PATHS
    return [p for p in chosen if _installed(p[0])]


def _installed(backend: str) -> bool:
    """False, with a line saying so, for a backend whose package this machine lacks."""
    from srtrt.engine.backends import onnxruntime_backend, openvino_backend

    probes = {"openvino": openvino_backend.available, "onnxruntime": onnxruntime_backend.available}
    ok, why = probes[backend]() if backend in probes else (True, "")
    if not ok:
        print(f"quality guard: {backend} skipped ({why})")
    return ok


def set5_pairs(folder: Path, scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR uint8, HR uint8) per image, by the evaluation protocol."""
    from srtrt.engine.datapath.imageio import images_in
    from srtrt.train.degrade import bicubic_downscale
    from srtrt.train.evaluate import read_hr

    pairs = []
    for p in images_in(folder):
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


def read_guard(path: Path) -> dict:
    """The guard file's models, or none when it is absent or in an older layout (re-measure those)."""
    from srtrt.engine.backends.precision import GUARD_FORMAT, GUARD_VERSION

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(doc, dict) and doc.get("format") == GUARD_FORMAT and doc.get("version") == GUARD_VERSION
    return doc.get("models", {}) if ok else {}


def merge(models: dict, measured: dict, model_sha: str, label: str) -> tuple[dict, list[str]]:
    """The guard document with `measured` added to this model's entries.

    Returns it and the sha256s dropped: sections of the same label measured on other weights.
    """
    from srtrt.engine.backends.precision import GUARD_FORMAT, GUARD_VERSION

    dropped = [sha for sha, m in models.items() if sha != model_sha and m.get("model") == label]
    kept = {sha: m for sha, m in models.items() if sha not in dropped}
    old_paths = kept.get(model_sha, {}).get("paths", {})
    kept[model_sha] = {"model": label, "paths": {**old_paths, **measured}}
    return {"format": GUARD_FORMAT, "version": GUARD_VERSION, "models": kept}, dropped


def model_label(model: str | None) -> str:
    """How the guard file names a model: the embedded name, or the checkpoint's file stem."""
    from srtrt.checkpoint import model_label as label

    return label(model)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Set5 Y-PSNR of each backend/precision against fp32")
    parser.add_argument("--model", default=None,
                        help="checkpoint path or embedded model name (default: the embedded default model)")
    parser.add_argument("--set5", type=Path, default=SET5, help=f"Set5 HR images (default {SET5})")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="which paths to measure (the CPU fp32 reference always runs)")
    parser.add_argument("--json", type=Path, default=None,
                        help="file to update (default srtrt/weights/quality_guard.json)")
    args = parser.parse_args(argv)

    from srtrt import atomic
    from srtrt.checkpoint import DEFAULT_WEIGHTS
    from srtrt.engine.backends.precision import QUALITY_GUARD_DB, guard_path
    from srtrt.engine.toolchain.quantize import calibration_digest

    if args.model is None and not DEFAULT_WEIGHTS.is_file():
        print(f"quality guard: {DEFAULT_WEIGHTS} is absent. The guard measures the real default model only "
              "(random weights would make the deltas meaningless); train or install it first.", file=sys.stderr)
        return EXIT_REFUSED
    if not args.set5.is_dir():
        print(f"quality guard: Set5 folder {args.set5} not found (pass --set5 DIR)", file=sys.stderr)
        return EXIT_REFUSED

    import srtrt

    try:
        view = srtrt.load_model(args.model)
    except srtrt.SrtrtError as e:
        print(f"quality guard: {e}", file=sys.stderr)
        return EXIT_REFUSED
    label = model_label(args.model)
    pairs = set5_pairs(args.set5, view.scale)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    measured, reference = {}, None
    for path in paths_for(args.device, calibrated=bool(view.int8_calibration)):
        psnr = score(path, view, pairs, view.scale)
        reference = psnr if path == REFERENCE else reference
        measured[key(path)] = {"psnr": round(psnr, 4), "delta_db": round(psnr - reference, 4),
                               "measured_on": device_description(path[1]), "date": today,
                               "reference": key(REFERENCE),
                               "images": len(pairs)}
        if path[2] == "int8":  # the guard judges these ranges only (engine/backends/precision.passes_guard)
            measured[key(path)]["calibration"] = calibration_digest(view.int8_calibration)
        verdict = "within" if abs(psnr - reference) <= QUALITY_GUARD_DB else "OUTSIDE"
        print(f"{key(path):<26} {psnr:8.4f} dB  delta {psnr - reference:+.4f} dB  ({verdict} ±{QUALITY_GUARD_DB})")

    target = args.json or guard_path()
    doc, dropped = merge(read_guard(target), measured, view.checkpoint_sha256, label)
    if dropped:
        print(f"dropped the entries of earlier {label} weights: {', '.join(s[:16] for s in sorted(dropped))}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {target} ({label} {view.checkpoint_sha256[:16]}: {len(measured)} paths measured, "
          f"{len(doc['models'])} models in the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
