"""TensorRT engines: profile, cache and sidecar, `srtrt build` without TensorRT, the ONNX the
builder gets, the plugin against the real `tensorrt.plugin` sources, the TensorRT names used.
(TensorRT-RTX, which builds here for real: tests/test_tensorrt_rtx.py.)

Everything except the `tensorrt`-marked tests runs on the CPU. The name and plugin checks
need TensorRT 11.4's Python bindings wheel (`tensorrt-cu13-bindings`, 1.3 MB, no libraries):
point SRTRT_TRT_BINDINGS at the .whl, at its unzipped folder or at its tensorrt.so; pip's
cache is searched too. Without it they skip; tests never download anything.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch

from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import EngineKey, Profile, profile_for
from srtrt.errors import SrtrtError

from conftest import DiskFillsAfter

ROOT = Path(__file__).resolve().parents[1]
OUR_SOURCES = {
    "srtrt.engine.toolchain.trt_build": ROOT / "engine" / "toolchain" / "trt_build.py",
    "srtrt.engine.backends.tensorrt_backend": ROOT / "engine" / "backends" / "tensorrt_backend.py",
    "srtrt.engine.backends.tensorrt_rtx_backend": ROOT / "engine" / "backends" / "tensorrt_rtx_backend.py",
    "srtrt.kernels.trt_plugin": ROOT / "kernels" / "trt_plugin.py",
}
H200, A100 = ("NVIDIA H200", (9, 0)), ("NVIDIA A100-SXM4-80GB", (8, 0))
SHA = "ab" * 32


def key(**over) -> EngineKey:
    base = dict(model_sha256=SHA, precision="fp16", profile=profile_for(592, 4), plugin="aot", margin=40,
                flavour="trt", trt_version="11.4.0.106", gpu_name=H200[0], compute_capabilities=(H200[1],))
    if "compute_capability" in over:
        over["compute_capabilities"] = (over.pop("compute_capability"),)
    base.update(over)
    return EngineKey(**base)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    return engine_cache.cache_dir()


# ---------------------------------------------------------------------------------------------
# profile and keys


def test_profile_from_window_and_batch():
    p = profile_for(592, 4)
    assert p.min == (1, 3, 1, 1)
    assert p.opt == p.max == (4, 3, 592, 592)
    assert p.window == (592, 592) and p.max_batch == 4
    q = profile_for((336, 400), 8, opt_batch=2, min_side=16)
    assert (q.min, q.opt, q.max) == ((1, 3, 16, 16), (2, 3, 336, 400), (8, 3, 336, 400))
    assert profile_for(8, 1, min_side=16).min == (1, 3, 8, 8)  # never above the window
    assert p.accepts((4, 3, 592, 592)) and p.accepts((1, 3, 17, 592))
    assert not p.accepts((5, 3, 592, 592)) and not p.accepts((1, 3, 593, 10))
    assert Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad in (lambda: profile_for(592, 0), lambda: profile_for(0, 1), lambda: profile_for(64, 2, opt_batch=3),
                lambda: Profile((1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 16, 16))):
        with pytest.raises(ValueError):
            bad()


def test_build_window_is_core_plus_two_margins():
    from srtrt.engine.datapath import tiles

    plan = tiles.plan(2000, 3000, 512, 40, balance=False)  # what the TensorRT backend asks for
    assert plan.window_shape == profile_for(512 + 2 * 40, 4).window


def test_key_round_trip_digest_and_stem():
    k = key()
    assert EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    assert k.gpu == "NVIDIA H200 (sm_90)"
    stem = k.stem()
    assert stem.startswith("abababababab-fp16-aot-b4-592x592-m40-nvidia-h200-sm90-trt11.4.0.106-")
    variants = [key(model_sha256="cd" * 32), key(precision="fp32"), key(profile=profile_for(592, 8)),
                key(profile=profile_for(336, 4)), key(plugin="jit"), key(plugin="none"), key(gpu_name=A100[0]),
                key(compute_capability=(9, 1)), key(trt_version="10.13.0.35"), key(margin=32),
                key(flavour="rtx", gpu_name="", compute_capabilities=(), trt_version="1.7.1.116")]
    digests = {v.digest() for v in variants} | {k.digest()}
    assert len(digests) == len(variants) + 1
    assert len({v.stem() for v in variants} | {stem}) == len(variants) + 1
    with pytest.raises(ValueError):
        key(precision="bf16")
    with pytest.raises(ValueError):
        key(plugin="cpp")
    with pytest.raises(ValueError, match="names the one GPU"):
        key(gpu_name="")  # a TensorRT plan is always for the GPU that built it
    with pytest.raises(ValueError):
        key(flavour="onnx")


def test_cache_dir_and_timing_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("SRTRT_CACHE", raising=False)
    assert engine_cache.cache_dir() == Path.home() / ".cache" / "srtrt" / "engines"
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    assert engine_cache.cache_dir() == tmp_path / "engines"
    t = engine_cache.timing_cache_path(*H200, "11.4.0.106")
    assert t.parent == tmp_path / "engines" and "sm90" in t.name and "11.4.0.106" in t.name


# ---------------------------------------------------------------------------------------------
# store, lookup, validation


def test_store_and_lookup(cache):
    k = key()
    assert engine_cache.lookup(k) is None
    path = engine_cache.store(k, b"plan bytes", {"scale": 4, "radius": 40})
    assert path.parent == cache and path.suffix == ".plan"
    assert engine_cache.lookup(k) == path
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["key"] == k.to_dict() and doc["plan_bytes"] == 10 and doc["radius"] == 40
    assert doc["version"] == 2 and doc["key"]["margin"] == 40 and doc["key"]["flavour"] == "trt"
    assert engine_cache.lookup(key(plugin="jit")) is None
    assert engine_cache.lookup(key(margin=8)) is None  # the margin the window was built for is part of the key
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*"))


@pytest.mark.parametrize("which", ["plan", "sidecar"])
def test_a_folder_in_a_cached_plans_place_is_replaced_by_the_plan(cache, which):
    """`store` spilled every build to a temporary folder (IsADirectoryError), blaming the writable
    root, and `srtrt build` exited 1 each time: the build's plan was lost for good."""
    k = key()
    where = engine_cache.plan_path(k)
    (where if which == "plan" else engine_cache.sidecar_path(where)).mkdir(parents=True)
    assert engine_cache.store(k, b"plan bytes", {"scale": 4, "radius": 40}) == where
    assert engine_cache.lookup(k) == where and where.read_bytes() == b"plan bytes"


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("built, message", [
    (dict(gpu_name=A100[0], compute_capability=A100[1]),
     "engine was built for NVIDIA A100-SXM4-80GB (sm_80), this GPU is NVIDIA H200 (sm_90): run `srtrt build` again"),
    (dict(compute_capability=(8, 9)), "engine was built for NVIDIA H200 (sm_89), this GPU is NVIDIA H200 (sm_90)"),
    (dict(trt_version="10.13.0.35"),
     "engine was built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106: run `srtrt build` again"),
    (dict(model_sha256="cd" * 32), "engine was built for model cdcdcdcdcdcd, not abababababab"),
    (dict(precision="fp32"), "engine is fp32, fp16 was asked"),
    (dict(profile=profile_for(336, 4)), "engine profile is batch <= 4, window 336x336"),
    (dict(plugin="jit"), "engine plugin mode is jit, wanted aot"),
    (dict(margin=20), "engine was built for margin 20, wanted 40: run `srtrt build --margin 40`"),
    (dict(flavour="rtx", gpu_name="", compute_capabilities=()), "engine is a TensorRT-RTX plan, a TensorRT one"),
    (dict(graph_sha256="cd" * 32), "engine was built from ONNX graph cdcdcdcdcdcd, wanted the checkpoint's own export"),
])
def test_validate_refuses_a_plan_built_for_something_else(cache, built, message):
    path = engine_cache.write_plan(cache / "copied.plan", key(**built), b"x" * 100)
    with pytest.raises(SrtrtError) as e:
        engine_cache.validate(path, key())
    text = _one_line(e.value)
    assert message in text and text.startswith(str(path))
    engine_cache.validate(path, key(**built))  # and accepted for what it was built for


