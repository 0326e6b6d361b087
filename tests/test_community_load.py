"""srtrt.community: community model files read through spandrel, from small random networks
built with spandrel's own architecture classes (no downloads), and the files it must refuse."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import tracemalloc
import types
import zipfile

import pytest
import torch
from safetensors.torch import save_file

spandrel = pytest.importorskip("spandrel")

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.RCAN import RCAN  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402

from srtrt import checkpoint, community  # noqa: E402
from srtrt.errors import SrtrtError  # noqa: E402
from srtrt.nets import SRResNet, SRResNetConfig  # noqa: E402

from conftest import tiny_swinir  # noqa: E402

# name: (constructor, architecture id, scale, channels, global operations, supports half)
CASES = {
    "rrdb_x4": (lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4), "ESRGAN", 4, 3, False, True),
    # Real-ESRGAN x2: pixel-unshuffle by 2 (12 input planes), then the x4 body.
    "rrdb_x2": (lambda: ESRGAN(in_nc=12, out_nc=3, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2),
                "ESRGAN", 2, 3, False, True),
    "compact": (lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=4), "Compact", 4, 3, False, True),
    "compact_grey": (lambda: Compact(num_in_ch=1, num_out_ch=1, num_feat=16, num_conv=2, upscale=2),
                     "Compact", 2, 1, False, True),
    "compact_x1": (lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=1, upscale=1), "Compact", 1, 3, False, True),
    "span": (lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4), "SPAN", 4, 3, False, True),
    "swinir": (tiny_swinir, "SwinIR", 2, 3, True, False),
    "rcan": (lambda: RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4), "RCAN", 2, 3, True, False),
}


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (SwinIR's buffers), so every tensor gets its own.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save_both(tmp_path: pathlib.Path, name: str, model: torch.nn.Module) -> tuple[pathlib.Path, pathlib.Path]:
    tensors = _tensors(model)
    st, pth = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pth"
    save_file(tensors, str(st))
    torch.save(tensors, pth)
    return st, pth


def _refusal(path, **kwargs) -> str:
    with pytest.raises(SrtrtError) as info:
        community.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


@pytest.fixture
def fresh_registry():
    community._registry.cache_clear()
    yield
    community._registry.cache_clear()


@pytest.mark.parametrize("name", list(CASES))
def test_detects_architecture_and_facts(tmp_path, name):
    build, arch, scale, channels, global_ops, half = CASES[name]
    torch.manual_seed(0)
    net = build().eval()
    st, pth = _save_both(tmp_path, name, net)
    a, b = community.load(st), community.load(pth)
    for m in (a, b):
        assert (m.architecture_id, m.scale, m.input_channels, m.output_channels) == (arch, scale, channels, channels)
        assert m.global_operations is global_ops and m.supports_half is half
        assert m.purpose == ("Restoration" if scale == 1 else "SR")
        assert not m.module.training and all(p.dtype == torch.float32 and p.device.type == "cpu"
                                               for p in m.module.parameters())
    assert a.sha256 == hashlib.sha256(st.read_bytes()).hexdigest() != b.sha256

    x = torch.rand(1, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb, expected = a.module(x), b.module(x.clone()), net(x.clone())
    assert torch.equal(x, torch.rand(1, channels, 16, 16, generator=torch.Generator().manual_seed(1)))  # input untouched
    assert ya.shape == (1, channels, 16 * scale, 16 * scale)
    assert torch.equal(ya, yb)
    torch.testing.assert_close(ya, expected)


def test_size_requirements_and_tiling_hints(tmp_path):
    torch.manual_seed(0)
    x2 = community.load(_save_both(tmp_path, "x2", CASES["rrdb_x2"][0]())[0])
    assert (x2.minimum, x2.multiple_of, x2.square, x2.tiling) == (4, 4, False, "supported") and "unshuffle" in x2.tags
    swin = community.load(_save_both(tmp_path, "swin", CASES["swinir"][0]())[0])
    assert (swin.minimum, swin.multiple_of, swin.tiling) == (16, 1, "discouraged")
    compact = community.load(_save_both(tmp_path, "compact", CASES["compact"][0]())[0])
    assert (compact.minimum, compact.multiple_of, compact.tiling) == (1, 1, "supported")
    assert compact.architecture_name == "RealESRGAN Compact" and compact.tags == ("16nf", "2nc")


def test_spandrel_call_function_is_kept(tmp_path):
    # FDnCNN takes a noise-level plane beside the image; spandrel adds it in its call function.
    torch.manual_seed(0)
    net = DnCNN(in_nc=4, out_nc=3, nc=8, nb=4, act_mode="BR", mode="FDnCNN").eval()
    m = community.load(_save_both(tmp_path, "fdncnn", net)[0])
    assert (m.architecture_id, m.scale, m.input_channels, m.purpose) == ("DnCNN", 1, 3, "Restoration")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(torch.cat([x, torch.full((1, 1, 16, 16), 15 / 255)], dim=1))
        torch.testing.assert_close(m.module(x), expected)


def test_a_network_whose_code_takes_one_image_at_a_time_runs_batches_image_by_image(tmp_path):
    """FDnCNN's noise plane is built for batch 1, and SeemoRe's forward fails above it: a grey model on
    a colour image (three planes), `--alpha model` or `--batch 2` failed the whole image."""
    from spandrel.architectures.SeemoRe import SeemoRe

    torch.manual_seed(0)
    for name, net in (("fdncnn", DnCNN(in_nc=4, out_nc=3, nc=8, nb=4, act_mode="BR", mode="FDnCNN")),
                      ("seemore", SeemoRe(scale=2, embedding_dim=16, num_layers=1, num_experts=2))):
        m = community.load(_save_both(tmp_path, name, net.eval())[0])
        x = torch.rand(3, 3, 16, 16)
        with torch.no_grad():
            one_by_one = torch.cat([m.module(x[i:i + 1]) for i in range(3)])
            torch.testing.assert_close(m.module(x), one_by_one, msg=name)
        assert m.module.one_at_a_time, name
    m = community.load(_save_both(tmp_path, "compact", CASES["compact"][0]().eval())[0])
    assert not getattr(m.module, "one_at_a_time", False)  # batches as they are where the network takes them


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    torch.manual_seed(0)
    tensors = _tensors(CASES["compact"][0]())
    path = tmp_path / "wrapped.pth"
    torch.save({"params_ema": tensors, "iter": 1000}, path)
    assert community.load(path).architecture_id == "Compact"
    path = tmp_path / "trainer.ckpt"   # a training checkpoint of a DataParallel model
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3}, path)
    assert community.load(path).architecture_id == "Compact"


class _Touch:
    """Unpickled, this creates `path`: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    live_marker = tmp_path / "proof"
    torch.save({"w": torch.zeros(1), "x": _Touch(live_marker)}, tmp_path / "live.pth")
    torch.load(tmp_path / "live.pth", weights_only=False)   # what plain unpickling would do
    assert live_marker.exists()

    marker = tmp_path / "never"
    torch.save({"w": torch.zeros(1), "x": _Touch(marker)}, tmp_path / "evil.pth")
    (tmp_path / "evil_raw.ckpt").write_bytes(pickle.dumps(_Touch(marker), protocol=2))
    # protocol 4 goes to spandrel's restricted unpickler (torch's weights-only one lacks its FRAME opcode)
    torch.save({"w": torch.zeros(1), "x": _Touch(marker)}, tmp_path / "evil_p4.pth", pickle_protocol=4)
    (tmp_path / "evil_raw_p4.pth").write_bytes(pickle.dumps(_Touch(marker), protocol=4))
    for name in ("evil.pth", "evil_raw.ckpt", "evil_p4.pth", "evil_raw_p4.pth"):
        message = _refusal(tmp_path / name)
        assert "refused: the file's pickle names" in message and "not weights" in message
    assert not marker.exists()


