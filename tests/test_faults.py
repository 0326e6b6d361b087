"""Faults and hostile input for `srtrt run`: each is refused or survived with one line, and
nothing finished is lost, nothing half-written is left (see engine/FAULTS.md)."""
from __future__ import annotations

import errno
import io
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srtrt.errors import SrtrtError

from conftest import DiskFillsAfter
from run_helpers import (
    is_complete_image,
    partials,
    pixels,
    save_tiny_model,
    signal_when,
    srtrt_process,
    terminal_signals,
    write_images,
)
from run_helpers import run_cli as run


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def one_line_errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("srtrt: ")]


# --------------------------------------------------------------------------- signals

def test_first_signal_is_recorded_and_raised_at_the_next_check():
    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    with terminal_signals():
        before = signal.getsignal(signal.SIGTERM)
        with StopOnSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, nothing raised here
            assert stop.requested
            with pytest.raises(Stopped) as caught:
                stop.check()
        assert caught.value.exit_code == 143 and caught.value.name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is before
    assert Stopped(signal.SIGINT).exit_code == 130


def test_at_once_the_first_signal_raises_where_the_main_thread_waits():
    """The Ray driver waits on its actors' rows with no safe point to ask at: the first signal stops it."""
    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    with terminal_signals():
        before = signal.getsignal(signal.SIGINT)
        with pytest.raises(Stopped) as caught, StopOnSignals(at_once=True):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # a wait the signal ends
        assert caught.value.exit_code == 130 and signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- device memory

def out_of_memory_above(view, limit: int):
    """Fault injection: a real Backend (a TorchBackend subclass) that raises torch.cuda.OutOfMemoryError,
    as CUDA would, when a call holds more than `limit` LR pixels (batch x height x width).

    The CPU has no device memory to exhaust, so this stands in for a GPU that is too small.
    """
    from srtrt.engine.backends.torch_backend import TorchBackend

    class OutOfMemoryAbove(TorchBackend):
        def __init__(self):
            super().__init__(view, "cpu", "fp32")
            self.calls = []

        def infer(self, x):
            n, _, h, w = x.shape
            self.calls.append((n, h, w))
            if n * h * w > limit:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {n * h * w * 4096} bytes (injected)")
            return super().infer(x)

    return OutOfMemoryAbove()


@pytest.fixture
def inject_oom(monkeypatch, model):
    """Make `srtrt run` use an out_of_memory_above backend with the given limit."""
    import srtrt
    import srtrt.engine.backends as backends

    made = []

    def use(limit: int):
        def create(name="auto", model=None, precision="auto", device=None, view=None, allow_noncommercial=False,
                   shape_class="large"):
            view = srtrt.load_model(model)
            backend = out_of_memory_above(view, limit)
            made.append(backend)
            return backends.Selection(backend, "torch with injected out-of-memory", view.facts)

        monkeypatch.setattr(backends, "create_backend", create)
        return made

    return use


def test_out_of_memory_halves_the_batch_then_the_tile(tmp_path, capsys, model, inject_oom):
    (source,) = write_images(tmp_path / "in", 1, height=160, width=160)
    # margin = radius
    options = ["--model", model, "--tile", "64", "--margin", "10", "--batch", "4", "--precision", "fp32"]
    reference = tmp_path / "reference.png"
    assert run(capsys, source, "-o", reference, *options)[0] == 0

    made = inject_oom(limit=52 * 52)  # only one window of a 32-pixel core (32 + 2*10) fits
    out = tmp_path / "out.png"
    code, err = run(capsys, source, "-o", out, *options)
    assert code == 0, err
    retries = [line.split("retrying with ")[1] for line in err.splitlines() if "retrying with" in line]
    assert retries == ["batch 2, tile 64", "batch 1, tile 64", "batch 1, tile 32"]
    calls = made[0].calls
    assert calls[:3] == [(4, 74, 74), (2, 74, 74), (1, 74, 74)]  # 160 = 3 balanced cores of 54 (<= 64)
    assert set(calls[3:]) == {(1, 52, 52)} and len(calls[3:]) == 25  # 160 = 5 x 32: 5x5 tiles
    # tiled output does not depend on the tile (fp32 sums in another order: a rounding step at most)
    diff = np.abs(pixels(out).astype(int) - pixels(reference).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert partials(tmp_path) == []


def test_out_of_memory_at_the_floor_fails_that_image_only(tmp_path, capsys, model, inject_oom):
    write_images(tmp_path / "in", 1, height=80, width=80, prefix="big")
    write_images(tmp_path / "in", 1, height=8, width=8, prefix="small")
    inject_oom(limit=20 * 20)  # below the smallest window (32 + 2*4)^2, above the 8x8 image
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model, "--margin", "4")
    assert code == 1
    (failure,) = [line for line in one_line_errors(err) if "even with" in line]
    assert "big0.png: out of device memory even with batch 1 and tile 32" in failure
    assert "try a smaller --tile or --device cpu" in failure
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["small0_x4.png"]
    assert partials(tmp_path) == []


