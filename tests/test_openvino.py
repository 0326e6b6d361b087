"""The openvino backend: parity with torch fp32, bf16 accuracy, tiling exactness, one compiled
model per window shape (small shapes seen once on the dynamic-shape model, equal to the static
one), the auto choice, and bad ONNX files as one line."""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxscript")  # the exporter that writes the graph the backend runs

from srtrt.engine.backends import create_backend  # noqa: E402
from srtrt.engine.backends.openvino_backend import KEEP_COMPILED, OpenVinoBackend  # noqa: E402
from srtrt.engine.backends.torch_backend import TorchBackend  # noqa: E402
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler  # noqa: E402
from srtrt.engine.toolchain.export import export_onnx  # noqa: E402
from srtrt.hardware import cpu_has_fast_bf16  # noqa: E402

from conftest import random_view, smooth_image  # noqa: E402
from run_helpers import partials, pixels, run_cli, save_tiny_model, write_images  # noqa: E402


@pytest.fixture(scope="module")
def view():
    return random_view(blocks=2, channels=8, seed=3)


@pytest.fixture(scope="module")
def onnx_file(view, tmp_path_factory):
    """The form create_backend gives this backend: the polyphase tail."""
    return export_onnx(view, tmp_path_factory.mktemp("onnx") / "model.onnx", polyphase=True)


@pytest.fixture(scope="module")
def blob_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-cache")


def backend(view, onnx_file, blob_cache, precision="fp32") -> OpenVinoBackend:
    return OpenVinoBackend(onnx_file, view.scale, view.radius, precision, cache=blob_cache,
                           channels=view.generator.config.channels)


def photo_batch(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(smooth_image(h, w, seed=seed)).permute(2, 0, 1).unsqueeze(0).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / ((a - b) ** 2).mean().item())


def test_fp32_matches_torch_fp32_on_a_random_crop(view, onnx_file, blob_cache):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 37, 53)
    with backend(view, onnx_file, blob_cache) as ov:
        y = ov.infer(x)
    ref = TorchBackend(view, "cpu", "fp32").infer(x)
    assert y.shape == (1, 3, 37 * 4, 53 * 4) and y.dtype == torch.float32
    assert (y - ref).abs().max().item() <= 1e-4


