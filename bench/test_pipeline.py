"""The whole `srtrt run` path on the 2K-input image: decode, tiles, compute, PNG encode.

Runs engine.datapath.pipeline.upscale_file (what `srtrt run` calls) with the backend `srtrt run`
picks on this device (`create_backend("auto")`) and records the runtime's per-stage busy seconds (`upscaler.times`: read, infer,
assemble, encode -- each on its own thread), the decode time and a separate encode-only time.
The report shows pipeline efficiency = slowest stage / wall: near 100% means decoding, tiling
and encoding hide behind the compute.

`test_png_against_bmp`: the same run to .png and to uncompressed .bmp, with the default model
and with a tiny fast one (1 block, 16 channels, random weights: speed does not depend on them)
standing in for a fast engine; the report gives the PNG / BMP wall ratio per model.
Quick mode uses a 1024x768 input (a quarter of the work); smoke mode a tiny one.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import model_flops
import numpy as np
import pytest
import run_mode
import torch
import workloads
from PIL import Image

from srtrt.engine.datapath.imageio import read_image
from srtrt.engine.datapath.pipeline import upscale_file
from srtrt.engine.datapath.runtime import TiledUpscaler
from srtrt.engine.datapath.writers import open_writer

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)


def auto_upscaler(view, device) -> TiledUpscaler:
    """What `srtrt run` uses here: the backend and precision `--backend auto` picks."""
    from srtrt.engine.backends import create_backend

    return TiledUpscaler(create_backend("auto", view=view, device=device.type).backend)


def tiny_view():
    from srtrt.nets import InferenceView, SRResNet, SRResNetConfig

    torch.manual_seed(0)
    return InferenceView(SRResNet(SRResNetConfig(blocks=1, channels=16))).eval()


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
    upscaler = auto_upscaler(view, device)
    rounds = []

    def run():
        t0 = time.perf_counter()
        upscale_file(upscaler, source, destination, overwrite=True)
        rounds.append({**asdict(upscaler.times), "file_wall": time.perf_counter() - t0})

    plan = upscaler.plan(work.height, work.width)  # what the run computes, not a bare tiling of the image
    flop, windows = model_flops.tiled_flop(view.generator.config, plan)
    benchmark.group = "srtrt run pipeline"
    # Two rounds at most on a GPU: the PNG encode of 50 MP dominates and barely varies.
    benchmark.pedantic(run, rounds=min(MODE.big_rounds, 2), iterations=1, warmup_rounds=1)

    last = rounds[-1]
    decode = decode_seconds(source)
    slowest = max(last["read"], last["infer"], last["assemble"], last["encode"])
    benchmark.extra_info.update(
        kind="pipeline", case=f"srtrt-run-{upscaler.backend.name}-{upscaler.backend.precision}",
        backend=upscaler.backend.name,
        precision=upscaler.backend.precision, describe=upscaler.backend.describe(), weights=view.bench_weights,
        peak_key=upscaler.backend.precision, model_gflop=flop / 1e9, windows=windows, core=0 if windows == 1 else plan.core,
        margin=upscaler.margin, batch=upscaler.batch, **work.info(),
        note={"full": "", "quick": "quick mode: 1024x768 input, not the 2K input",
              "smoke": "smoke mode: tiny input"}[MODE.name],
        stages={"decode": decode, "read": last["read"], "infer": last["infer"], "assemble": last["assemble"],
                "encode": last["encode"], "runtime_wall": last["wall"], "file_wall": last["file_wall"],
                "encode_only": encode_only_seconds(destination, upscaler.core * view.scale)},
        stage_rounds=rounds[1:],  # the first entry is the warm-up round
        efficiency=slowest / last["file_wall"])


FORMAT_CASES = [(model, suffix) for model in ("tiny", "default") for suffix in (".png", ".bmp")]


@pytest.mark.parametrize("model, suffix", FORMAT_CASES, ids=[f"{m}-{s[1:]}" for m, s in FORMAT_CASES])
def test_png_against_bmp(benchmark, view, device, workload, tmp_path, model, suffix):
    work = workload("pipeline")
    source = workloads.write_png(work, tmp_path)
    destination = tmp_path / f"out{suffix}"
    upscaler = auto_upscaler(tiny_view() if model == "tiny" else view, device)
    benchmark.group = "png against bmp"
    benchmark.pedantic(upscale_file, args=(upscaler, source, destination), kwargs={"overwrite": True},
                       rounds=MODE.big_rounds if model == "default" else MODE.rounds, iterations=1, warmup_rounds=1)
    if suffix == ".png":  # what the encoder wrote decodes to the pixels the run computed
        assert Image.open(destination).size == (work.width * view.scale, work.height * view.scale)
    benchmark.extra_info.update(
        kind="format", case=f"srtrt-run-{model}-{suffix[1:]}", model=model, format=suffix[1:],
        describe=upscaler.backend.describe(), **work.info(),
        file_bytes=destination.stat().st_size)