@pytest.mark.parametrize("exc, expected", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"), True),
    (RuntimeError("TensorRT could not create an execution context (out of GPU memory?)"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("Given groups=1, weight of size [4, 3, 9, 9]"), False),
    (MemoryError(), True),
    (KeyboardInterrupt(), False),
])
def test_what_counts_as_out_of_device_memory(exc, expected):
    from srtrt.engine.batch.oom import is_out_of_memory

    assert is_out_of_memory(exc) is expected


def host_allocation_failure() -> BaseException:
    """What torch's CPU allocator raises when the host has no memory left (a real failed allocation)."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as e:
        return e
    pytest.skip("this host allocated 4 EiB")


def test_host_allocation_failures_count_as_out_of_memory():
    from srtrt.engine.batch.oom import is_host_memory, is_out_of_memory

    error = host_allocation_failure()
    assert is_out_of_memory(error) and is_host_memory(error)
    try:
        np.empty(2**62, np.uint8)
    except MemoryError as e:
        assert is_out_of_memory(e) and is_host_memory(e)
    assert not is_host_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))


def test_out_of_host_memory_steps_down_like_device_memory(tmp_path, capsys, model, monkeypatch):
    """torch's CPU allocator failing in a window (a ulimit, a cgroup) ended the batch with a traceback."""
    import srtrt
    import srtrt.engine.backends as backends
    from srtrt.engine.backends.torch_backend import TorchBackend

    class HostMemoryAbove(TorchBackend):
        def infer(self, x):
            if x.shape[0] * x.shape[2] * x.shape[3] > 52 * 52:
                raise host_allocation_failure()
            return super().infer(x)

    def create(name="auto", model=None, precision="auto", device=None, view=None, allow_noncommercial=False,
               shape_class="large"):
        view = srtrt.load_model(model)
        return backends.Selection(HostMemoryAbove(view, "cpu", "fp32"), "torch, host memory short", view.facts)

    monkeypatch.setattr(backends, "create_backend", create)
    write_images(tmp_path / "in", 1, height=96, width=96, prefix="a")
    write_images(tmp_path / "in", 1, height=8, width=8, prefix="b")
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model, "--tile", "64", "--margin", "10")
    assert code == 0 and "Traceback" not in err, err
    assert "a0.png: out of memory with batch 1, tile 64; retrying with batch 1, tile 32" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a0_x4.png", "b0_x4.png"]
    assert partials(tmp_path) == []


def test_an_output_the_host_cannot_hold_is_one_line_before_any_work(tmp_path):
    """JPEG's encoder holds the whole image: a host that cannot reserve it got a numpy traceback."""
    import subprocess
    import sys

    probe = (
        "import resource, sys\n"
        "from srtrt.engine.datapath.writers import open_writer\n"
        "from srtrt.errors import SrtrtError\n"
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    open_writer(sys.argv[1], 40000, 30000, 3, 8)\n"
        "except SrtrtError as e:\n"
        "    print(e)\n"
    )
    out = tmp_path / "big.jpg"
    done = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "not enough memory to hold the 40000x30000 image for JPEG's encoder" in done.stdout
    assert not out.exists()


# --------------------------------------------------------------------------- files

def test_output_path_equal_to_the_input_is_refused(tmp_path, capsys, model):
    """A bad -o: exit 2 and one line before the backend opens (was exit 1 after opening it, as if the image failed)."""
    (source,) = write_images(tmp_path, 1)
    before = source.read_bytes()
    code, err = run(capsys, source, "-o", source, "--model", model, "--overwrite")
    assert code == 2 and err.splitlines() == [f"srtrt: {source}: output path is the input itself"]
    assert source.read_bytes() == before and partials(tmp_path) == []