def test_the_layer_profile_names_every_convolution_that_ran_and_sums_to_the_run(view, onnx_file, tmp_path):
    """What bench/openvino_profile.py reads: per-layer kernels and times of the compiled shape."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from openvino_profile import layer_rows, summarise

    ov = OpenVinoBackend(onnx_file, view.scale, view.radius, "fp32", cache=None, channels=view.generator.config.channels)
    ov.config["PERF_COUNT"] = True
    ov.prepare(1, 64, 64)
    ov.infer(photo_batch(64, 64))
    layers = ov.layer_profile()
    convs = [layer for layer in layers if layer.node_type == "Convolution" and str(layer.status).endswith("EXECUTED")]
    assert len(convs) >= 2 * 2 + 2  # two per block, at least the head and the upsampling around them
    summary = summarise(layers)
    assert summary["by_type"]["Convolution"] > 0 and set(summary["convolution_ms_by_format"]) <= {"f32", "bf16", "int8", "other"}
    assert abs(sum(summary["by_type"].values()) - summary["profile_ms"]) < 0.01 * summary["profile_ms"] + 0.01
    rows = layer_rows(ov)  # per layer, slowest first, with what the compiled model fused into each conv
    assert len(rows) == sum(1 for layer in layers if str(layer.status).endswith("EXECUTED"))
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    conv_rows = [r for r in rows if r["type"] == "Convolution"]
    assert len(conv_rows) == len(convs) and all(r["runtime_precision"] and r["fused"] for r in conv_rows)
    assert any("prelu" in r["fused"].lower() for r in conv_rows)  # an activation runs inside its conv
    ov.close()


def test_each_prelu_runs_inside_its_conv_when_the_slopes_are_equal(tmp_path):
    """Untrained PReLUs (every slope 0.25) exported as one shared constant ran each PReLU on its
    own, with a layout reorder on either side: a Compact's 384x512 window took 1.92 s against
    1.34 s fp32 on an AVX2 EPYC. With each node owning its constants, every PReLU after a conv is
    that conv's post-op."""
    import onnx

    view = random_view(blocks=2, channels=8, seed=3)  # its PReLUs keep their initial, equal slopes
    path = export_onnx(view, tmp_path / "model.onnx", polyphase=True)
    nodes = onnx.load(str(path)).graph.node
    conv_outputs = {n.output[0] for n in nodes if n.op_type == "Conv"}
    prelus = {n.name for n in nodes if n.op_type == "PRelu" and n.input[0] in conv_outputs}  # not the shuffled one
    assert len(prelus) >= 4
    ov = OpenVinoBackend(path, view.scale, view.radius, "fp32", cache=None, channels=view.generator.config.channels)
    ov.prepare(1, 32, 32)
    ov.infer(photo_batch(32, 32))
    fused_into_convs = set()
    for op in ov._last.get_compiled_model().get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            fused_into_convs |= set(info["originalLayersNames"].astype(str).split(","))
    ov.close()
    assert prelus <= fused_into_convs


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="bf16 runs in hardware only with AVX512-BF16 or AMX")
def test_bf16_is_within_45_db_of_fp32(view, onnx_file, blob_cache):
    x = photo_batch(40, 48)
    with backend(view, onnx_file, blob_cache, "fp32") as f32, backend(view, onnx_file, blob_cache, "bf16") as bf16:
        exact, reduced = f32.infer(x), bf16.infer(x)
    assert bf16.describe().startswith("openvino (bf16, cpu, ")
    assert not torch.equal(exact, reduced)  # bf16 really computed in bf16
    assert psnr(reduced, exact) >= 45.0


def test_tiled_equals_whole_image_at_fp32(view, onnx_file, blob_cache):
    lr = smooth_image(50, 70, seed=1)
    with backend(view, onnx_file, blob_cache) as ov:
        whole, _ = TiledUpscaler(ov, core=0).run_to_array(Planes(lr))
        tiled, _ = TiledUpscaler(ov, core=16, margin=view.radius).run_to_array(Planes(lr))
    assert whole.shape == (200, 280, 3)
    assert np.abs(whole - tiled).max() <= 1e-5


def test_one_compiled_model_per_window_shape_reused_across_images(view, onnx_file, blob_cache):
    with backend(view, onnx_file, blob_cache) as ov:
        ov.dynamic_pixels = 0  # every shape static, as for large windows
        upscaler = TiledUpscaler(ov, core=16, margin=view.radius, batch=5)
        assert len(upscaler.plan(48, 64)) == 12
        upscaler.run_to_array(Planes(smooth_image(48, 64, seed=2)))
        assert ov.compilations == 2  # batches of 5, 5 and 2 windows of one size: two input shapes
        upscaler.run_to_array(Planes(smooth_image(48, 64, seed=3)))
        assert ov.compilations == 2  # the same shapes again: nothing new compiled
        upscaler.run_to_array(Planes(smooth_image(24, 30, seed=4)))
        assert ov.compilations == 3  # an image smaller than one window brings its own shape
    assert any(blob_cache.iterdir())  # compiled blobs kept for the next process


def test_small_shapes_seen_once_run_on_the_dynamic_model_and_equal_the_static_ones(view, onnx_file, blob_cache):
    sizes = [(37, 53), (64, 41), (30, 90), (48, 48)]
    with backend(view, onnx_file, blob_cache) as dynamic, backend(view, onnx_file, blob_cache) as static:
        static.dynamic_pixels = 0
        for i, (h, w) in enumerate(sizes):
            planes = Planes(smooth_image(h, w, seed=10 + i))
            got, _ = TiledUpscaler(dynamic).run_to_array(planes)
            want, _ = TiledUpscaler(static).run_to_array(planes)
            assert np.abs(got - want).max() <= 1e-5
    assert dynamic.compilations == 0 and dynamic.dynamic_runs == len(sizes)  # one model served every size
    assert static.compilations == len(sizes) and static.dynamic_runs == 0


