"""Encoding speed and the pipeline's ceiling, on real SR output (bench/sr_content.py).

- PNG encoding alone: the model's x4 output of the pipeline workload written band by band
  through `open_writer`, at the default level on 1 and 2 encoder threads (and the smallest-file
  level 9 on all threads in full mode). Records output MP/s and the size against zlib level 6
  (Up-filtered rows, one stream): the measure the default level was chosen by.
- Pipeline ceiling: `srtrt run`'s path (decode, windows, assembly, encode) with a network that
  costs nothing: a backend that looks the real SR output up for each window, so the encoder
  sees what a real run gives it. Output MP/s against encoder threads (1 and 2) is what the rest
  of the pipeline allows the fastest engine.
"""
from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
import run_mode
import sr_content
import torch
import workloads
from PIL import Image

from srtrt.engine.backends.base import Backend, TileDefaults
from srtrt.engine.datapath import writers
from srtrt.engine.datapath.imageio import read_image
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler
from srtrt.engine.datapath.tiles import TilePlan
from srtrt.hardware import usable_cpus

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)
BAND_ROWS = 512  # what a 128-pixel core gives at x4
THREADS = sorted({1, min(2, usable_cpus())})


@pytest.fixture(scope="module")
def sr_image(view, workload):
    work = workload("pipeline")
    return work, sr_content.sr_output(view, work.lr)


def zlib6_bytes(hr: np.ndarray) -> int:
    """The reference size: Up-filtered rows, zlib level 6, one stream (chunked only to bound memory)."""
    compressor, total, previous = zlib.compressobj(6), 0, np.zeros(hr.shape[1] * hr.shape[2], np.uint8)
    for top in range(0, hr.shape[0], BAND_ROWS):
        raw = hr[top:top + BAND_ROWS].reshape(-1, hr.shape[1] * hr.shape[2])
        total += len(compressor.compress(writers.up_filter_rows(raw, previous)))
        previous = raw[-1]
    return total + len(compressor.flush())


def encode(hr: np.ndarray, path, level: int | None, threads: int) -> None:
    h, w, c = hr.shape
    with writers.open_writer(path, w, h, c, 8, overwrite=True, png_level=level, threads=threads) as writer:
        for top in range(0, h, BAND_ROWS):
            writer.write_rows(hr[top:top + BAND_ROWS])


PNG_CASES = [(writers.DEFAULT_PNG_LEVEL, t) for t in THREADS] + ([(9, THREADS[-1])] if MODE.full else [])


@pytest.mark.parametrize("level, threads", PNG_CASES, ids=[f"level{lv}-threads{t}" for lv, t in PNG_CASES])
def test_png_encoding(benchmark, sr_image, tmp_path, level, threads):
    work, hr = sr_image
    path = tmp_path / "out.png"
    benchmark.group = "png encoding"
    benchmark.pedantic(encode, args=(hr, path, level, threads), rounds=MODE.rounds if level < 7 else 1,
                       iterations=1, warmup_rounds=0)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), hr)
    megapixels = hr.shape[0] * hr.shape[1] / 1e6
    size, reference = path.stat().st_size, zlib6_bytes(hr)
    benchmark.extra_info.update(
        kind="encoding", case=f"png-level{level}-threads{threads}", level=level, threads=threads,
        output_mp=round(megapixels, 4), mp_per_s=megapixels / benchmark.stats.stats.median, bytes=size,
        size_vs_zlib6=size / reference, input_source=work.source, content="default model x4 output")


class RecordedNetwork(Backend):
    """A network that costs nothing: each window's output is looked up in a recorded SR output.

    Windows arrive in plan order (one reader, one device worker), so a cursor over the plan
    says where each one lies.
    """

    name, precision, scale, radius = "recorded", "fp32", 4, 8
    defaults = TileDefaults(core=256, batch=4)

    def __init__(self, hr: np.ndarray):
        # as the network would give it (float, planar), so infer only gathers its windows
        self.hr = torch.from_numpy(hr).permute(2, 0, 1).float().div_(255.0)
        self.windows: list = []
        self._out: torch.Tensor | None = None

    def start(self, plan: TilePlan) -> None:
        self.windows = [tile.window for tile in plan]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        taken, self.windows = self.windows[:x.shape[0]], self.windows[x.shape[0]:]
        s = self.scale
        crops = [self.hr[:, top * s:(top + h) * s, left * s:(left + w) * s] for top, left, h, w in taken]
        shape = (len(crops), *crops[0].shape)
        if self._out is None or tuple(self._out.shape) != shape:  # an engine's output buffer: made once
            self._out = torch.empty(shape)
        return torch.stack(crops, out=self._out)


def run_file(upscaler: TiledUpscaler, backend: RecordedNetwork, source, destination, threads: int) -> None:
    """What `srtrt run` does for one PNG: decode, tiles through the network, encode to a file."""
    image = read_image(source)
    backend.start(upscaler.plan(image.height, image.width))
    s = backend.scale
    with writers.open_writer(destination, image.width * s, image.height * s, 3, 8, overwrite=True,
                             threads=threads) as writer:
        upscaler.run(Planes(image.pixels), lambda band: writer.write_rows(band.colour), np.uint8)


@pytest.mark.parametrize("threads", THREADS, ids=[f"threads{t}" for t in THREADS])
def test_pipeline_ceiling(benchmark, sr_image, tmp_path, threads):
    work, hr = sr_image
    source = workloads.write_png(work, tmp_path)
    destination = tmp_path / "out.png"
    backend = RecordedNetwork(hr)
    upscaler = TiledUpscaler(backend)
    rounds = []

    def run():
        t0 = time.perf_counter()
        run_file(upscaler, backend, source, destination, threads)
        rounds.append({"file_wall": time.perf_counter() - t0, "read": upscaler.times.read,
                       "infer": upscaler.times.infer, "assemble": upscaler.times.assemble,
                       "encode": upscaler.times.encode})

    benchmark.group = "pipeline ceiling"
    benchmark.pedantic(run, rounds=MODE.rounds, iterations=1, warmup_rounds=0)
    np.testing.assert_array_equal(np.asarray(Image.open(destination)), hr)  # the lookup network is exact
    megapixels = work.output_megapixels
    benchmark.extra_info.update(
        kind="pipeline-ceiling", case=f"free-network-threads{threads}", threads=threads, **work.info(),
        mp_per_s=megapixels / benchmark.stats.stats.median, core=upscaler.core, batch=upscaler.batch,
        stage_rounds=rounds, content="default model x4 output, looked up per window")