def test_output_folder_that_cannot_be_created(tmp_path, capsys, model):
    write_images(tmp_path / "in", 2)
    (tmp_path / "file").write_text("x")
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "file" / "sub", "--model", model)
    assert code == 2 and len(one_line_errors(err)) == 1 and "cannot create the output folder" in err


def test_unwritable_output_folder(tmp_path, capsys, model, monkeypatch):
    """Root ignores permission bits, so the refusal is injected at the writer's open()."""
    import srtrt.engine.datapath.writers as writers

    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(writers, "open", refuse, raising=False)
    code, err = run(capsys, tmp_path / "in", "-o", out, "--model", model)
    assert code == 1
    lines = [line for line in one_line_errors(err) if "Permission denied" in line]
    assert len(lines) == 2 and all("cannot write to" in line for line in lines)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(tmp_path, capsys, model):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, err = run(capsys, tmp_path / "in", "-o", out, "--model", model)
    finally:
        out.chmod(0o700)
    assert code == 1 and err.count("cannot write to") == 2 and list(out.iterdir()) == []


def test_full_disk_fails_that_image_and_keeps_the_others(tmp_path, capsys, model, monkeypatch):
    import srtrt.engine.datapath.writers as writers

    write_images(tmp_path / "in", 3)
    real_open = open

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return DiskFillsAfter(file) if "img1_x4" in os.fspath(path) else file

    monkeypatch.setattr(writers, "open", open_on_full_disk, raising=False)
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model)
    assert code == 1
    (full,) = [line for line in one_line_errors(err) if "No space left on device" in line]
    assert "img1_x4.png" in full
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x4.png", "img2_x4.png"]
    assert all(is_complete_image(p, (128, 96)) for p in (tmp_path / "out").iterdir())
    assert partials(tmp_path) == []


def test_two_runs_into_one_folder_at_once(tmp_path, capsys, model):
    write_images(tmp_path / "in", 6, height=48, width=64)
    reference = tmp_path / "reference"
    assert run(capsys, tmp_path / "in", "-o", reference, "--model", model)[0] == 0
    out = tmp_path / "out"
    runs = [srtrt_process("run", tmp_path / "in", "-o", out, "--model", model, "--overwrite", "-q")
            for _ in range(2)]
    results = [p.communicate(timeout=120) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in out.iterdir():
        assert is_complete_image(path, (256, 192))
        assert path.read_bytes() == (reference / path.name).read_bytes()
    assert partials(tmp_path) == []


def test_a_planted_symlink_in_the_output_folder_is_not_followed(tmp_path, capsys, model):
    (source,) = write_images(tmp_path / "in", 1)
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img0_x4.png").symlink_to(victim)
    code, err = run(capsys, source, "-o", out / "img0_x4.png", "--model", model)
    assert code == 0 and "exists, skipped" in err  # without --overwrite an existing name is left alone
    code, err = run(capsys, source, "-o", out / "img0_x4.png", "--model", model, "--overwrite")
    assert code == 0
    assert victim.read_text() == "keep me"
    assert not (out / "img0_x4.png").is_symlink() and is_complete_image(out / "img0_x4.png", (128, 96))


# --------------------------------------------------------------------------- decoding

def test_mutated_images_in_a_batch_fail_alone(tmp_path, capsys, model):
    """Random byte edits and cuts of PNG, JPEG, TIFF and WebP files, all in one batch."""
    rng = random.Random(7)
    folder = tmp_path / "in"
    write_images(folder, 1, prefix="good")
    seeds = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("WEBP", ".webp")):
        buffer = io.BytesIO()
        Image.open(folder / "good0.png").save(buffer, fmt)
        seeds[suffix] = buffer.getvalue()
    for i in range(16):
        suffix = list(seeds)[i % 4]
        data = bytearray(seeds[suffix])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = len(data) if i % 3 else rng.randrange(1, len(data))
        (folder / f"mutant{i:02d}{suffix}").write_bytes(bytes(data[:cut]))
    code, err = run(capsys, folder, "-o", tmp_path / "out", "--model", model)
    lines = one_line_errors(err)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert "good0_x4.png" in written
    failed = [line for line in lines if "mutant" in line and "->" not in line]
    # every mutant either decoded (its output is complete) or failed with its own one line
    assert len(failed) + len(written) == 17
    assert code == (1 if failed else 0)
    assert all(is_complete_image(tmp_path / "out" / name) for name in written)
    assert partials(tmp_path) == []


