"""Checkpoint format: round trip, every kind of bad file refused with one SrtrtError line, and
embedded models by name (srresnet, srgan) resolved in one place for every entry point."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import srtrt
from srtrt import checkpoint
from srtrt.errors import SrtrtError
from srtrt.nets import InferenceView, SRResNet, SRResNetConfig
from srtrt.train.evaluate import super_resolve

from conftest import DiskFillsAfter
from embedded import install_embedded
from run_helpers import pixels, run_cli, save_tiny_model, write_images

TINY = SRResNetConfig(blocks=2, channels=8)


@pytest.fixture
def saved(tmp_path):
    """A tiny random model with non-trivial BN statistics, saved as tmp_path/model.*."""
    torch.manual_seed(1)
    model = SRResNet(TINY)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint.save(tmp_path / "model", model, "srresnet", TINY, {"training": {"iterations": 7}})
    return model.eval(), tmp_path / "model.safetensors", tmp_path / "model.json"


def _refused(path) -> str:
    with pytest.raises(SrtrtError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip_gives_identical_outputs(saved):
    model, weights, _ = saved
    view = srtrt.load_model(weights)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(view(x), InferenceView(model).eval()(x))
    assert not view.training and view.scale == 4 and view.radius == checkpoint.load(weights).radius
    assert len(view.checkpoint_sha256) == 64


def test_sidecar_keeps_config_and_provenance(saved):
    _, weights, sidecar = saved
    doc = json.loads(sidecar.read_text())
    assert doc["format"] == checkpoint.FORMAT and doc["version"] == checkpoint.VERSION
    assert doc["architecture"] == "srresnet" and doc["config"]["channels"] == 8
    ckpt = checkpoint.load(weights.with_suffix(""))  # the stem works as well as either file name
    assert ckpt.config == TINY and ckpt.meta == {"training": {"iterations": 7}}


def test_no_temporary_files_are_left(saved):
    _, weights, _ = saved
    assert sorted(p.name for p in weights.parent.iterdir()) == ["model.json", "model.safetensors"]


def test_truncated_weights_are_refused(saved):
    _, weights, _ = saved
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert str(weights) in _refused(weights)


def test_garbage_header_is_refused(saved):
    _, weights, _ = saved
    weights.write_bytes(b"\xff" * 64)
    assert "corrupt" in _refused(weights)


@pytest.mark.parametrize("change", [{"channels": 16}, {"blocks": 3}, {"blocks": 1}, {"scale": 2}])
def test_config_not_matching_the_tensors_is_refused(saved, change):
    _, weights, sidecar = saved
    doc = json.loads(sidecar.read_text())
    doc["config"].update(change)
    sidecar.write_text(json.dumps(doc))
    assert "do not match the config" in _refused(weights)


def test_missing_sidecar_is_refused(saved):
    _, weights, sidecar = saved
    sidecar.unlink()
    assert str(sidecar) in _refused(weights)


def test_missing_weights_are_refused(saved):
    _, weights, sidecar = saved
    weights.unlink()
    assert str(weights) in _refused(sidecar)


@pytest.mark.parametrize("field,value,expected", [
    ("format", "something-else", "not an srtrt checkpoint"),
    ("version", 99, "version 99"),
    ("architecture", "esrgan", "unknown architecture"),
    ("config", {"scale": 4, "blocks": 2, "channels": 8, "depth": 3}, "bad architecture or config"),
])
def test_wrong_sidecar_fields_are_refused(saved, field, value, expected):
    _, weights, sidecar = saved
    doc = json.loads(sidecar.read_text())
    doc[field] = value
    sidecar.write_text(json.dumps(doc))
    assert expected in _refused(weights)


@pytest.mark.parametrize("text", ["{not json", "[" * 100_000 + "]" * 100_000, '{"n": ' + "9" * 5000 + "}"])
def test_sidecar_that_is_not_json_is_refused(saved, text):
    """Deeply nested JSON (RecursionError) and a 5000-digit integer (ValueError) were tracebacks."""
    _, weights, sidecar = saved
    sidecar.write_text(text)
    assert "checkpoint config is not readable JSON" in _refused(weights)


def test_a_json_sidecar_that_is_no_regular_file_is_not_read(tmp_path):
    """srtrt's JSON reader (checkpoint configs, engine sidecars, int8 ranges, the quality guard) read a
    FIFO there for ever: refused in one line, at once."""
    import os
    import signal

    from srtrt.sidecar import read_versioned_json

    fifo = tmp_path / "model.json"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the sidecar's read blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(SrtrtError) as refused:
            read_versioned_json(fifo, checkpoint.FORMAT, checkpoint.VERSION, "checkpoint config")
    finally:
        signal.alarm(0)
    assert str(refused.value) == f"{fifo}: checkpoint config is not readable (a FIFO (named pipe), not a regular file)"


class _Trap:
    """Unpickling this runs code that leaves a marker file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_unpickles(saved, tmp_path):
    _, weights, _ = saved
    marker = tmp_path / "unpickled"
    weights.write_bytes(pickle.dumps({"head.weight": _Trap(marker)}))
    _refused(weights)
    assert not marker.exists()


