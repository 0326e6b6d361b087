"""Input decoding: what `srtrt run` pays before an image's first window, against Pillow alone.

One big image is decoded before any of its tiles computes, so decoding adds to `srtrt run`'s
time in full (on the H200 a 2K input spent 0.16 s of 0.53-0.61 s decoding). Cases per image:
`pillow` (Image.open, load, asarray: how read_image decoded every 8-bit PNG before) and
`srtrt` (read_image: libpng through imagecodecs for a plain 8-bit PNG, Pillow for the rest).
Images: the photos in ../shared/data/big as they are (real files, as a user's camera or
editor wrote them); without them, the 2K-input workload written by Pillow. Reported: decoded MP/s;
the ratio is srtrt against pillow in the same run.

    pytest bench/test_decoding.py --benchmark-json=/tmp/decoding.json
"""
from __future__ import annotations

import machine_info as probe
import numpy as np
import pytest
import run_mode
import workloads
from PIL import Image

from srtrt.engine.datapath.imageio import read_image

MODE = run_mode.current(False)
BIG = ["ladybird_2048x1536.png", "elephants_3840x2160.png"]


def pillow_decode(path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray(img)


DECODERS = {"pillow": pillow_decode, "srtrt": lambda path: read_image(path).pixels}


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("name", BIG, ids=[name.split("_")[0] for name in BIG])
def test_decode(benchmark, name, decoder, workload, tmp_path):
    path = workloads.SHARED_BIG / name
    if not path.exists():
        if name != BIG[0]:
            pytest.skip(f"{path} is not here")
        path = workloads.write_png(workload("2k-input"), tmp_path)  # generated stand-in
    decode = DECODERS[decoder]
    pixels, reference = decode(path), pillow_decode(path)
    assert np.array_equal(pixels.reshape(reference.shape), reference)
    benchmark.group = f"decode {path.name}"
    benchmark.pedantic(decode, args=(path,), rounds=max(5, MODE.rounds), iterations=1, warmup_rounds=1)
    megapixels = reference.shape[0] * reference.shape[1] / 1e6
    benchmark.extra_info.update(kind="decode", case=decoder, image=path.name, megapixels=megapixels,
                                mp_per_s=megapixels / benchmark.stats.stats.median, machine=probe.describe())
