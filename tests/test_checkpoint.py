"""Checkpoint format: round trip, and every kind of bad file refused with one SrtrtError line."""
import json
import pickle

import pytest
import torch

import srtrt
from srtrt import checkpoint
from srtrt.errors import SrtrtError
from srtrt.nets import InferenceView, SRResNet, SRResNetConfig

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


def test_sidecar_that_is_not_json_is_refused(saved):
    _, weights, sidecar = saved
    sidecar.write_text("{not json")
    assert "checkpoint config is not readable JSON" in _refused(weights)


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