def test_torch_save_file_is_refused(saved):
    model, weights, _ = saved
    torch.save(model.state_dict(), weights)  # a .pth under the .safetensors name
    assert "corrupt" in _refused(weights)


def test_save_writes_through_unique_temporary_names(saved, monkeypatch):
    """Two processes saving the same checkpoint never share a temporary file (srtrt.atomic names)."""
    model, weights, _ = saved
    seen = []
    real = checkpoint.atomic.temp_name
    monkeypatch.setattr(checkpoint.atomic, "temp_name", lambda path: seen.append(real(path)) or seen[-1])
    checkpoint.save(weights, model, "srresnet", TINY)
    assert len(seen) == 2 and all(f"partial-{checkpoint.atomic.HOST}-{__import__('os').getpid()}-" in name for name in seen)
    assert sorted(p.name for p in weights.parent.iterdir()) == ["model.json", "model.safetensors"]


# --- embedded models by name -----------------------------------------------------------------

@pytest.fixture
def embedded(monkeypatch, tmp_path):
    return install_embedded(monkeypatch, tmp_path / "weights")


def test_embedded_names_resolve_to_their_weights(embedded):
    for name, path in embedded.items():
        sha = checkpoint.file_sha256(path)
        assert checkpoint.resolve(name) == path
        assert checkpoint.load(name).sha256 == sha and srtrt.load_model(name).checkpoint_sha256 == sha
    assert checkpoint.load().sha256 == checkpoint.load("srresnet").sha256  # srresnet stays the default
    assert checkpoint.load("srgan").sha256 != checkpoint.load("srresnet").sha256
    assert checkpoint.embedded_models() == ["srresnet", "srgan"]


def test_embedded_model_not_installed_is_one_line(monkeypatch, tmp_path):
    install_embedded(monkeypatch, tmp_path, names=("srresnet",))
    assert checkpoint.embedded_models() == ["srresnet"]
    message = _refused("srgan")
    assert message.startswith("srgan: ") and "not installed" in message and "srgan_x4.safetensors" in message
    assert "installed: srresnet" in message


def test_neither_a_name_nor_a_checkpoint_lists_the_embedded_names(embedded):
    message = _refused("srgn")
    assert message.startswith("srgn: checkpoint file not found")
    assert message.endswith("embedded models: srresnet, srgan)")