# --------------------------------------------------------------------------- models and engines

def test_truncated_weights_are_one_line(tmp_path, capsys):
    model = save_tiny_model(tmp_path)
    model.write_bytes(model.read_bytes()[:300])
    (source,) = write_images(tmp_path / "in", 1)
    code, err = run(capsys, source, "--model", model)
    assert code == 2
    assert one_line_errors(err) == [line for line in err.splitlines() if line]
    assert "corrupt or truncated weights" in err and str(model) in err
    assert not (tmp_path / "in" / "img0_x4.png").exists()


def test_config_that_does_not_match_the_tensors_is_one_line(tmp_path, capsys):
    import json

    model = save_tiny_model(tmp_path)
    sidecar = model.with_suffix(".json")
    doc = json.loads(sidecar.read_text())
    doc["config"]["channels"] = 8
    sidecar.write_text(json.dumps(doc))
    (source,) = write_images(tmp_path / "in", 1)
    code, err = run(capsys, source, "--model", model)
    assert code == 2 and "weights do not match the config" in err and len(one_line_errors(err)) == 1


def _onnx_with_external_weights(tmp_path, location: str):
    """The exported tiny model re-saved with its weights in `weights.bin` beside it, then the
    location its tensors name rewritten to `location` (the data itself stays in weights.bin)."""
    import onnx

    from srtrt.engine.toolchain.export import export_onnx

    from conftest import random_view

    folder = tmp_path / "model"
    path = export_onnx(random_view(blocks=1, channels=4), folder / "m.onnx")
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return _relocate(path, location)


def test_onnx_external_data_inside_its_folder_loads(tmp_path):
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    path = _onnx_with_external_weights(tmp_path, "weights.bin")
    backend = OnnxRuntimeBackend(path, 4, 6)
    y = backend.infer(torch.rand(1, 3, 8, 8))
    assert y.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_onnx_external_data_outside_its_folder_is_refused(tmp_path, where):
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    path = _onnx_with_external_weights(tmp_path, "weights.bin")
    data = path.parent / "weights.bin"
    outside = tmp_path / "secret.bin"
    outside.write_bytes(data.read_bytes())
    if where == "symlink":
        data.unlink()
        data.symlink_to(outside)
        location = "weights.bin"
    else:
        location = "../secret.bin" if where == "parent" else str(outside)
    path = _relocate(path, location)
    with pytest.raises(SrtrtError, match="refused: external data .* (absolute path|outside the model's folder)") as e:
        OnnxRuntimeBackend(path, 4, 6)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def _relocate(path: Path, location: str) -> Path:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, str(path))
    return path


def test_poisoned_onnx_cache_is_replaced_by_srtrt_run(tmp_path, capsys, monkeypatch):
    """`--backend onnxruntime` reuses the ONNX file cached for the checkpoint; a planted one that
    points its weights outside the cache folder is never loaded: its external data is refused
    before any loader reads it, and the graph is exported again from the checkpoint."""
    import shutil

    import onnx

    import srtrt
    from srtrt.engine.toolchain.onnx_io import metadata

    model = save_tiny_model(tmp_path)
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    sha = srtrt.load_model(model).checkpoint_sha256
    planted = tmp_path / "cache" / "onnx" / f"{sha[:16]}-x4-fp32.onnx"
    planted.parent.mkdir(parents=True)
    crafted = _onnx_with_external_weights(tmp_path, "../../../secret.bin")
    shutil.copy(crafted, planted)
    (source,) = write_images(tmp_path / "in", 1)
    code, err = run(capsys, source, "--model", model, "--backend", "onnxruntime", "--precision", "fp32")
    assert code == 0 and (tmp_path / "in" / "img0_x4.png").exists(), err
    graph = onnx.load(str(planted), load_external_data=False)
    assert metadata(graph)["model_sha256"] == sha
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)