def test_a_shape_that_comes_again_or_a_large_window_is_compiled_static_and_kept(view, onnx_file, blob_cache):
    with backend(view, onnx_file, blob_cache) as ov:
        upscaler = TiledUpscaler(ov)
        image = Planes(smooth_image(40, 56, seed=5))
        first, _ = upscaler.run_to_array(image)
        assert (ov.compilations, ov.dynamic_runs) == (0, 1)
        second, _ = upscaler.run_to_array(image)  # the shape came again: compiled static now
        upscaler.run_to_array(image)
        assert (ov.compilations, ov.dynamic_runs) == (1, 1)
        assert np.abs(first - second).max() <= 1e-5
        ov.dynamic_pixels = 40 * 56  # a window this large is compiled static on first sight
        upscaler.run_to_array(Planes(smooth_image(40, 60, seed=6)))
        assert (ov.compilations, ov.dynamic_runs) == (2, 1)
        for i in range(8):  # many shapes, each twice: the compiled models held stay bounded
            for _ in range(2):
                upscaler.run_to_array(Planes(smooth_image(20 + i, 24, seed=i)))
        assert len(ov._requests) <= KEEP_COMPILED


def test_tiles_of_one_image_share_a_shape_so_it_is_compiled_static_after_the_first(view, onnx_file, blob_cache):
    with backend(view, onnx_file, blob_cache) as ov, backend(view, onnx_file, blob_cache) as static:
        static.dynamic_pixels = 0
        planes = Planes(smooth_image(64, 72, seed=7))
        got, _ = TiledUpscaler(ov, core=16).run_to_array(planes)  # 20 windows, most of one interior shape
        want, _ = TiledUpscaler(static, core=16).run_to_array(planes)
        assert np.abs(got - want).max() <= 1e-5
        windows = len(TiledUpscaler(ov, core=16).plan(64, 72))
        assert ov.compilations >= 1 and ov.dynamic_runs < windows / 2  # each shape runs dynamic once at most


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_small_image_gives_the_same_values_the_first_time_and_every_time_after(precision, tmp_path, monkeypatch):
    """The default model (it has int8 ranges): a fresh backend's first small image against the same
    image run again. bf16 runs it first on the dynamic-shape model, then moves the shape to a static
    model, which computes the same values; int8's dynamic model rounds otherwise, so every int8
    shape is compiled static."""
    if precision == "bf16" and not cpu_has_fast_bf16():
        pytest.skip(f"{precision} is not fast on this CPU")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    planes = Planes(smooth_image(60, 45, seed=1))
    fresh = create_backend("openvino", precision=precision, device="cpu").backend
    assert fresh.own_threads  # its TBB pool runs the network: torch keeps one thread in `srtrt run`
    first, _ = TiledUpscaler(fresh).run_to_array(planes)
    again, _ = TiledUpscaler(fresh).run_to_array(planes)
    again, _ = TiledUpscaler(fresh).run_to_array(planes)  # bf16: by now compiled static
    if precision == "int8":
        assert (fresh.compilations, fresh.dynamic_runs) == (1, 0)
        assert np.array_equal(first, again)
    else:
        assert (fresh.compilations, fresh.dynamic_runs) == (1, 1)
        assert np.abs(first - again).max() <= 1e-5


def test_compiled_blob_cache_stays_within_its_size_and_drops_the_least_recently_used(view, onnx_file, tmp_path,
                                                                                       monkeypatch):
    import os

    monkeypatch.setenv("SRTRT_OPENVINO_CACHE_MB", "1")
    for i in range(6):  # 300 KB each, used at times 1000 s apart: blob 5 the most recent
        blob = tmp_path / f"{i}.blob"
        blob.write_bytes(b"x" * 300_000)
        os.utime(blob, (1_000_000 + 1000 * i, 1_000_000 + 1000 * i))
    (tmp_path / "notes.txt").write_text("not OpenVINO's")
    backend(view, onnx_file, tmp_path).close()
    kept = sorted(p.name for p in tmp_path.glob("*.blob"))
    assert kept == ["3.blob", "4.blob", "5.blob"] and (tmp_path / "notes.txt").exists()


