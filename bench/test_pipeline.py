"""The whole `srtrt run` path on the 2K-input image: decode, tiles, compute, PNG encode.

Runs engine.upscale_image.upscale_file (what `srtrt run` calls) with the best torch path of
the device and records the runtime's per-stage busy seconds (`upscaler.times`: read, infer,
assemble, encode -- each on its own thread), the decode time and a separate encode-only time.
The report shows pipeline efficiency = slowest stage / wall: near 100% means decoding, tiling
and encoding hide behind the compute.
Quick mode uses a 1024x768 input (a quarter of the work); smoke mode a tiny one.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict

import cases
import model_flops
import numpy as np
import run_mode
import torch
import workloads
from PIL import Image

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.datapath.imageio import read_image
from srtrt.engine.datapath.pipeline import upscale_file
from srtrt.engine.datapath.runtime import TiledUpscaler
from srtrt.engine.datapath.writers import open_writer

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)


def best_upscaler(view, device) -> TiledUpscaler:
    precision = cases.best_precision(device.type)
    fused = device.type == "cuda" and importlib.util.find_spec("triton") is not None
    return TiledUpscaler(TorchBackend(view, device, precision, fused_op=fused))


def encode_only_seconds(path, rows_per_band: int) -> float:
    """Writing the finished output again, band by band, with nothing else running."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    h, w = pixels.shape[:2]
    out = path.with_name("encode-only.png")
    t0 = time.perf_counter()
    with open_writer(out, w, h, 3, 8, overwrite=True) as writer:
        for y in range(0, h, rows_per_band):
            writer.write_rows(pixels[y:y + rows_per_band])
    return time.perf_counter() - t0


def decode_seconds(path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_image(path)
        best = min(best, time.perf_counter() - t0)
    return best


def test_srtrt_run_pipeline(benchmark, view, device, workload, tmp_path):
    work = workload("pipeline")
    source = workloads.write_png(work, tmp_path)
    destination = tmp_path / "out.png"
    upscaler = best_upscaler(view, device)
    rounds = []

    def run():
        t0 = time.perf_counter()
        upscale_file(upscaler, source, destination, overwrite=True)
        rounds.append({**asdict(upscaler.times), "file_wall": time.perf_counter() - t0})

    flop, windows = model_flops.tiled_flop(view.generator.config, work.height, work.width,
                                           upscaler.core, upscaler.margin)
    benchmark.group = "srtrt run pipeline"
    # Two rounds at most on a GPU: the PNG encode of 50 MP dominates and barely varies.
    benchmark.pedantic(run, rounds=min(MODE.big_rounds, 2), iterations=1, warmup_rounds=1)

    last = rounds[-1]
    decode = decode_seconds(source)
    slowest = max(last["read"], last["infer"], last["assemble"], last["encode"])
    benchmark.extra_info.update(
        kind="pipeline", case=f"srtrt-run-torch-{upscaler.backend.precision}", backend="torch",
        precision=upscaler.backend.precision, describe=upscaler.backend.describe(), weights=view.bench_weights,
        peak_key=upscaler.backend.precision, model_gflop=flop / 1e9, windows=windows, core=upscaler.core,
        margin=upscaler.margin, batch=upscaler.batch, **work.info(),
        note={"full": "", "quick": "quick mode: 1024x768 input, not the 2K input",
              "smoke": "smoke mode: tiny input"}[MODE.name],
        stages={"decode": decode, "read": last["read"], "infer": last["infer"], "assemble": last["assemble"],
                "encode": last["encode"], "runtime_wall": last["wall"], "file_wall": last["file_wall"],
                "encode_only": encode_only_seconds(destination, upscaler.core * view.scale)},
        stage_rounds=rounds[1:],  # the first entry is the warm-up round
        efficiency=slowest / last["file_wall"])