def test_a_path_stays_a_path_beside_an_embedded_name(embedded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = checkpoint.file_sha256(save_tiny_model(tmp_path, "srgan", seed=7))
    assert checkpoint.load("./srgan").sha256 == local
    assert checkpoint.load("srgan.safetensors").sha256 == local
    assert checkpoint.load("srgan").sha256 == checkpoint.file_sha256(embedded["srgan"])  # a bare name is embedded


def test_model_label_names_embedded_models_and_files():
    assert checkpoint.model_label(None) == "srresnet" and checkpoint.model_label("srgan") == "srgan"
    assert checkpoint.model_label("runs/gan/model.safetensors") == "model"
    assert checkpoint.model_label(checkpoint.WEIGHTS_DIR / "srgan_x4.json") == "srgan_x4"


def test_an_embedded_name_flows_through_run_and_upscale(embedded, tmp_path, capsys):
    """`srtrt run --model srgan` and `srtrt.upscale(model="srgan")` run the srgan weights, unchanged."""
    (image,) = write_images(tmp_path / "in", 1)
    with Image.open(image) as im:
        lr = im.convert("RGB")
    expected = {name: super_resolve(srtrt.load_model(name), lr).astype(int) for name in embedded}
    assert np.abs(expected["srgan"] - expected["srresnet"]).max() > 8  # the two models are told apart

    out = tmp_path / "out.png"
    code, err = run_cli(capsys, image, "-o", out, "--model", "srgan", "--backend", "torch", "--precision", "fp32")
    assert code == 0, err
    assert np.abs(pixels(out).astype(int) - expected["srgan"]).max() <= 1  # float order; same weights
    result = np.asarray(srtrt.upscale(image, model="srgan", backend="torch", precision="fp32")).astype(int)
    assert np.abs(result - expected["srgan"]).max() <= 1

    code, err = run_cli(capsys, image, "-o", tmp_path / "no.png", "--model", "srgn")
    assert code == 2 and "embedded models: srresnet, srgan" in err and err.count("\n") == 1


def test_a_folder_or_a_file_of_another_kind_is_named_as_such(tmp_path):
    (tmp_path / "models.pth").mkdir()
    with pytest.raises(SrtrtError, match="is a folder, not a model file"):
        srtrt.load_model(tmp_path / "models.pth")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(SrtrtError, match=r"not a model file srtrt reads \(\.bin; community models are \.pth"):
        srtrt.load_model(tmp_path / "weights.bin")
    with pytest.raises(SrtrtError, match="checkpoint file not found"):
        srtrt.load_model(tmp_path / "absent.pth")


def test_weights_beside_a_stale_sidecar_are_refused(saved, tmp_path):
    """A crash between save's two renames leaves new weights beside the old sidecar: refused, not run."""
    _, weights, sidecar = saved
    old_sidecar = sidecar.read_text()
    torch.manual_seed(2)
    checkpoint.save(weights, SRResNet(TINY), "srresnet", TINY, {"training": {"iterations": 9}})
    sidecar.write_text(old_sidecar)
    assert "the weights are not the ones model.json was saved with" in _refused(weights)


def test_a_sidecar_saved_before_it_recorded_the_weights_sha256_still_loads(saved):
    model, weights, sidecar = saved
    doc = json.loads(sidecar.read_text())
    del doc["weights_sha256"]
    sidecar.write_text(json.dumps(doc))
    ckpt = checkpoint.load(weights)
    assert ckpt.meta == {"training": {"iterations": 7}} and ckpt.sha256 == checkpoint.file_sha256(weights)


@pytest.mark.parametrize("change, cause", [
    ({"scale": 4.0}, "scale must be a whole number, not 4.0"),
    ({"blocks": 2.0}, "blocks must be a whole number"),
    ({"blocks": float("nan")}, "blocks must be a whole number, not nan"),
    ({"channels": 8.0}, "channels must be a whole number"),
    ({"scale": True}, "scale must be a whole number, not True"),
    ({"head_kernel": -1}, "kernel sizes must be odd and 1..15"),
    ({"head_kernel": 99999}, "kernel sizes must be odd and 1..15"),
    ({"blocks": 10 ** 12}, "at most 256"),
])
def test_config_values_of_a_wrong_type_or_size_are_one_line(saved, change, cause):
    _, weights, sidecar = saved
    doc = json.loads(sidecar.read_text())
    doc["config"].update(change)
    sidecar.write_text(json.dumps(doc))
    message = _refused(weights)
    assert message.startswith(f"{sidecar}: bad architecture or config") and cause in message


class _FullDiskFile(DiskFillsAfter):
    """DiskFillsAfter in a `with` block, as srtrt.atomic writes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.mark.parametrize("full", ["model.safetensors", "model.json"])
def test_saving_onto_a_full_disk_is_one_line_naming_the_file(saved, monkeypatch, full):
    model, weights, _ = saved
    real_open = open
    monkeypatch.setattr(checkpoint.atomic, "open", lambda path, mode="r", *a, **k: _FullDiskFile(
        real_open(path, mode, *a, **k)) if full in str(path) else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(SrtrtError) as info:
        checkpoint.save(weights, model, "srresnet", TINY)
    assert str(info.value) == f"{weights.parent / full}: cannot write the checkpoint: No space left on device"


def test_a_small_file_read_within_a_large_limit_allocates_its_size():
    """read_regular(path, 64 MiB) allocated 64 MiB for a sidecar of a few bytes (read(n) takes n
    first): under `ulimit -v` that was a MemoryError before the first image."""
    import tempfile
    import tracemalloc

    from srtrt.bounded_read import TooLarge, read_regular

    with tempfile.NamedTemporaryFile() as f:
        f.write(b"{}")
        f.flush()
        tracemalloc.start()
        try:
            assert read_regular(f.name, 64 << 20) == b"{}"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20
        f.write(bytes(3 << 20))
        f.flush()
        with pytest.raises(TooLarge):
            read_regular(f.name, 2 << 20)
        assert len(read_regular(f.name, 4 << 20)) == 2 + (3 << 20)