def static_backend(view, onnx_file, cache) -> OpenVinoBackend:
    ov = backend(view, onnx_file, cache)
    ov.dynamic_pixels = 0  # every shape compiled static: one blob per shape
    return ov


def flip_bytes(blob, start: int, count: int = 256) -> bytes:
    """Corrupt `count` bytes of a cached blob in place, as a failing disk or a stray writer would."""
    data = bytearray(blob.read_bytes())
    data[start:start + count] = bytes(b ^ 0x55 for b in data[start:start + count])
    blob.chmod(0o644)  # OpenVINO writes its blobs read-only
    blob.write_bytes(data)
    return bytes(data)


def test_one_backend_compiling_shape_after_shape_keeps_the_blob_cache_within_its_limit(view, onnx_file, tmp_path,
                                                                                         monkeypatch):
    """A folder of many sizes, or `srtrt serve`'s one warm backend, compiles new shapes long after it
    opened: each compile prunes the cache, and the blob just written stays."""
    monkeypatch.setenv("SRTRT_OPENVINO_CACHE_MB", "0")  # room for the blob in use only
    seen = set()
    with static_backend(view, onnx_file, tmp_path) as ov:
        for width in (16, 20, 24):
            ov.infer(photo_batch(16, width))
            blobs = set(tmp_path.rglob("*.blob"))
            assert len(blobs) == 1 and not blobs & seen, blobs  # the new shape's blob, alone
            seen |= blobs


def test_the_blob_cache_drops_the_blob_srtrt_used_least_recently_whatever_its_atime(view, onnx_file, tmp_path):
    """x written, then y, then x used again: y goes first. Under relatime (the default mount) a read
    updates atime only once after each write, so x's atime still says its first read."""
    import os
    import time

    from srtrt.engine.backends.openvino_backend import _prune_blobs

    shapes, blobs = {"x": (16, 16), "y": (16, 20)}, {}
    hour_ago = time.time_ns() - 3600 * 10**9
    for i, (name, shape) in enumerate(shapes.items()):
        with static_backend(view, onnx_file, tmp_path) as ov:
            ov.infer(photo_batch(*shape))
        (blobs[name],) = set(tmp_path.rglob("*.blob")) - set(blobs.values())
        os.utime(blobs[name], ns=(hour_ago + i * 60 * 10**9,) * 2)  # y written a minute after x
    with static_backend(view, onnx_file, tmp_path) as ov:  # a later run uses x again
        ov.infer(photo_batch(*shapes["x"]))
        assert ov._requests[(1, *shapes["x"])].get_compiled_model().get_property("LOADED_FROM_CACHE")
    x_mtime = blobs["x"].stat().st_mtime_ns
    os.utime(blobs["x"], ns=(hour_ago + 10**9, x_mtime))  # the atime relatime leaves, whatever this mount does
    _prune_blobs(tmp_path, budget=blobs["x"].stat().st_size)  # room for one blob
    assert blobs["x"].exists() and not blobs["y"].exists()