def test_a_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Conv2d(3, 3, 3), path)
    assert "pickle names torch.nn.modules.conv.Conv2d" in _refusal(path)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_is_refused_without_loading_it(tmp_path, monkeypatch):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Conv2d(3, 3, 3)).save(str(path))

    def jit_load(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", jit_load)
    assert "TorchScript files are not supported" in _refusal(path)


def test_a_state_dict_saved_with_pickle_protocol_4_loads(tmp_path, recwarn):
    tensors = _tensors(CASES["compact"][0]())
    for legacy in (False, True):
        path = tmp_path / f"p4-{legacy}.pth"
        torch.save(tensors, path, pickle_protocol=4, _use_new_zipfile_serialization=not legacy)
        module = community.load(path).module
        assert all(torch.equal(module.state_dict()[k], v) for k, v in tensors.items())
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # nothing but one line is ever printed


def test_a_plain_state_dict_pt_loads(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(_tensors(CASES["compact"][0]()), path)
    assert community.load(path).architecture_id == "Compact"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_are_refused(tmp_path, suffix):
    st, pth = _save_both(tmp_path, "whole", CASES["compact"][0]())
    data = (st if suffix == ".safetensors" else pth).read_bytes()
    for cut in (len(data) // 2, 40):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        assert "corrupt or truncated model file" in _refusal(path)


def test_legacy_pickle_truncated_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(_tensors(CASES["compact"][0]()), path, _use_new_zipfile_serialization=False)
    assert community.load(path).architecture_id == "Compact"
    data = path.read_bytes()
    # cut in its header records, torch's reader fails in struct (a buffer of 4 or 2 bytes too short)
    for cut in (300, 30, 19, 53):
        path.write_bytes(data[:cut])
        assert "corrupt or truncated model file" in _refusal(path)


def test_legacy_pickle_naming_a_storage_it_never_defined_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(_tensors(CASES["compact"][0]()), path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    key = re.search(rb"X.\x00\x00\x00(\d{6,})", bytes(data)).group(1)  # a storage key, as the data pickle has it
    at = bytes(data).rfind(key)  # its copy in the storage list after the data
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    path.write_bytes(bytes(data))
    assert "corrupt or truncated model file (storage key" in _refusal(path)


def test_a_zip_version_python_s_zipfile_refuses_still_loads(tmp_path):
    """torch reads a .pth whose zip directory asks for a newer "version needed to extract"; the
    TorchScript check (Python's zipfile, which raises NotImplementedError there) must not stop it."""
    path = tmp_path / "zip.pth"
    torch.save(_tensors(CASES["compact"][0]()), path)
    data = bytearray(path.read_bytes())
    directory = bytes(data).find(b"PK\x01\x02")
    data[directory + 6:directory + 8] = (255).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    assert community.load(path).architecture_id == "Compact"


def test_nan_weights_are_refused(tmp_path):
    """Weights of NaN give an all-black image for every input: refused when the file is read."""
    model = CASES["compact"][0]()
    path = tmp_path / "nan.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in _tensors(model).items()}, str(path))
    assert "model gives NaN or infinite values for a 8x8 test image (broken weights)" in _refusal(path)


@pytest.mark.parametrize("suffix", community.SUFFIXES)
def test_random_bytes_are_refused(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(os.urandom(4096))
    assert "corrupt or truncated model file" in _refusal(path)
    # an opcode torch's unpickler lacks, then a string length past any size: the restricted one overflows
    path.write_bytes(b"\x80\x04\x8d" + (2**63).to_bytes(8, "little"))
    assert "corrupt or truncated model file" in _refusal(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    assert "holds a list, not a state dict" in _refusal(path)


def test_no_architecture_matches_lists_families(tmp_path, fresh_registry):
    path = tmp_path / "unknown.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(path))
    message = _refusal(path)
    assert "no supported architecture matches" in message and community.SUPPORTED_FAMILIES in message
    assert "--allow-noncommercial" in message and "pip install spandrel_extra_arches" in message


def test_srtrt_checkpoint_is_not_community(tmp_path):
    torch.manual_seed(0)
    config = SRResNetConfig(scale=4, blocks=1, channels=8)
    weights = checkpoint.save(tmp_path / "own", SRResNet(config).eval(), "srresnet", config)
    assert not community.is_community_file(weights)
    assert "no supported architecture matches" in _refusal(weights)   # spandrel knows no SRResNet

    sidecar = weights.with_suffix(".json")
    sidecar.write_text(sidecar.read_text()[:60])    # a damaged srtrt sidecar is still srtrt's
    assert not community.is_community_file(weights)


def test_a_pickle_beside_an_srtrt_checkpoint_of_its_name_is_the_pickle(tmp_path):
    """`--model model.pth` ran model.safetensors (an srtrt checkpoint beside it) without a word."""
    import srtrt

    torch.manual_seed(0)
    config = SRResNetConfig(scale=4, blocks=1, channels=8)
    checkpoint.save(tmp_path / "model", SRResNet(config).eval(), "srresnet", config)
    torch.save(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(), tmp_path / "model.pth")
    assert srtrt.load_model(str(tmp_path / "model.pth")).scale == 2
    assert srtrt.load_model(str(tmp_path / "model.safetensors")).scale == 4


def test_is_community_file(tmp_path):
    for suffix in (".pth", ".ckpt", ".pt", ".safetensors", ".PTH"):
        assert community.is_community_file(tmp_path / f"m{suffix}")
    assert not community.is_community_file(tmp_path / "m.onnx")
    assert not community.is_community_file(tmp_path / "m")
    (tmp_path / "zoo.json").write_text(json.dumps({"name": "4x-something", "scale": 4}))
    assert community.is_community_file(tmp_path / "zoo.pth")


def test_supported_families_come_from_spandrel():
    names = {s.architecture.name for s in spandrel.MAIN_REGISTRY
             if type(s.architecture).__module__.startswith("spandrel.")}
    families = community.SUPPORTED_FAMILIES
    # less those refused for every file (faces, inpainting, square inputs only): listing them would invite them
    assert isinstance(families, str) and set(families.split(", ")) == names - community.REFUSED_FAMILIES
    assert not {"GFPGAN", "LaMa", "Uformer"} & set(families.split(", "))
    assert {"ESRGAN", "SwinIR", "RealESRGAN Compact", "SPAN", "RCAN"} <= names


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    tensors = _tensors(CASES["compact"][0]())
    tensors["body.2.weight"] = torch.zeros(5, 5, 3, 3)
    path = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(path))
    message = _refusal(path)
    assert "looks like RealESRGAN Compact, but its weights do not load" in message
    assert "size mismatch for body.2.weight" in message


def test_scale_and_channel_limits(tmp_path):
    torch.manual_seed(0)
    x16 = _save_both(tmp_path, "x16", Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=1, upscale=16))[0]
    assert "scale 16: srtrt runs scales 1 to 8" in _refusal(x16)
    rgba = _save_both(tmp_path, "rgba", Compact(num_in_ch=4, num_out_ch=4, num_feat=8, num_conv=1, upscale=2))[0]
    assert "maps 4 channels to 4" in _refusal(rgba)


class _FakeArch(spandrel.Architecture):
    """A stand-in for architectures too big to build here (GFPGAN, LaMa): a small Compact
    network described the way spandrel describes a face or inpainting model."""

    def __init__(self, purpose: str, arch_id: str = "Fake"):
        super().__init__(id=arch_id, name=f"{arch_id} net", detect=lambda state: "fake_marker" in state)
        self.purpose = purpose

    def load(self, state_dict):
        net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=1, upscale=4)
        facts = dict(architecture=self, tags=[], supports_half=True, supports_bfloat16=True, input_channels=3,
                     output_channels=3)
        if self.purpose == "Inpainting":
            return spandrel.MaskedImageModelDescriptor(net, net.state_dict(), purpose="Inpainting", **facts)
        return spandrel.ImageModelDescriptor(net, net.state_dict(), purpose=self.purpose, scale=4, **facts)


def _fake_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "fake.safetensors"
    save_file({"fake_marker": torch.zeros(1)}, str(path))
    return path


@pytest.mark.parametrize("purpose, words", [("FaceSR", "is a face restoration model"),
                                             ("Inpainting", "is an inpainting model")])
def test_other_purposes_are_refused(tmp_path, monkeypatch, purpose, words):
    registry = spandrel.ArchRegistry()
    registry.add(spandrel.ArchSupport.from_architecture(_FakeArch(purpose)))
    monkeypatch.setattr(community, "_registry", lambda allow_noncommercial: registry)
    message = _refusal(_fake_file(tmp_path))
    assert words in message and "not super-resolution" in message


@pytest.mark.slow
def test_real_inpainting_model_is_refused(tmp_path):
    from spandrel.architectures.LaMa import LaMa  # 51M parameters: ~5 s to build, save and refuse

    path = tmp_path / "lama.safetensors"
    save_file(_tensors(LaMa(in_nc=4, out_nc=3)), str(path))
    assert "is an inpainting model (LaMa: MaskedImageModelDescriptor" in _refusal(path)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # Uformer's constructor
def test_a_model_that_takes_square_inputs_only_is_refused(tmp_path):
    """Uformer's windows must be square; a tile of a wide image is not, so it is one line at load."""
    from spandrel.architectures.Uformer import Uformer

    path = tmp_path / "uformer.safetensors"
    save_file(_tensors(Uformer(embed_dim=8, depths=[1] * 9, num_heads=[1] * 9)), str(path))
    assert "Uformer takes square inputs only" in _refusal(path)


def test_noncommercial_needs_opt_in(tmp_path, monkeypatch, fresh_registry):
    extra = spandrel.ArchRegistry()
    extra.add(spandrel.ArchSupport.from_architecture(_FakeArch("SR", "NonCommercial")))
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", types.SimpleNamespace(EXTRA_REGISTRY=extra))
    before = len(spandrel.MAIN_REGISTRY)
    path = _fake_file(tmp_path)

    message = _refusal(path)
    assert "NonCommercial net model, a non-commercial architecture" in message and "--allow-noncommercial" in message
    m = community.load(path, allow_noncommercial=True)
    assert (m.architecture_id, m.scale) == ("NonCommercial", 4)
    assert len(spandrel.MAIN_REGISTRY) == before and "NonCommercial" not in spandrel.MAIN_REGISTRY


def test_opt_in_without_the_package_says_how(tmp_path, monkeypatch, fresh_registry):
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)   # import fails
    path = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, path)
    message = _refusal(path, allow_noncommercial=True)
    assert "pip install spandrel_extra_arches" in message and "--allow-noncommercial" not in message


class _Blocked(Exception):
    """Not an OSError, which the code under test may catch."""


@contextlib.contextmanager
def _within(seconds: int):
    """Fails a step that blocks (a FIFO's open waits for a writer forever) instead of hanging the run."""
    def expired(signum, frame):
        raise _Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _memory_capped(more: int = 1 << 30):
    """Address space capped at what the process has plus `more`: a read without end fails with
    MemoryError instead of taking the machine's memory."""
    import resource

    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[0])
    previous = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (pages * os.sysconf("SC_PAGE_SIZE") + more, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def test_a_sidecar_that_is_no_regular_file_is_never_read(tmp_path):
    """NAME.json beside a .safetensors was read whole before any check: a FIFO blocked for ever (srtrt
    serve's model listing too), a link to /dev/zero grew memory without end. srtrt writes regular files."""
    model, sidecar = tmp_path / "m.safetensors", tmp_path / "m.json"
    save_file(_tensors(CASES["compact"][0]()), str(model))
    os.mkfifo(sidecar)
    with _within(5):
        assert community.is_community_file(model)
        assert community.load(model).architecture_id == "Compact"
    sidecar.unlink()
    sidecar.symlink_to("/dev/zero")
    with _within(5), _memory_capped():
        assert community.is_community_file(model)
    sidecar.unlink()
    sidecar.mkdir()
    assert community.is_community_file(model)


def test_a_long_sidecar_is_read_only_up_to_the_bound(tmp_path):
    model, sidecar = tmp_path / "m.safetensors", tmp_path / "m.json"
    sidecar.write_bytes(b'{"name": "' + b"x" * (16 << 20) + b'"}')  # 16 MiB: a zoo's JSON, not srtrt's
    tracemalloc.start()
    try:
        assert community.is_community_file(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the bound is 1 MiB
    sidecar.write_text(json.dumps({"format": checkpoint.FORMAT, "notes": "x" * (4 << 20)}))
    assert not community.is_community_file(model)  # srtrt's by its head: srtrt's loader judges the rest


@pytest.mark.parametrize("value", ["[" * 100_000, "9" * 5000], ids=["deep-nesting", "5000-digit-integer"])
def test_a_sidecar_past_the_json_parser_s_limits_is_judged_by_its_bytes(tmp_path, value):
    """json.loads raises RecursionError and ValueError there, not JSONDecodeError: they escaped as tracebacks."""
    model, sidecar = tmp_path / "m.safetensors", tmp_path / "m.json"
    sidecar.write_text(f'{{"name": {value}}}')
    assert community.is_community_file(model)
    sidecar.write_text(f'{{"format": "{checkpoint.FORMAT}", "notes": {value}}}')
    assert not community.is_community_file(model)  # a damaged srtrt sidecar is still srtrt's


def test_a_path_that_is_no_regular_file_says_what_it_is(tmp_path):
    """A FIFO named x.pth and a link loop were "model file not found"; read, the FIFO would block for ever."""
    fifo, loop, folder = tmp_path / "pipe.pth", tmp_path / "loop.safetensors", tmp_path / "folder.pth"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    folder.mkdir()
    with _within(5):
        assert _refusal(fifo).endswith(": is a FIFO (named pipe), not a model file")
        assert _refusal(loop).endswith(": cannot read the model file (Too many levels of symbolic links)")
        assert _refusal(folder).endswith(": is a folder, not a model file")
        assert _refusal(tmp_path / "none.pth").endswith(": model file not found")
    # the same through srtrt.load_model, as `--model` takes them (it said "checkpoint file not found")
    import srtrt

    with _within(5):
        for path, cause in ((fifo, "is a FIFO (named pipe), not a model file"),
                            (loop, "cannot read the model file (Too many levels of symbolic links)")):
            with pytest.raises(SrtrtError) as refused:
                srtrt.load_model(str(path))
            assert str(refused.value) == f"{path}: {cause}"


_UNREADABLE_CHILD = """
import sys
from pathlib import Path
from srtrt import community
from srtrt.errors import SrtrtError
folder = Path(sys.argv[1])
try:
    open(folder / "noread.pth", "rb").close()
    sys.exit("SKIP: this process reads a file of mode 000")
except PermissionError:
    pass
for name in ("noread.safetensors", "noread.pth"):
    try:
        community.load(folder / name)
    except SrtrtError as e:
        print(e)
print("community:", community.is_community_file(folder / "own.safetensors"))
"""


def test_a_file_this_process_may_not_read_says_so(tmp_path):
    """An unreadable .safetensors said "corrupt or truncated model file (No such file or directory)", a .pth
    "corrupt or truncated"; an srtrt checkpoint whose sidecar could not be read was taken for a community
    file ("no supported architecture matches"): its loader now names the sidecar."""
    st, pth = _save_both(tmp_path, "noread", CASES["compact"][0]())
    config = SRResNetConfig(scale=4, blocks=1, channels=8)
    own = checkpoint.save(tmp_path / "own", SRResNet(config).eval(), "srresnet", config)
    for path in (st, pth, own.with_suffix(".json")):
        path.chmod(0)
    command = [sys.executable, "-c", _UNREADABLE_CHILD, str(tmp_path)]
    from run_helpers import without_dac_override

    command = without_dac_override(command)  # root reads any file
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    if done.returncode != 0 and ("SKIP" in done.stderr or done.stderr.startswith("setpriv")):
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{st}: cannot read the model file (Permission denied)",
                                        f"{pth}: cannot read the model file (Permission denied)",
                                        "community: False"]


def test_a_legacy_pickle_cut_inside_a_global_s_name_is_called_truncated_not_hostile(tmp_path):
    """Cut at byte 200, a legacy .pth ended inside "ctorch._utils\\n_rebuild_tensor_v2": torch's unpickler
    read the global "torch._." and the file was called a pickle naming what is not weights."""
    path = tmp_path / "legacy.pth"
    torch.save(_tensors(CASES["compact"][0]()), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    first_global = data.index(b"ctorch\n")
    for cut in range(first_global + 1, first_global + 40):
        path.write_bytes(data[:cut])
        assert "corrupt or truncated model file" in _refusal(path), cut
    cut = data.index(b"ctorch._utils\n") + 4
    path.write_bytes(data[:cut])
    assert _refusal(path).endswith("corrupt or truncated model file (its pickle ends early)")

    marker = tmp_path / "never"  # a whole legacy pickle naming code is still called what it is
    torch.save({"w": torch.zeros(1), "x": _Touch(marker)}, path, _use_new_zipfile_serialization=False)
    assert "refused: the file's pickle names" in _refusal(path) and not marker.exists()


def test_a_zip_record_inflating_far_past_the_file_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    """torch.save stores records uncompressed; a 3 MB .pth holding a record of 3 GB of deflated zeros was
    inflated whole by torch.load. Its zip directory declares the sizes: refused from there."""
    plain, deflated, bomb = tmp_path / "plain.pth", tmp_path / "deflated.pth", tmp_path / "bomb.pth"
    torch.save(_tensors(CASES["compact"][0]()), plain)
    with zipfile.ZipFile(plain) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    for path, padding in ((deflated, 0), (bomb, 32 << 20)):  # 32 MiB of zeros: about 32 kB deflated
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in records:
                z.writestr(name, data + bytes(padding) if name.endswith("/data/0") else data)
    assert community.load(deflated).architecture_id == "Compact"  # compressed as weights compress: read
    assert bomb.stat().st_size < 1 << 20

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    message = _refusal(bomb)
    assert re.search(r"refused: its zip records declare 32\.\d MiB in a file of \d+ KiB \(.*a zip bomb", message), message


def _zero_sized_compact(path: pathlib.Path, num_feat: int, num_conv: int, every_layer: bool) -> pathlib.Path:
    """A Compact file whose tensors hold nothing, but whose shapes and key names describe `num_conv`
    convolutions of `num_feat` channels: spandrel sizes the network by them (num_feat from body.0.weight,
    num_conv from the highest body.N)."""
    highest = 2 * num_conv + 2
    tensors = {"body.0.weight": torch.empty(num_feat, 3, 0, 3), f"body.{highest}.bias": torch.empty(48, 0)}
    for i in range(1, highest if every_layer else 2):
        tensors[f"body.{i}.weight"] = torch.empty(0)
    save_file(tensors, str(path))
    return path


def _counted_convs(monkeypatch) -> list:
    built = []
    init = torch.nn.Conv2d.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", counted)
    return built


def test_a_key_numbering_absent_layers_is_refused_before_any_layer_is_built(tmp_path, monkeypatch):
    """242 bytes (body.0.weight of shape [256, 3, 0, 3], body.502.bias) had spandrel build and initialise
    250 convolutions of 256 channels, 1.4 GB, before load_state_dict refused them; with body.200000002.bias
    it ran out of memory. 3 keys cannot hold layer 202."""
    path = _zero_sized_compact(tmp_path / "bomb.safetensors", 256, 100, every_layer=False)
    assert path.stat().st_size < 400
    built = _counted_convs(monkeypatch)
    assert "refused: a key numbers layer 202, but the file holds only 3 tensors" in _refusal(path)
    assert built == []


def test_a_network_far_larger_than_the_file_s_weights_is_refused_while_built(tmp_path, monkeypatch):
    """With a zero-sized tensor for every layer, 100 convolutions of 256 channels (236 MB) from 10 kB: the
    build stops when its tensors would pass BUILD_FACTOR x the file's weights + BUILD_SLACK (set to 64 MiB
    here, so the test builds little before the refusal)."""
    monkeypatch.setattr(community, "BUILD_SLACK", 64 << 20)
    path = _zero_sized_compact(tmp_path / "bomb.safetensors", 256, 100, every_layer=True)
    built = _counted_convs(monkeypatch)
    message = _refusal(path)
    assert ("refused: the RealESRGAN Compact network its shapes and key names describe takes more than 64.0 MiB, "
            "far beyond the 0 bytes of weights the file holds") in message
    assert len(built) <= community.BUILD_SLACK // (256 * 256 * 9 * 4) + 2  # of the 101 it describes


def test_the_build_budget_refuses_an_allocation_before_it_is_made(monkeypatch):
    monkeypatch.setattr(community, "BUILD_SLACK", 64 << 20)  # so that two 40 MiB tensors pass it
    budget = community._BuildBudget(weights=0)
    with pytest.raises(community._BuildTooLarge), budget:  # 32 TiB: the allocator would raise RuntimeError
        torch.empty(1 << 45, dtype=torch.uint8)
    with pytest.raises(community._BuildTooLarge), community._BuildBudget(weights=0):
        rows = torch.arange(1 << 22)  # broadcast to 2^44 differences, as a relative position index is made
        rows[:, None] - rows[None, :]
    with community._BuildBudget(weights=0):  # what is freed is no longer held
        for _ in range(4):
            torch.zeros(40 << 20, dtype=torch.uint8)
    with pytest.raises(community._BuildTooLarge), community._BuildBudget(weights=0):
        kept = [torch.zeros(40 << 20, dtype=torch.uint8) for _ in range(2)]
        del kept


def test_a_file_missing_most_of_its_layers_is_one_short_line(tmp_path):
    """load_state_dict names every missing key; its whole list made a refusal line of 13-27 kB."""
    tensors = _tensors(Compact(num_in_ch=3, num_out_ch=3, num_feat=4, num_conv=40, upscale=4))
    path = tmp_path / "sparse.safetensors"
    save_file({k: v for k, v in tensors.items() if k.split(".")[1] in ("0", "1", "82")}, str(path))
    message = _refusal(path)
    assert "looks like RealESRGAN Compact, but its weights do not load" in message
    first_three = r'"body\.2\.weight", "body\.2\.bias", "body\.3\.weight", \.\.\.\)$'
    assert re.search(r"Missing key\(s\) in state_dict: \d+ keys, " + first_three, message), message
    assert len(message) < 400