def test_corrupt_and_truncated_plans_are_refused(cache):
    k = key()
    path = engine_cache.store(k, bytes(range(256)) * 40)
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SrtrtError, match="corrupt \\(sha256 differs"):
        engine_cache.lookup(k)
    path.write_bytes(bytes(data[:4096]))
    with pytest.raises(SrtrtError, match="truncated or corrupt \\(4096 bytes, the sidecar says 10240\\)"):
        engine_cache.lookup(k)


def test_missing_or_bad_sidecars_are_refused(cache):
    k = key()
    path = engine_cache.store(k, b"plan")
    side = path.with_suffix(".json")
    side.write_text("{not json")
    with pytest.raises(SrtrtError, match="not readable JSON"):
        engine_cache.validate(path)
    side.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SrtrtError, match="not an srtrt engine sidecar"):
        engine_cache.validate(path)
    side.write_text(json.dumps({"format": "srtrt-engine", "version": 1, "key": {"precision": "fp16"}}))
    with pytest.raises(SrtrtError, match="version 1 is not supported .*run `srtrt build` again"):
        engine_cache.validate(path)  # sidecars from before flavours and margins
    side.write_text(json.dumps({"format": "srtrt-engine", "version": 2, "key": {"precision": "fp16"}}))
    with pytest.raises(SrtrtError, match="bad key"):
        engine_cache.validate(path)
    side.unlink()
    with pytest.raises(SrtrtError, match="no sidecar"):
        _one_line(engine_cache.lookup(k))
    with pytest.raises(SrtrtError, match="engine plan not found"):
        engine_cache.validate(cache / "absent.plan")