@pytest.mark.parametrize("record", ["kept", "missing", "damaged"])
def test_a_cached_blob_corrupted_past_its_header_is_compiled_again_not_run(view, onnx_file, tmp_path, record):
    """OpenVINO imports a blob whose header is intact without looking further: bytes flipped in its
    weights ran as wrong values. Such a blob no longer matches the sha256 srtrt recorded when it was
    written, or has no record to match (lost, damaged): it is deleted and compiled afresh."""
    x = photo_batch(16, 24)
    with static_backend(view, onnx_file, tmp_path) as ov:
        want = ov.infer(x)
    (blob,) = tmp_path.rglob("*.blob")
    corrupt = flip_bytes(blob, blob.stat().st_size * 3 // 10)  # in the weights (the topology comes last)
    sidecar = blob.with_name(blob.name + ".sha256")
    if record == "missing":
        sidecar.unlink(missing_ok=True)
    elif record == "damaged":
        sidecar.write_bytes(b"\xff\x00e3b0c4")
    with static_backend(view, onnx_file, tmp_path) as ov:
        got = ov.infer(x)
    assert (got - want).abs().max().item() <= 1e-6
    (fresh,) = tmp_path.rglob("*.blob")
    assert fresh.read_bytes() != corrupt


def test_a_compile_killed_midway_leaves_no_blob_outside_the_cache_limit(view, onnx_file, tmp_path):
    """A fresh compile writes its blob in a private folder first; a process killed there leaves it.
    The next backend to open deletes such a folder once it is clearly no one's (an hour old)."""
    import os
    import time

    abandoned, running = tmp_path / ".0123abcd.partial-4242-a1b2c3", tmp_path / ".4567ef01.partial-4343-d4e5f6"
    for private in (abandoned, running):
        private.mkdir()
        (private / "1234.blob").write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    backend(view, onnx_file, tmp_path).close()
    assert not abandoned.exists() and (running / "1234.blob").exists()


def test_create_backend_reuses_the_cached_export(tmp_path, monkeypatch):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    view = random_view(blocks=1, channels=4, seed=5)
    first = create_backend("openvino", precision="fp32", view=view)
    exported = sorted((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].name.endswith("-x4-fp32-polyphase.onnx")
    mtime = exported[0].stat().st_mtime_ns
    second = create_backend("openvino", precision="fp32", view=view)
    assert exported[0].stat().st_mtime_ns == mtime  # exported once, by the model's sha256
    assert first.backend.path == second.backend.path == exported[0]
    assert first.reason.startswith("openvino (fp32, cpu, ") and "as asked" in first.reason
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():  # the polyphase graph computes the model's own image
        assert (second.backend.infer(x) - view(x)).abs().max() <= 1e-4
    assert any((tmp_path / "openvino").iterdir())  # CACHE_DIR under srtrt's cache root


def test_auto_on_this_cpu_runs_the_fastest_path_it_measured(tmp_path, monkeypatch):
    """The default model: every path the guard allows is timed on this CPU and the fastest runs;
    a second selection reads the figures back instead of measuring again (on a host taken as idle,
    conftest.steady_host: whether it is busy meanwhile has its own tests, test_measured)."""
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    first = create_backend("auto", device="cpu")
    assert "fastest here, measured now in " in first.reason, first.reason
    figures = first.reason.split(" s: ", 1)[1].split(" window")[0]
    fastest = figures.split(" ms")[0].rsplit(" ", 1)[0]  # figures are listed fastest first
    assert figures.split(", ")[0].endswith("(picked)")
    assert f"{first.backend.name} {first.backend.precision}" == fastest
    assert figures.count(" ms") >= 2  # the reference and at least one faster candidate were timed
    first.backend.close()
    second = create_backend("auto", device="cpu")
    assert "fastest here, measured earlier: " + figures in second.reason
    assert (second.backend.name, second.backend.precision) == (first.backend.name, first.backend.precision)
    second.backend.close()


def test_auto_s_reason_line_tells_a_first_use_s_exports_from_its_timing(tmp_path, monkeypatch):
    """A model's first measurement also exports its graphs (once per model, whichever path runs):
    the reason line says how much of the measurement that was; measured again with the graphs
    kept, it says nothing of exports."""
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    first = create_backend("auto", device="cpu")  # the default model: the guard allows several paths
    first.backend.close()
    said = re.search(r"measured now in ([\d.]+) s: .* \(([\d.]+) s of the ([\d.]+) s exported this model's graphs, "
                     r"once per model\)", first.reason)
    assert said, first.reason
    assert said[1] == said[3] and 0 < float(said[2]) <= float(said[3])
    for entry in (tmp_path / "receptive_field").glob("*.json"):
        entry.unlink()  # the timings only: the exported graphs stay
    again = create_backend("auto", device="cpu")
    again.backend.close()
    assert "measured now in " in again.reason and "exported" not in again.reason, again.reason


def test_an_onnx_file_openvino_cannot_read_is_one_line_naming_it(tmp_path):
    from srtrt.errors import SrtrtError

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(SrtrtError) as raised:
        OpenVinoBackend(bad, 4, 5)
    message = str(raised.value)
    assert message.startswith(f"{bad}: OpenVINO cannot read this ONNX file (") and "\n" not in message


def test_fused_graph_names_the_op_openvino_lacks(view, tmp_path):
    from srtrt.errors import SrtrtError

    fused = export_onnx(view, tmp_path / "fused.onnx", fused=True)
    with pytest.raises(SrtrtError, match="PixelShufflePReLU") as raised:
        OpenVinoBackend(fused, view.scale, view.radius)
    assert str(raised.value).startswith(f"{fused}: OpenVINO cannot read this ONNX file (")


def test_cli_with_a_corrupt_cached_export_exports_it_again(tmp_path, monkeypatch, capsys):
    """A cached graph cut short is never handed to OpenVINO (the run failed on it every time)."""
    from srtrt.checkpoint import file_sha256
    from srtrt.engine.toolchain.onnx_io import metadata

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    weights = save_tiny_model(tmp_path)
    cached = tmp_path / "cache" / "onnx" / f"{file_sha256(weights)[:16]}-x4-fp32-polyphase.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    (image,) = write_images(tmp_path / "in", 1)
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, image, "-o", out, "--model", weights, "--backend", "openvino")
    assert code == 0 and out.is_file(), err
    assert metadata(cached)["model_sha256"] == file_sha256(weights) and not partials(tmp_path)


def test_a_cached_graph_damaged_inside_its_weights_is_exported_again(tmp_path, monkeypatch, capsys):
    """Its record's sha256 no longer matched, and the graph was judged by its ONNX metadata, which
    damage inside the weights leaves whole: the record was rewritten to the damaged bytes and every
    later run wrote wrong pixels, exit 0."""
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    weights = save_tiny_model(tmp_path)
    (image,) = write_images(tmp_path / "in", 1)
    run = ("--model", weights, "--backend", "openvino", "--precision", "fp32")
    assert run_cli(capsys, image, "-o", tmp_path / "good.png", *run)[0] == 0
    (graph,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    data = bytearray(graph.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    graph.write_bytes(data)
    code, err = run_cli(capsys, image, "-o", tmp_path / "again.png", *run)
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "good.png"))
    assert graph.read_bytes() != bytes(data)


def test_importing_openvino_through_srtrt_starts_no_telemetry_and_forks_nothing():
    """openvino's import starts Intel's usage telemetry, which forks the process to send an event."""
    import subprocess
    import sys

    probe = (
        "import os, sys, time\n"
        "os.register_at_fork(before=lambda: sys.stderr.write('forked\\n'))\n"
        "from srtrt.engine.backends.openvino_backend import import_openvino, shared_core\n"
        "ov = import_openvino(); shared_core()\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "time.sleep(1.0)  # the event goes out from a thread pool\n"
        "import openvino_telemetry  # the block is lifted: a user's own import still works\n"
        "print(t.tm.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "openvino.tools.ovc.telemetry_stub" and "forked" not in done.stderr


class WideAtFullSize(torch.nn.Module):
    """RRDBNet's tail in small: upsampled by nearest neighbour, then convolved at the output's
    resolution, where two `width`-channel maps are alive at once (the upsampled one and the conv's)."""

    def __init__(self, width: int):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(8, width, 3, padding=1)
        self.hr = torch.nn.Conv2d(width, width, 3, padding=1)
        self.tail = torch.nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.interpolate(torch.relu(self.head(x)), scale_factor=4, mode="nearest")
        return self.tail(torch.relu(self.hr(torch.relu(self.up(x)))))


def wide_graph(path, width: int):
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation: it exports this plain module in 0.1 s
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(WideAtFullSize(width).eval(), torch.rand(1, 3, 16, 16), str(path), input_names=["lr"],
                          output_names=["hr"], dynamic_axes={"lr": {2: "h", 3: "w"}}, dynamo=False)
    return path


def compiled_at(path, side: int):
    from srtrt.engine.backends.openvino_backend import import_openvino, shared_core

    model = shared_core().read_model(str(path))  # one Core per process (shared_core: each has its signal stack)
    model.reshape({model.inputs[0]: import_openvino().PartialShape([1, 3, side, side])})
    return shared_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def test_a_windows_activation_memory_is_read_from_its_compiled_graph_and_grows_with_its_pixels(tmp_path):
    from srtrt.engine.backends.openvino_memory import peak_activation_bytes

    path = wide_graph(tmp_path / "wide.onnx", width=24)
    per_pixel = [peak_activation_bytes(compiled_at(path, side)) / side**2 for side in (24, 40)]
    assert per_pixel[0] == pytest.approx(per_pixel[1], rel=0.02)  # weights are not counted
    hr_map = 24 * 4 * 4 * 4  # one 24-channel f32 map at x4, per LR pixel
    assert 2 * hr_map <= per_pixel[0] <= 6 * hr_map  # the conv's input and output at once; not every map at once


def test_a_dynamic_models_memory_is_read_at_the_shapes_of_its_last_inference(tmp_path):
    from srtrt.engine.backends.openvino_backend import shared_core
    from srtrt.engine.backends.openvino_memory import dynamic_activation_bytes, peak_activation_bytes

    path = wide_graph(tmp_path / "wide.onnx", width=24)
    compiled = shared_core().compile_model(shared_core().read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    per_pixel = []
    for side in (24, 40):
        request.infer({0: np.zeros((1, 3, side, side), np.float32)})
        per_pixel.append(dynamic_activation_bytes(compiled) / side**2)
    assert per_pixel[0] == pytest.approx(per_pixel[1], rel=0.02)
    assert per_pixel[0] >= peak_activation_bytes(compiled_at(path, 40)) / 40**2  # blocks are never packed tighter


def test_a_dynamic_models_blocks_each_hold_their_largest_buffer():
    """Buffers (written, last read, bytes) go into the first block whose latest buffer's life does
    not overlap theirs; each block is as large as its largest buffer."""
    from srtrt.engine.backends.openvino_memory import Buffer, arena_bytes, grouped_bytes

    buffers = [Buffer(0, 1, 100), Buffer(1, 2, 50), Buffer(2, 3, 10), Buffer(3, 4, 40)]
    assert arena_bytes(buffers) == 150
    assert grouped_bytes(buffers) == 100 + 50  # (100, 10), (50, 40)
    # two large buffers never alive together, in two blocks: small ones between them took the first
    # block after the first large one, and the second large one overlaps the latest of them
    chain = [Buffer(0, 1, 100), Buffer(1, 2, 10), Buffer(2, 3, 10), Buffer(3, 4, 100)]
    assert arena_bytes(chain) == 110
    assert grouped_bytes(chain) == 200  # (100, 10), (10, 100)


def test_windows_are_sized_so_their_activations_fit_the_cpu_budget(tmp_path, monkeypatch):
    """RRDBNet on an AVX2 EPYC peaked at 3.87 GB: its windows were sized by a table that took its
    full-resolution maps for bf16, and its maps are wider there than srtrt's SRResNet's."""
    from srtrt.engine.backends.openvino_memory import peak_activation_bytes
    from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    path = wide_graph(tmp_path / "wide.onnx", width=96)
    with OpenVinoBackend(path, 4, 4, "fp32", cache=tmp_path / "blobs") as ov:
        defaults = ov.defaults
    window = defaults.core + 2 * 4
    assert defaults.core >= 256  # a window as large as the budget holds, not a timid one
    assert peak_activation_bytes(compiled_at(path, window)) <= CPU_ACTIVATION_BUDGET
    whole_side = int(defaults.whole_image_pixels ** 0.5)
    assert peak_activation_bytes(compiled_at(path, whole_side)) <= CPU_ACTIVATION_BUDGET


def test_only_windows_the_dynamic_model_holds_in_the_budget_run_on_it(tmp_path, monkeypatch):
    """Small windows run on the dynamic-shape model, whose blocks hold more than a static arena
    (RRDBNet on the AVX2 EPYC: 12.5 KB per LR pixel against 8.3 KB): below DYNAMIC_BELOW_PIXELS, a
    wide model's window there would not fit the budget, so it is compiled static instead."""
    from srtrt.engine.backends.openvino_backend import DYNAMIC_BELOW_PIXELS
    from srtrt.engine.backends.openvino_memory import dynamic_activation_bytes
    from srtrt.engine.backends.torch_backend import CPU_ACTIVATION_BUDGET

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    path = wide_graph(tmp_path / "wide.onnx", width=96)
    with OpenVinoBackend(path, 4, 4, "fp32", cache=tmp_path / "blobs") as ov:
        small = ov._request(1, 24, 24)  # the first request sizes windows: the dynamic model's too
        limit = ov.dynamic_pixels
        assert 0 < limit < DYNAMIC_BELOW_PIXELS
        assert small is ov._dynamic
        ov._run(small, torch.zeros(1, 3, 24, 24))
        per_pixel = ov.window_memory().dynamic  # its blocks, read from it, and the window's tensors
        assert per_pixel > dynamic_activation_bytes(small.get_compiled_model()) / 24**2
        assert limit * per_pixel <= CPU_ACTIVATION_BUDGET < (limit + 1) * per_pixel
        side = int(limit**0.5) + 1  # just over: compiled for its shape, not run on the dynamic model
        assert ov._request(1, side, side) is not ov._dynamic and ov.compilations == 1


def test_a_models_window_memory_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    path = wide_graph(tmp_path / "wide.onnx", width=16)
    with OpenVinoBackend(path, 4, 4, "fp32", cache=None) as first:
        measured = first.window_memory()
        defaults = first.defaults
    assert measured.static > 0 and measured.dynamic >= measured.static

    def no_compile(*args):
        raise AssertionError("compiled again")

    with monkeypatch.context() as patched:
        patched.setattr(OpenVinoBackend, "_compile", no_compile)
        with OpenVinoBackend(path, 4, 4, "fp32", cache=None) as second:
            assert second.defaults == defaults
    # an entry that is not a byte count is measured again, never used
    stored = next((tmp_path / "cache" / "receptive_field").glob("*.json"))
    content = json.loads(stored.read_text())
    for entry in content["results"].values():
        entry["bytes_per_pixel"] = -1
    stored.write_text(json.dumps(content))
    with OpenVinoBackend(path, 4, 4, "fp32", cache=None) as third:
        assert third.window_memory() == measured


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_the_dynamic_models_memory_levels_off_over_many_new_sizes():
    """A folder of photos of many sizes through the dynamic model (int8's, where they all ran once): the
    compiled model kept every shape's kernels, about 7 MB each for the default model, 1.5 GB after
    240 sizes and growing (`srtrt.upscale` in a loop, `srtrt serve`). It now keeps the last few."""
    import srtrt

    view = srtrt.load_model()
    if view.int8_calibration is None:
        pytest.skip("the embedded model carries no int8 ranges")
    selection = create_backend("openvino", view=view, precision="int8", device="cpu")
    ov = selection.backend
    ov.dynamic_pixels = 10**9  # int8 now compiles every shape; bf16 and fp32 run small new sizes there
    try:
        sizes = [(20 + i % 40, 21 + i // 40) for i in range(160)]
        marks = {}
        for i, (h, w) in enumerate(sizes):
            ov.infer(torch.rand(1, 3, h, w))
            if i + 1 in (100, 160):
                marks[i + 1] = _rss_mb()
        assert ov.dynamic_runs == len(sizes) and ov.compilations == 0
        assert marks[160] - marks[100] < 60, marks  # 60 more sizes: about 420 MB more before
    finally:
        selection.backend.close()
