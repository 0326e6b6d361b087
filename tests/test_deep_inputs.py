"""Inputs deeper than 8 bits a sample under `--precision auto`: bf16 and int8 keep about 8 bits of a
sample, and the guard judges them on 8-bit outputs. A 16-bit PNG through openvino int8 came out
1449 16-bit levels off the fp32 result (rounding that result to 8 bits costs 128), written as
16 bits, and nothing said so. Such inputs now run on an fp32 backend of their own."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

import srtrt
from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.batch import sheet_runs
from srtrt.engine.batch.files import FileRunner
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.datapath.imageio import DecodedImage, read_image

from run_helpers import save_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), blocks=2, channels=8)


@pytest.fixture(scope="module")
def view(model):
    return srtrt.load_model(str(model))


def deep_image(path, height=20, width=28):
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(3)
    smooth = 0.5 + 0.3 * np.sin(x / 3.0 + y / 5.0)[..., None] + 0.02 * rng.standard_normal((height, width, 3))
    tifffile.imwrite(path, (smooth.clip(0, 1) * 65535).round().astype(np.uint16))
    return path


def upscaled(runner: FileRunner, path):
    return runner.upscale_arrays(runner.decode(path))[0].astype(np.int64)


def test_a_sixteen_bit_input_under_auto_runs_in_fp32_and_an_eight_bit_one_as_picked(tmp_path, model, view):
    source = deep_image(tmp_path / "deep.tif")
    lines = []
    reference = upscaled(FileRunner(TorchBackend(view, "cpu", "fp32"), RunOptions(model=str(model), backend="torch")), source)
    as_picked = FileRunner(TorchBackend(view, "cpu", "bf16"), RunOptions(model=str(model), backend="torch"), log=lines.append)
    assert upscaled(as_picked, source).dtype == reference.dtype
    assert np.abs(upscaled(as_picked, source) - reference).max() <= 2  # 16-bit levels: fp32's own rounding
    assert as_picked.deep is not None and as_picked.deep.backend.precision == "fp32"
    assert len(lines) == 1 and "inputs of 16 bits a sample run on torch (fp32" in lines[0] and "bf16 keeps about 8" in lines[0]
    eight = DecodedImage(
        (as_picked.decode(source).pixels // 257).astype(np.uint8), None, 8, None, None, "memory", None)
    assert as_picked.upscaler_for(eight.height, eight.width, eight.bit_depth).backend is as_picked.backend
    assert sheet_runs._on_sheet(eight, (64, 64), as_picked)
    assert not sheet_runs._on_sheet(as_picked.decode(source), (64, 64), as_picked)  # alone, in fp32
    as_picked.close()
    assert as_picked.deep is None


def test_quiet_says_nothing_of_a_deep_input_run_apart(tmp_path, capsys):
    """`srtrt run deep.png -q` printed the line that 16-bit inputs run on an fp32 backend: -q says
    only what failed."""
    from srtrt.cli import main

    source = deep_image(tmp_path / "deep.tif")
    assert main(["run", str(source), "-o", str(tmp_path / "loud.png"), "--backend", "openvino"]) == 0
    assert "inputs of 16 bits a sample run on" in capsys.readouterr().err
    assert main(["run", str(source), "-o", str(tmp_path / "quiet.png"), "--backend", "openvino", "-q"]) == 0
    assert capsys.readouterr().err == "" and (tmp_path / "quiet.png").is_file()


def test_a_precision_asked_for_by_name_is_used_as_asked(tmp_path, model, view):
    source = deep_image(tmp_path / "deep.tif")
    reference = upscaled(FileRunner(TorchBackend(view, "cpu", "fp32"), RunOptions(model=str(model), backend="torch")), source)
    asked = FileRunner(TorchBackend(view, "cpu", "bf16"), RunOptions(model=str(model), backend="torch", precision="bf16"))
    assert np.abs(upscaled(asked, source) - reference).max() > 64  # what bf16 costs such an input
    assert asked.deep is None


def test_ten_bit_video_frames_run_in_fp32_where_fp16_would_keep_them(model, view):
    runner = FileRunner(TorchBackend(view, "cpu", "bf16"), RunOptions(model=str(model), backend="torch"))
    assert runner.upscaler_for(16, 16, 10).backend.precision == "fp32"
    assert runner.computes_apart(10) and not runner.computes_apart(8)
    from srtrt.engine.backends.precision import keeps_bits

    assert keeps_bits("fp16", 10) and not keeps_bits("fp16", 16) and keeps_bits("int8", 8)


def test_srtrt_upscale_keeps_the_fp32_backend_for_the_next_call(tmp_path):
    """The shipped model, whose guard allows torch bf16 on a CPU with bf16 instructions."""
    from srtrt.engine.batch import api

    source = deep_image(tmp_path / "deep.tif")
    options = dict(backend="torch", precision="auto")
    first = srtrt.upscale(str(source), tmp_path / "a.png", **options)
    deep = api._current.get("deep")
    if deep is None:  # torch's auto precision here is fp32 (no bf16 instructions): nothing runs apart
        assert api._current["backend"].precision == "fp32"
        pytest.skip("torch runs fp32 here: no reduced precision to run apart from")
    assert deep.backend.precision == "fp32" and api._current["backend"].precision == "bf16"
    srtrt.upscale(str(source), tmp_path / "b.png", **options)
    assert api._current["deep"] is deep and first.exists()
    assert np.array_equal(_pixels(first), _pixels(tmp_path / "b.png"))
    api.close()
    assert "deep" not in api._current


def _pixels(path):
    return read_image(path).pixels