def test_a_graph_given_as_onnx_is_part_of_the_key_and_earlier_keys_keep_their_digest(cache):
    from_checkpoint, from_graph = key(), key(graph_sha256="cd" * 32)  # one model, one I/O dtype
    assert from_checkpoint != from_graph and from_checkpoint.stem() != from_graph.stem()
    assert "graph_sha256" not in from_checkpoint.to_dict()  # plans cached before keep their names
    assert EngineKey.from_dict(json.loads(json.dumps(from_graph.to_dict()))) == from_graph
    engine_cache.store(from_checkpoint, b"the checkpoint's export")
    assert engine_cache.lookup(from_graph) is None


class _FullDisk(DiskFillsAfter):
    """DiskFillsAfter as srtrt.atomic opens a file: in a with block."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def test_a_rewrite_that_the_disk_cannot_take_leaves_the_earlier_plan_and_its_sidecar(cache, monkeypatch):
    from srtrt import atomic

    path = engine_cache.write_plan(cache / "copied.plan", key(), b"the earlier plan")
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    real_open = open
    for room in (0, 5000):  # full before the sidecar; room for the sidecar, not for the plan
        def open_on_a_full_disk(file, mode="r", *args, room=room, **kwargs):
            return _FullDisk(real_open(file, mode, *args, **kwargs), room)

        monkeypatch.setattr(atomic, "open", open_on_a_full_disk, raising=False)
        with pytest.raises(OSError, match="No space left"):
            engine_cache.write_plan(path, key(precision="fp32"), b"p" * 10_000)
        assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # no partial file either
    monkeypatch.delattr(atomic, "open")
    engine_cache.validate(path, key())


def test_find_picks_a_fitting_plan_and_explains_misses(cache):
    here = (*H200, "11.4.0.106")
    with pytest.raises(SrtrtError, match="no cached TensorRT engine for model abababababab \\(fp16\\) on NVIDIA H200"):
        engine_cache.find(SHA, "fp16", *here)
    a100 = engine_cache.store(key(gpu_name=A100[0], compute_capability=A100[1]), b"a100")
    with pytest.raises(SrtrtError) as e:
        engine_cache.find(SHA, "fp16", *here)
    assert _one_line(e.value) == ("engine was built for NVIDIA A100-SXM4-80GB (sm_80), this GPU is NVIDIA H200 "
                                  "(sm_90): run `srtrt build` again")
    old_trt = engine_cache.store(key(trt_version="10.13.0.35"), b"trt10")
    with pytest.raises(SrtrtError, match="built for NVIDIA A100"):
        engine_cache.find(SHA, "fp16", *here)
    a100.unlink()
    with pytest.raises(SrtrtError, match="built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106"):
        engine_cache.find(SHA, "fp16", *here)
    old_trt.unlink()

    b4 = engine_cache.store(key(), b"b4")
    b8 = engine_cache.store(key(profile=profile_for(592, 8), plugin="none"), b"b8")
    os.utime(b4, (1, 1))  # b8 is the newer one
    small = engine_cache.store(key(profile=profile_for(336, 2)), b"small")
    os.utime(small, (0, 0))
    assert engine_cache.find(SHA, "fp16", *here) == b8                       # newest
    assert engine_cache.find(SHA, "fp16", *here, window=592, max_batch=3) == b4  # smallest batch that fits
    assert engine_cache.find(SHA, "fp16", *here, window=592, max_batch=5) == b8
    assert engine_cache.find(SHA, "fp16", *here, window=(336, 336)) == small
    assert engine_cache.find(SHA, "fp16", *here, plugin="aot", max_batch=1) == b4
    with pytest.raises(SrtrtError, match="no cached TensorRT engine for this model with fp16, window 400x400"):
        engine_cache.find(SHA, "fp16", *here, window=400)
    with pytest.raises(SrtrtError, match="run `srtrt build --precision fp32`"):
        engine_cache.find(SHA, "fp32", *here)
    b4.write_bytes(b"b5")  # same size, other bytes: found, then refused
    with pytest.raises(SrtrtError, match="corrupt"):
        engine_cache.find(SHA, "fp16", *here, window=592, max_batch=4, plugin="aot")


def test_find_runs_the_models_own_plan_before_one_built_from_an_onnx_graph(cache):
    """A plan built with `--onnx` (an int8 QDQ or edited graph of the same weights, keyed by the
    graph's sha256) was taken over the model's own plan whenever it was the newer one: `auto` then
    ran a graph nobody asked for. It is run only where the model's own was not built."""
    here = (*H200, "11.4.0.106")
    graph = engine_cache.store(key(graph_sha256="cd" * 32), b"qdq")
    assert engine_cache.find(SHA, "fp16", *here) == graph  # nothing else built: the graph's plan runs
    own = engine_cache.store(key(), b"own")
    os.utime(own, (1, 1))  # the graph's plan is the newer one
    assert engine_cache.find(SHA, "fp16", *here) == own
    assert engine_cache.find(SHA, "fp16", *here, window=592, max_batch=4) == own


# ---------------------------------------------------------------------------------------------
# without TensorRT or without a GPU


def _fake_tensorrt(version: str, **attrs) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Builder = object
    for k, v in attrs.items():
        setattr(trt, k, v)
    return trt


def test_build_without_tensorrt_is_one_line(monkeypatch, capsys, cache):
    from srtrt import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # (auto falls back to TensorRT-RTX)
    rc = cli.main(["build", "--precision", "fp16", "--tile", "256"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("srtrt: TensorRT is not installed (") and " and TensorRT-RTX is not installed (" in err
    assert 'pip install "srtrt[tensorrt]" on a machine with a CUDA GPU' in err
    assert 'pip install "srtrt[tensorrt-rtx]" (builds need no GPU)' in err
    rc = cli.main(["build", "--tensorrt", "trt"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("srtrt: TensorRT is not installed (") and len(err.strip().splitlines()) == 1
    assert not cache.exists()


def test_build_without_gpu_is_one_line(monkeypatch, capsys):
    from srtrt import cli

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("11.4.0.106"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = cli.main(["build", "--onnx", "model.onnx", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "no CUDA GPU is visible" in err and 'pip install "srtrt[tensorrt]"' in err


def test_backend_availability_and_cache_lookup_without_tensorrt(monkeypatch):
    from srtrt.engine.backends import tensorrt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, why = tensorrt_backend.available()
    assert ok is False and why.startswith("TensorRT is not installed") and "\n" not in why
    with pytest.raises(SrtrtError, match="TensorRT is not installed"):
        tensorrt_backend.TensorRTBackend.from_cache(SHA, "fp16", "cuda")
    with pytest.raises(SrtrtError, match="fp16 or fp32, not bf16"):
        tensorrt_backend.TensorRTBackend.from_cache(SHA, "bf16", "cuda")


def test_engine_lookup_for_a_model_with_no_file_is_one_line(monkeypatch):
    from srtrt.engine.backends import _tensorrt

    from conftest import random_view

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SrtrtError) as e:  # keyed by its weights' hash: no AttributeError
        _tensorrt(random_view(blocks=1, channels=8), torch.device("cuda"), "fp16")
    assert "\n" not in _one_line(e.value)


def test_backend_selection_without_a_gpu_names_both_flavours_in_one_line(monkeypatch):
    from srtrt.engine.backends import _tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    view = types.SimpleNamespace(checkpoint_sha256=SHA)
    with pytest.raises(SrtrtError) as e:
        _tensorrt(view, torch.device("cuda"), "fp16")
    text = _one_line(e.value)
    assert text.startswith("TensorRT is not installed") and "; " in text
    assert "TensorRT-RTX" in text.split("; ", 1)[1]


def test_network_flags_strongly_typed_on_10_only():
    from srtrt.engine.toolchain.trt_build import network_flags

    flag = types.SimpleNamespace(STRONGLY_TYPED=5)
    assert network_flags(_fake_tensorrt("10.13.0.35", NetworkDefinitionCreationFlag=flag)) == 1 << 5
    assert network_flags(_fake_tensorrt("11.4.0.106", NetworkDefinitionCreationFlag=flag)) == 0
    assert network_flags(_fake_tensorrt("10.8.0", NetworkDefinitionCreationFlag=types.SimpleNamespace())) == 0


def test_sources_never_use_the_fp16_builder_flag_or_import_tensorrt_at_module_level():
    for name, path in OUR_SOURCES.items():
        src = path.read_text()
        assert "BuilderFlag" not in src, name
        for node in ast.parse(src).body:  # top-level statements only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("tensorrt", "tensorrt_rtx") for m in mods), \
                    f"{name} imports tensorrt eagerly"
    code = "import sys; import srtrt.engine.toolchain.trt_build, srtrt.kernels.trt_plugin, " \
           "srtrt.engine.backends.tensorrt_backend, srtrt.engine.backends.tensorrt_rtx_backend; " \
           "print('tensorrt' in sys.modules or 'tensorrt_rtx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------------------------
# the ONNX handed to the builder


def _toy_plugin_model(aot_values):
    import onnx
    from onnx import TensorProto, helper

    nodes = []
    for i, aot in enumerate(aot_values):
        attrs = dict(upscale=2, plugin_namespace="srtrt")
        if aot is not None:
            attrs["aot"] = aot
        nodes.append(helper.make_node("PixelShufflePReLU", [f"t{i}", "a"], [f"t{i + 1}"], domain="srtrt", **attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT16, [1, 16, 4, 4])],
                              [helper.make_tensor_value_info(f"t{len(nodes)}", TensorProto.FLOAT16, None)],
                              [helper.make_tensor("a", TensorProto.FLOAT16, [4], [0.25] * 4)])
    return onnx.helper.make_model(graph)


def test_plugin_mode_of_a_graph():
    from srtrt.engine.toolchain.trt_build import onnx_precision, plugin_mode, set_plugin_mode

    pytest.importorskip("onnx")
    assert plugin_mode(_toy_plugin_model([])) == "none"
    assert plugin_mode(_toy_plugin_model([1, 1])) == "aot"
    assert plugin_mode(_toy_plugin_model([0])) == "jit"
    assert plugin_mode(_toy_plugin_model([0, 1])) == "unset"
    m = _toy_plugin_model([None, 1])
    assert plugin_mode(m) == "unset"
    set_plugin_mode(m, "jit")
    assert plugin_mode(m) == "jit"
    attrs = {a.name for a in m.graph.node[0].attribute}
    assert attrs == {"upscale", "aot", "plugin_namespace", "plugin_version"}
    assert onnx_precision(m) == "fp16"


@pytest.fixture(scope="module")
def export_module():
    pytest.importorskip("onnxscript")
    return importlib.import_module("srtrt.engine.toolchain.export")


def _elem(value) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)


def test_an_aot_profile_past_the_kernels_int32_indexing_is_refused_before_building(tmp_path, tiny_checkpoint,
                                                                                      export_module):
    """The AOT plugin runs one kernel over a fused node's whole output with int32 offsets: a
    default-model build with --max-batch 6 (64 channels x 2368² at the last step, 2.15e9 elements)
    built, and its engine would write nothing. The build says so first, with the batch that fits."""
    import srtrt
    from srtrt.engine.toolchain.trt_build import _check_aot_index_range, prepare_onnx, view_facts

    _, facts = prepare_onnx(tmp_path, model=str(tiny_checkpoint), precision="fp16", plugin="aot")
    assert facts["fused_channels"] == 8  # the tiny model's width, read from the graph's last fused node
    (tmp_path / "again").mkdir()
    path, _ = prepare_onnx(tmp_path, model=str(tiny_checkpoint), precision="fp16", plugin="aot")
    assert prepare_onnx(tmp_path / "again", onnx_path=str(path), plugin="aot")[1]["fused_channels"] == 8
    default = view_facts(srtrt.load_model(), None, "fp16", "aot")  # the embedded SRResNet: 64 channels
    assert default["fused_channels"] == 64
    _check_aot_index_range(default, profile_for(592, 5))  # 1.79e9 elements: fits
    with pytest.raises(SrtrtError) as e:
        _check_aot_index_range(default, profile_for(592, 6))
    assert _one_line(e.value) == ("the AOT plugin indexes in 32 bits, and a batch of 6 windows of 592x592 makes "
                                  "2,153,250,816 elements in the last upsample step (at most 2,147,483,647): "
                                  "build with --max-batch 5 or less")
    with pytest.raises(SrtrtError, match="build with a smaller --tile"):
        _check_aot_index_range(default, profile_for(6000, 1))
    _check_aot_index_range({**default, "plugin": "jit"}, profile_for(592, 6))  # JIT splits its launches


@pytest.mark.parametrize("precision, plugin", [("fp16", "aot"), ("fp32", "none")])
def test_onnx_for_the_builder_has_the_intended_dtypes_and_nodes(tmp_path, tiny_checkpoint, export_module,
                                                                 precision, plugin):
    import onnx

    from srtrt import checkpoint
    from srtrt.engine.toolchain.onnx_io import load_onnx
    from srtrt.engine.toolchain.trt_build import prepare_onnx

    path, facts = prepare_onnx(tmp_path, model=str(tiny_checkpoint), precision=precision, plugin=plugin)
    m = load_onnx(path)
    want = "FLOAT16" if precision == "fp16" else "FLOAT"
    assert [_elem(v) for v in (*m.graph.input, *m.graph.output)] == [want, want]
    assert facts["io"] == {"inputs": {"lr": want}, "outputs": {"sr": want}}
    weights = [onnx.TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer]
    assert set(weights) <= {want, "INT64"}, set(weights)
    fused = [n for n in m.graph.node if n.op_type == "PixelShufflePReLU"]
    ops = {n.op_type for n in m.graph.node}
    if plugin == "none":
        assert not fused and {"DepthToSpace", "PRelu"} <= ops
    else:
        assert len(fused) == 2 and "DepthToSpace" not in ops
        for n in fused:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["plugin_namespace"] == b"srtrt" and attrs["plugin_version"] == b"1"
            assert attrs["aot"] == 1 and attrs["upscale"] == 2
    assert facts["sha256"] == checkpoint.load(tiny_checkpoint).sha256
    assert (facts["precision"], facts["plugin"], facts["scale"]) == (precision, plugin, 4)

    # The same file handed in with --onnx: kept as is, its metadata names the model.
    (tmp_path / "again").mkdir()
    _, facts2 = prepare_onnx(tmp_path / "again", onnx_path=str(path), precision=precision, plugin="jit")
    assert (facts2["sha256"], facts2["plugin"], facts2["radius"]) == (facts["sha256"], plugin, facts["radius"])
    other = "fp32" if precision == "fp16" else "fp16"
    with pytest.raises(SrtrtError, match=f"the graph is {precision} but --precision {other} was asked"):
        prepare_onnx(tmp_path, onnx_path=str(path), precision=other)
    (tmp_path / "unasked").mkdir()  # `srtrt build --onnx F` without --precision: the graph's own, as TENSORRT.md says
    assert prepare_onnx(tmp_path / "unasked", onnx_path=str(path), precision=None)[1]["precision"] == precision
    if plugin != "none":  # --no-plugin on a fused file (or a flavour without the plugin): built unfused
        (tmp_path / "plain").mkdir()
        plain, facts3 = prepare_onnx(tmp_path / "plain", onnx_path=str(path), precision=precision, plugin="none")
        ops = [n.op_type for n in load_onnx(plain).graph.node]
        assert facts3["plugin"] == "none" and "PixelShufflePReLU" not in ops
        assert ops.count("DepthToSpace") == 2 and facts3["sha256"] == facts["sha256"]


# ---------------------------------------------------------------------------------------------
# TensorRT 11.4's Python bindings: the names we use, and the plugin against tensorrt.plugin


def _pip_cache_wheels():
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
                             timeout=60)
        root = Path(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return
    if not out.stdout.strip() or not root.is_dir():
        return
    yield from root.rglob("tensorrt*bindings*.whl")
    for body in root.rglob("*.body"):  # pip's HTTP cache keeps downloaded wheels as .body files
        if 500_000 < body.stat().st_size < 5_000_000 and zipfile.is_zipfile(body):
            yield body


def _bindings_source() -> Path | None:
    env = os.environ.get("SRTRT_TRT_BINDINGS")
    if env:
        return Path(env)
    for candidate in _pip_cache_wheels():
        with zipfile.ZipFile(candidate) as z:
            if "tensorrt_bindings/tensorrt.so" in z.namelist():
                return candidate
    return None


@pytest.fixture(scope="module")
def bindings(tmp_path_factory):
    """(tensorrt.so bytes, folder holding the plugin/ package sources) of TensorRT's bindings wheel."""
    src = _bindings_source()
    if src is None:
        pytest.skip("TensorRT bindings wheel not found (set SRTRT_TRT_BINDINGS to tensorrt_cu13_bindings-*.whl)")
    if not src.exists():
        pytest.skip(f"SRTRT_TRT_BINDINGS={src} does not exist")
    if src.is_file() and zipfile.is_zipfile(src):
        out = tmp_path_factory.mktemp("trt_bindings")
        with zipfile.ZipFile(src) as z:
            members = [n for n in z.namelist() if n == "tensorrt_bindings/tensorrt.so"
                       or (n.startswith("tensorrt_bindings/plugin/") and n.endswith(".py"))]
            z.extractall(out, members)
        src = out / "tensorrt_bindings"
    if src.is_file():  # the .so itself
        src = src.parent
    so = src / "tensorrt.so"
    if not so.is_file():
        so = next(iter(src.rglob("tensorrt*.so")), None)
        if so is None:
            pytest.skip(f"no tensorrt.so under {src}")
    return so.read_bytes(), so.parent


def _names_in(binary: bytes) -> set[str]:
    return {m.decode() for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{2,}", binary)}


def _exists(name: str, tokens: set[str], binary: bytes) -> bool:
    # The linker merges string tails, so "INPUT" can live only as the end of "CONDITIONAL_INPUT".
    return name in tokens or name.encode() + b"\0" in binary


def _trt_attributes(path: Path) -> set[str]:
    """Names reached as `trt.X`, `trt.X.Y` (any alias of `import tensorrt`) in a source file."""
    tree = ast.parse(path.read_text())
    aliases = {"trt"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                found |= {n for n in chain if n == "__version__" or not n.startswith("__")}  # not __init__
    return found


def test_every_tensorrt_name_used_exists_in_tensorrt_11_4(bindings):
    binary, _ = bindings
    tokens = _names_in(binary)
    # The check can tell: names TensorRT 11 removed are absent.
    for gone in ("EXPLICIT_BATCH", "platform_has_fast_fp16", "create_execution_context_without_device_memory"):
        assert not _exists(gone, tokens, binary), gone
    missing = {}
    for modname, path in OUR_SOURCES.items():
        mod = importlib.import_module(modname)
        declared = set(getattr(mod, "TRT_NAMES_USED", ()))
        undeclared = _trt_attributes(path) - declared
        assert not undeclared, f"{modname}: add {sorted(undeclared)} to TRT_NAMES_USED"
        absent = sorted(n for n in declared if not _exists(n, tokens, binary))
        if absent:
            missing[modname] = absent
    assert not missing, f"not in TensorRT 11.4's bindings: {missing}"


def test_every_tensorrt_plugin_name_used_exists_in_the_bindings(bindings):
    from srtrt.kernels import trt_plugin

    _, folder = bindings
    source = "\n".join(p.read_text() for p in sorted((folder / "plugin").glob("*.py")))
    defined = set(re.findall(r"(?:def|class)\s+(\w+)", source)) | set(re.findall(r"\.(\w+)\s*=", source)) \
        | set(re.findall(r"self\.(\w+)", source)) | {"op"}
    missing = sorted(n for n in trt_plugin.TRTP_NAMES_USED if n not in defined)
    assert not missing, missing
    used = set()
    for node in ast.walk(ast.parse(OUR_SOURCES["srtrt.kernels.trt_plugin"].read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trtp":
            used.add(node.attr)
    assert used <= set(trt_plugin.TRTP_NAMES_USED), used - set(trt_plugin.TRTP_NAMES_USED)


# A stand-in for the compiled `tensorrt` module: just enough for the real tensorrt.plugin
# sources to import, register our plugin and evaluate its shape, autotune and AOT functions
# with constant shapes.
_PLUGIN_PROBE = textwrap.dedent('''
    import sys, types
    sys.path.insert(0, sys.argv[1])          # holds the stand-in package folder
    import tensorrt as trt
    import tensorrt.plugin as trtp
    from tensorrt.plugin._lib import QDP_REGISTRY
    from tensorrt.plugin._tensor import SymIntExpr
    import torch
    torch.cuda.get_device_capability = lambda *a: (9, 0)   # the GPU the AOT kernel is compiled for

    from srtrt.kernels import trt_plugin, aot
    from srtrt.kernels.pixel_shuffle_prelu import BLOCK
    assert trt_plugin.register() is True
    assert trt_plugin.register() is True                  # idempotent
    d = QDP_REGISTRY["srtrt::PixelShufflePReLU"]
    assert d.impl_func and d.aot_impl_func and d.autotune_func and d.num_outputs == 1
    assert list(d.input_attrs) == ["upscale"] and d.input_tensor_names == ["x", "alpha"]
    assert trtp.op.srtrt.PixelShufflePReLU is d
    assert trt.get_plugin_registry().creators == [("PixelShufflePReLU", "srtrt")]

    SymIntExpr._exprBuilder = trt.ExprBuilder()
    def desc(shape, dtype):
        return trtp.TensorDesc(trtp.ShapeExprs.from_tuple(shape), dtype)
    x, alpha = desc((2, 256, 10, 12), trt.DataType.HALF), desc((64,), trt.DataType.HALF)
    y = d.register_func(x, alpha, 2)
    assert [e._expr.v for e in y.shape_expr] == [2, 64, 20, 24] and y.dtype is trt.DataType.HALF

    combos = d.autotune_func(x, alpha, 2, (y,))
    types_ = sorted(sorted(str(t) for t in c.types) for comb in combos for c in comb._get_combinations())
    assert len(types_) == 2, types_

    name, ptx, params, extra = d.aot_impl_func(x, alpha, 2, (y,), 0)
    assert isinstance(params, trtp.KernelLaunchParams) and isinstance(extra, trtp.SymIntExprs)
    assert all(isinstance(e, trtp.SymInt32) for e in extra)
    assert ".entry " + name in ptx and ".target sm_90" in ptx
    total = 2 * 64 * 20 * 24
    assert [e._expr.v for e in extra] == [64, 10, 12, total, 1]
    assert params.grid_x._expr.v == -(-total // BLOCK) and params.block_x._expr.v == 128
    assert params.shared_mem._expr.v == aot.compile_kernel(90, "fp16", 2).shared
    shared_slope = desc((1,), trt.DataType.FLOAT)
    x32 = desc((1, 16, 3, 5), trt.DataType.FLOAT)
    y32 = d.register_func(x32, shared_slope, 2)
    name32, ptx32, _, extra32 = d.aot_impl_func(x32, shared_slope, 2, (y32,), 0)
    assert [e._expr.v for e in extra32] == [4, 3, 5, 4 * 6 * 10, 0] and ptx32 != ptx
    print("ok")
''')

_STAND_IN = textwrap.dedent('''
    """Stand-in for TensorRT's compiled bindings (tests only)."""
    import types

    __version__ = "11.4.0.106"

    class _Named(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            sub = _Named(f"{cls.__name__}.{name}", (_Stub,), {})
            setattr(cls, name, sub)
            return sub

    class _Stub(metaclass=_Named):
        def __init__(self, *args, **kwargs):
            pass

    class Dims(_Stub):
        MAX_DIMS = 8

    class Logger(_Stub):
        def log(self, severity, message):
            pass

    class IDimensionExpr(_Stub):
        def __init__(self, v):
            self.v = v
        def is_constant(self):
            return True
        def get_constant_value(self):
            return self.v

    class ExprBuilder:
        def constant(self, v):
            return IDimensionExpr(int(v))
        def operation(self, op, a, b):
            f = {"SUM": int.__add__, "SUB": int.__sub__, "PROD": int.__mul__, "FLOOR_DIV": int.__floordiv__,
                 "CEIL_DIV": lambda p, q: -(-p // q), "MAX": max, "MIN": min}[op.__name__.split(".")[-1]]
            return IDimensionExpr(f(a.v, b.v))

    class _Registry:
        def __init__(self):
            self.creators, self._by_key = [], {}
        def register_creator(self, creator, namespace):
            self.creators.append((creator.name, namespace))
            self._by_key[(creator.name, namespace)] = creator
            return True
        def get_creator(self, name, version, namespace):
            return self._by_key[(name, namespace)]

    _registry = _Registry()

    def get_plugin_registry():
        return _registry

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = _Named(name, (_Stub,), {})
        globals()[name] = stub
        return stub
''')


def test_plugin_registers_and_computes_shapes_and_aot_launch_with_tensorrt_plugin_sources(bindings, tmp_path):
    pytest.importorskip("triton")
    _, folder = bindings
    pkg = tmp_path / "standin" / "tensorrt"
    (pkg / "plugin").mkdir(parents=True)
    (pkg / "__init__.py").write_text(_STAND_IN)
    for src in (folder / "plugin").glob("*.py"):
        (pkg / "plugin" / src.name).write_text(src.read_text())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _PLUGIN_PROBE, str(tmp_path / "standin")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# real engines (a CUDA GPU with TensorRT)


def _trt_ready():
    from srtrt.engine.backends.tensorrt_backend import available

    ok, why = available()
    return ok, ("TensorRT not installed" if why.startswith("TensorRT is not installed") else why)


@pytest.fixture(scope="module")
def trt_ready():
    ok, why = _trt_ready()
    if not ok:
        pytest.skip(why)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, plugin", [("fp32", "none"), ("fp16", "none"), ("fp32", "aot"),
                                               ("fp16", "aot"), ("fp16", "jit")])
def test_engine_matches_torch_and_tiles_match_whole_image(trt_ready, tiny_checkpoint, export_module, cache,
                                                          precision, plugin):
    import srtrt
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend
    from srtrt.engine.datapath import tiles
    from srtrt.engine.toolchain.trt_build import build

    view = srtrt.load_model(str(tiny_checkpoint))
    core, margin = 24, view.radius
    path, k = build(model=str(tiny_checkpoint), precision=precision, tile=core, margin=margin, max_batch=4,
                    opt_level=1, plugin=plugin, progress=False)
    assert engine_cache.lookup(k) == path and k.plugin == plugin
    backend = TensorRTBackend.from_cache(k.model_sha256, precision, "cuda", window=core + 2 * margin, max_batch=4)
    assert backend.defaults.core == core and backend.defaults.batch == 4
    window = core + 2 * margin
    assert backend.accepts(4, window, window) and not backend.accepts(1, window + 1, window)
    want_dtype = torch.float16 if precision == "fp16" else torch.float32
    tol = 3e-2 if precision == "fp16" else 3e-3  # fp32 engines may use TF32

    torch.manual_seed(1)
    lr = torch.rand(1, 3, window, window - 5, device="cuda")
    ref = view.to("cuda")(lr)
    whole = backend.infer(lr)
    assert whole.dtype == want_dtype and whole.shape == ref.shape
    assert (whole.float() - ref).abs().max().item() <= tol

    plan = tiles.plan(window, window - 5, core // 2, margin)
    out = torch.zeros_like(ref)
    s = backend.scale
    batch = [t for t in plan]
    crops = torch.cat([lr[:, :, t.y.w0:t.y.w0 + t.y.wlen, t.x.w0:t.x.w0 + t.x.wlen] for t in batch])
    backend.prepare(len(batch), *plan.window_shape)
    sr = backend.infer(crops).float()
    for i, t in enumerate(batch):
        top, left, h, w = t.core_in_window
        out[:, :, t.y.c0 * s:(t.y.c0 + h) * s, t.x.c0 * s:(t.x.c0 + w) * s] = \
            sr[i:i + 1, :, top * s:(top + h) * s, left * s:(left + w) * s]
    assert (out - whole.float()).abs().max().item() <= tol
    backend.close()


@pytest.mark.tensorrt
def test_cuda_graphs_replay_equals_plain_run(trt_ready, tiny_checkpoint, export_module, cache):
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend
    from srtrt.engine.toolchain.trt_build import build

    path, k = build(model=str(tiny_checkpoint), precision="fp16", tile=16, margin=8, max_batch=2, opt_level=1,
                    plugin="aot", progress=False)
    plain = TensorRTBackend(path)
    graphs = TensorRTBackend(path, cuda_graphs=True)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.rand(2, 3, 32, 32, device="cuda")
        y = torch.rand(1, 3, 24, 32, device="cuda")  # a second shape: a graph of its own
        graphs.prepare(2, 32, 32)
        a, b = plain.infer(x), graphs.infer(x)
        c = graphs.infer(x.flip(-1))
        d = graphs.infer(y)
        e = graphs.infer(x)  # the first shape's graph again, after the second was captured and run
        want_c, want_d = plain.infer(x.flip(-1)), plain.infer(y)
    stream.synchronize()
    # every shape was captured (a failed capture falls back to plain runs, which would pass unseen)
    assert len(graphs._graphs) == 2 and all(v is not None and v[0] is not None for v in graphs._graphs.values())
    torch.testing.assert_close(b, a, atol=1e-3, rtol=0)
    torch.testing.assert_close(c, want_c, atol=1e-3, rtol=0)
    torch.testing.assert_close(d, want_d, atol=1e-3, rtol=0)
    torch.testing.assert_close(e, a, atol=1e-3, rtol=0)