@pytest.mark.parametrize("damage", ["empty", "garbage", "cut short", "another model's graph"])
def test_a_damaged_or_foreign_cached_graph_is_exported_again(tmp_path, capsys, monkeypatch, damage):
    """A cached ONNX emptied, overwritten, cut short, or exported from other weights (a model file
    replaced while its first run exported it) under this model's name: exported again, and the
    output is this model's (the emptied one ended in a traceback, the others failed every run or
    gave the other model's image)."""
    import numpy as np

    import srtrt

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    model, other = save_tiny_model(tmp_path, seed=0), save_tiny_model(tmp_path, name="other", seed=1)
    (source,) = write_images(tmp_path / "in", 1)
    runs = iter(range(100))

    def upscale(checkpoint) -> np.ndarray:
        out = tmp_path / f"out{next(runs)}.png"
        code, err = run(capsys, source, "-o", out, "--model", checkpoint, "--backend", "onnxruntime", "--precision", "fp32")
        assert code == 0 and "Traceback" not in err, err
        return np.asarray(Image.open(out))

    clean = upscale(model)
    graph = tmp_path / "cache" / "onnx" / f"{srtrt.load_model(model).checkpoint_sha256[:16]}-x4-fp32.onnx"
    assert graph.is_file()
    data = graph.read_bytes()
    if damage == "another model's graph":
        upscale(other)
        (theirs,) = [p for p in graph.parent.glob("*.onnx") if p != graph]
        data = theirs.read_bytes()
    graph.write_bytes({"empty": b"", "garbage": bytes(range(256)) * 64, "cut short": data[: len(data) // 2]}.get(damage, data))
    np.testing.assert_array_equal(upscale(model), clean)


def test_tensorrt_without_a_gpu_is_one_line(tmp_path, capsys, model):
    """Plans for another GPU or TensorRT version are refused by engine_cache (tests/test_tensorrt.py:
    test_validate_refuses_a_plan_built_for_something_else, test_find_picks_a_fitting_plan_and_explains_misses);
    on a machine without TensorRT or a GPU, asking for it is one line too."""
    (source,) = write_images(tmp_path / "in", 1)
    code, err = run(capsys, source, "--model", model, "--backend", "tensorrt")
    assert code == 2 and len(one_line_errors(err)) == 1
    assert not (tmp_path / "in" / "img0_x4.png").exists()


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["..png", "...png", "a..b.png", "-rf.png", "with space.png", "back\\slash.png",
                                  "new\nline.png", ".hidden.png"])
def test_odd_input_names_stay_in_the_output_folder(tmp_path, capsys, model, name):
    source = tmp_path / "in" / name
    source.parent.mkdir()
    Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(source, "PNG")
    out = tmp_path / "out"
    code, err = run(capsys, source, "-o", f"{out}{os.sep}", "--model", model)
    assert code == 0, err
    (written,) = list(out.iterdir())
    assert written.parent == out and written.name == f"{Path(name).stem}_x4.png"
    assert is_complete_image(written, (20, 24))


def test_a_newline_in_a_name_keeps_every_message_on_one_line(tmp_path, capsys, model):
    """Done, refused (a shared output name) and skipped lines write the newline as an escape, as error lines do."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a\nb.png", "a\nb.jpg", "c\nd.png"):
        Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(folder / name, "PNG" if name.endswith("png") else "JPEG")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c\nd_x4.png").write_bytes(b"kept")
    code, err = run(capsys, folder, "-o", out, "--model", model)
    assert code == 1, err
    assert all(line.startswith("srtrt: ") for line in err.splitlines()), err
    assert "a\\nb.png: same output name a\\nb_x4.png as" in err and "c\\nd_x4.png: exists, skipped" in err
    assert "a\\nb.jpg -> " in err


def test_output_names_come_from_stems_only(tmp_path):
    from srtrt.engine.batch.files import output_path

    out = str(tmp_path / "out")
    for source in ["..", "../x.png", "a/../../b.png", "/etc/passwd", "dir/.png", "c:\\evil\\..\\x.png"]:
        destination = output_path(Path(source), out, True, 4)
        assert destination.parent == Path(out) and destination.name.endswith("_x4.png")
        assert os.sep not in destination.name


def test_globs_with_separators_and_symlinked_inputs(tmp_path, capsys, model):
    write_images(tmp_path / "in" / "sub", 2)
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere, 1, prefix="target")
    (tmp_path / "in" / "link.png").symlink_to(elsewhere / "target0.png")
    pattern = str(tmp_path / "in" / "sub" / ".." / "sub" / "*.png")
    code, err = run(capsys, pattern, "-o", tmp_path / "out", "--model", model)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x4.png", "img1_x4.png"]
    # a symlinked input is named after the link and written beside the link, never beside its target
    code, err = run(capsys, tmp_path / "in" / "link.png", "--model", model)
    assert code == 0 and is_complete_image(tmp_path / "in" / "link_x4.png", (128, 96))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target0.png"]


# --------------------------------------------------------------------------- the parallel encoder

def test_an_exception_in_one_encoder_thread_fails_that_image_only(tmp_path, capsys, model, monkeypatch):
    import srtrt.engine.datapath.writers as writers

    write_images(tmp_path / "in", 2, height=48, width=64)
    write_images(tmp_path / "in", 1, height=48, width=40, prefix="odd")
    real = writers.PngEncoder._deflate_chunk

    def fails_for_the_odd_image(self, samples, above):
        if self.width == 40 * 4:
            raise RuntimeError("injected failure in an encoder thread")
        return real(self, samples, above)

    monkeypatch.setattr(writers.PngEncoder, "_deflate_chunk", fails_for_the_odd_image)
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model)
    assert code == 1
    (failure,) = [line for line in one_line_errors(err) if "injected" in line]
    assert "odd0_x4.png: cannot write the output: injected failure in an encoder thread" in failure
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x4.png", "img1_x4.png"]
    assert all(is_complete_image(p, (256, 192)) for p in (tmp_path / "out").iterdir())
    assert partials(tmp_path) == []


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_disk_full_in_the_middle_of_a_file(tmp_path, capsys, model, monkeypatch, suffix):
    """The disk fills after part of the image is written, while encoder threads are busy."""
    import srtrt.engine.datapath.writers as writers

    (source,) = write_images(tmp_path / "in", 1, height=160, width=200)
    noise = np.random.default_rng(3).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(source)  # noise stays noise after x4: the output hardly compresses
    real_open = open

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return DiskFillsAfter(file, 300_000) if "partial" in os.fspath(path) else file

    monkeypatch.setattr(writers, "open", open_on_a_filling_disk, raising=False)
    out = tmp_path / f"out{suffix}"
    code, err = run(capsys, source, "-o", out, "--model", model, "--tile", "32")
    assert code == 1
    (full,) = [line for line in one_line_errors(err) if "No space left" in line]
    assert f"{out}: cannot write the output: No space left on device" in full
    assert not out.exists() and partials(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_encoder_is_busy(tmp_path, signum):
    """Level 9 makes encoding the slow stage, so the signal lands while bands are being compressed."""
    model = save_tiny_model(tmp_path)
    source = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out.png"
    process = srtrt_process("run", source, "-o", out, "--model", model, "--tile", "32", "--png-level", "9")
    # sent once a first buffer of compressed bands has reached the file (of about 3 MB in all)
    sent, err = signal_when(process, lambda: any(p.stat().st_size > 0 for p in partials(tmp_path)), signum, 120)
    assert sent, f"the run ended before its output was being written: {err}"
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"srtrt: stopped by {signal.Signals(signum).name}")
    assert partials(tmp_path) == []
    assert not out.exists() or is_complete_image(out, (1280, 1280))  # the stop waits for the batch in progress


@pytest.mark.skipif(not __import__("shutil").which("unshare"), reason="no unshare to mount a small disk")
def test_a_jpeg_on_a_disk_that_fills_fails_and_leaves_nothing(tmp_path, model):
    """libjpeg writes to the descriptor itself and ignores a short write: on a real full disk the JPEG
    was left cut short under its name and the run said it was done."""
    import subprocess
    import sys

    from run_helpers import cli_env

    (source,) = write_images(tmp_path / "in", 1, height=80, width=80)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(source)
    disk = tmp_path / "disk"
    disk.mkdir()
    run_it = (f"mount -t tmpfs -o size=8k tmpfs {disk} && {sys.executable} -m srtrt.cli run {source} "
              f"-o {disk / 'out.jpg'} --model {model}; echo exit=$?; ls -A {disk}")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", run_it], capture_output=True, text=True, timeout=300,
                          env=cli_env())
    if "exit=" not in done.stdout:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    assert "exit=1" in done.stdout and done.stdout.split("exit=1", 1)[1].strip() == "", done.stdout
    assert f"{disk / 'out.jpg'}: cannot write the output: No space left on device" in done.stderr, done.stderr
