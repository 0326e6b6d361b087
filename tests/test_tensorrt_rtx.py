"""TensorRT-RTX: real plans built on this CPU (no GPU needed), their sidecars and the cache, the
graph the builder got, the one-line refusals, RTX plans found for (or refused on) a given GPU,
the names used against the installed `tensorrt_rtx`, and the runtime on an RTX-class GPU
(marked gpu; skipped elsewhere).

Needs `pip install "srtrt[tensorrt-rtx]"` (tensorrt-rtx 1.7+, which .ci/run installs); without it
the module skips.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import EngineKey, profile_for
from srtrt.errors import SrtrtError

from test_faults import _relocate

rtx = pytest.importorskip("tensorrt_rtx")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
VERSION = str(rtx.__version__)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    return engine_cache.cache_dir()


def rtx_key(**over) -> EngineKey:
    base = dict(model_sha256=SHA, precision="fp16", profile=profile_for(592, 4), plugin="none", margin=40,
                flavour="rtx", trt_version=VERSION, compute_capabilities=((8, 6), (8, 9)))
    base.update(over)
    return EngineKey(**base)


def _one_line_exit_2(capsys, argv) -> str:
    from srtrt import cli

    rc = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("srtrt: "), captured.err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# real plans of the embedded model, built on this CPU


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_build_the_embedded_model_without_a_gpu_and_serve_it_again_from_the_cache(cache, precision):
    import srtrt
    from srtrt.engine.toolchain.trt_build import build

    out = io.StringIO()
    path, key = build(precision=precision, tensorrt="rtx", progress=False, out=out)
    log = out.getvalue()
    assert path.parent == cache and path.stat().st_size > 100_000  # a real plan: MBs of weights
    (note,) = [line for line in log.splitlines() if "plugin module" in line]  # 1.7.1 ships no tensorrt_rtx.plugin
    assert "(tensorrt_rtx.plugin: " in note and note.endswith("building unfused (DepthToSpace + PRelu, not "
                                                              "PixelShufflePReLU)")
    assert f"building a TensorRT-RTX {VERSION} engine for the TensorRT-RTX portable set" in log

    view = srtrt.load_model(None)
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["version"] == engine_cache.VERSION and doc["plan_bytes"] == path.stat().st_size
    assert doc["key"] == {
        "model_sha256": view.checkpoint_sha256, "precision": precision, "plugin": "none",
        "profile": {"min": [1, 3, 1, 1], "opt": [4, 3, 592, 592], "max": [4, 3, 592, 592]},
        "margin": view.radius, "flavour": "rtx", "trt_version": VERSION,
        "compute_capabilities": [], "gpu_name": ""}  # the portable set; a GPU-less build names no GPU
    dtype = {"fp16": "FLOAT16", "fp32": "FLOAT"}[precision]
    assert doc["io"] == {"inputs": {"lr": dtype}, "outputs": {"sr": dtype}}
    assert (doc["scale"], doc["radius"], doc["source"]) == (4, view.radius, "embedded default model")
    assert key.gpu.startswith("the TensorRT-RTX portable set (sm_80, sm_86, sm_89, sm_120")
    assert engine_cache.validate(path, key)["key"] == key

    made = path.stat().st_mtime_ns, path.read_bytes()
    out = io.StringIO()
    again, key2 = build(precision=precision, tensorrt="rtx", progress=False, out=out)
    assert (again, key2) == (path, key)
    assert f"served from the cache: {path.name}" in out.getvalue() and "building a" not in out.getvalue()
    assert (path.stat().st_mtime_ns, path.read_bytes()) == made
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


@pytest.mark.slow
def test_the_builder_gets_a_strongly_typed_fp16_graph(tmp_path):
    from srtrt.engine.toolchain.trt_build import TENSORRT_RTX, parse_network, prepare_onnx

    onnx_path, facts = prepare_onnx(tmp_path, precision="fp16", plugin="none")
    assert facts["plugin"] == "none" and facts["precision"] == "fp16"
    net = parse_network(onnx_path, TENSORRT_RTX)
    network = net.network
    assert network.get_flag(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert network.num_inputs == 1 and network.num_outputs == 1
    assert network.get_input(0).dtype == rtx.DataType.HALF and network.get_output(0).dtype == rtx.DataType.HALF
    weights, kinds = [], set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kinds.add(layer.type)
        for j in range(layer.num_outputs):
            out = layer.get_output(j)
            assert out.dtype in (rtx.DataType.HALF, rtx.DataType.INT64, rtx.DataType.INT32), (layer.name, out.dtype)
        if layer.type == rtx.LayerType.CONSTANT:  # slopes, shapes
            layer.__class__ = rtx.IConstantLayer
            weights.append(np.dtype(layer.weights.dtype))
        if layer.type == rtx.LayerType.CONVOLUTION:  # kernels and biases (BatchNorm folded in)
            layer.__class__ = rtx.IConvolutionLayer
            weights += [np.dtype(w.dtype) for w in (layer.kernel, layer.bias) if w.size]
    assert rtx.LayerType.CONVOLUTION in kinds and rtx.LayerType.PARAMETRIC_RELU in kinds
    float_weights = [w for w in weights if w.kind == "f"]
    assert len(float_weights) >= 2 * 37 and set(float_weights) == {np.dtype(np.float16)}  # SRResNet: 37 convs


def test_explicit_targets_and_auto_without_tensorrt(cache, tiny_checkpoint, monkeypatch, capsys):
    from srtrt import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # auto: TensorRT does not import, TensorRT-RTX does
    rc = cli.main(["build", "--model", str(tiny_checkpoint), "--tile", "16", "--max-batch", "2", "--cc", "8.9,8.6"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (plan,) = cache.glob("*.plan")
    doc = json.loads(plan.with_suffix(".json").read_text())
    assert doc["key"]["flavour"] == "rtx" and doc["key"]["compute_capabilities"] == [[8, 6], [8, 9]]
    assert doc["key"]["profile"]["max"] == [2, 3, 16 + 2 * doc["radius"], 16 + 2 * doc["radius"]]
    assert "-sm86-sm89-rtx" in plan.name
    assert "sm_86, sm_89" in captured.out and f"TensorRT-RTX {VERSION}" in captured.out


# ---------------------------------------------------------------------------------------------
# refusals: one line, exit 2, nothing in the cache


def test_a_target_this_tensorrt_rtx_lacks_is_refused(cache, capsys):
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--cc", "7.0"])
    assert line.startswith(f"srtrt: --cc 7.0: TensorRT-RTX {VERSION} targets 7.5, 8.0, 8.6, 8.9, 12.0, 12.1")
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--cc", "sm86"])
    assert "MAJOR.MINOR" in line
    assert not cache.exists() or not list(cache.glob("*.plan"))


def test_current_without_a_gpu_is_refused(cache, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--cc", "current"])
    assert "no CUDA GPU is visible" in line and "--cc current builds for the visible GPU" in line
    assert not cache.exists() or not list(cache.glob("*.plan"))


def test_an_output_that_would_replace_an_input_or_a_checkpoints_sidecar_is_refused_before_building(
        cache, capsys, tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "ck"
    folder.mkdir()
    for source in (tiny_checkpoint, tiny_checkpoint.with_suffix(".json")):
        shutil.copy(source, folder / source.name.replace("tiny", "model"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    weights = str(folder / "model.safetensors")
    build = ["build", "--tensorrt", "rtx", "--model", weights, "--tile", "16", "--max-batch", "1", "-o"]
    line = _one_line_exit_2(capsys, [*build, str(folder / "model.plan")])  # its sidecar is the checkpoint's
    assert line.startswith(f"srtrt: {folder / 'model.json'}: is an input of this command")
    line = _one_line_exit_2(capsys, [*build, weights])
    assert line.startswith(f"srtrt: {weights}: is an input of this command")
    other = tmp_path / "other.json"
    other.write_text('{"format": "srtrt-checkpoint"}')
    line = _one_line_exit_2(capsys, [*build, str(tmp_path / "other.plan")])
    assert "not a plan's sidecar" in line and other.read_text() == '{"format": "srtrt-checkpoint"}'
    line = _one_line_exit_2(capsys, [*build, str(tmp_path)])
    assert "is a folder: -o names the file to write" in line
    line = _one_line_exit_2(capsys, [*build, str(tmp_path / "engine.json")])  # the plan would be its own sidecar
    assert "is where the plan's sidecar (NAME.json) goes" in line and not (tmp_path / "engine.json").exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not cache.exists() or not list(cache.glob("*.plan"))


def test_a_build_the_builder_refuses_names_the_model_not_its_temporary_export(cache, capsys, tiny_checkpoint):
    from srtrt import cli

    rc = cli.main(["build", "--tensorrt", "rtx", "--model", str(tiny_checkpoint), "--tile", "100000",
                   "--max-batch", "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # TensorRT-RTX's own messages come first
    assert rc == 2 and last.startswith(f"srtrt: {tiny_checkpoint}: TensorRT-RTX could not build the engine "
                                       "for windows up to 1000")
    assert "srtrt-build-" not in last and not list(cache.glob("*.plan"))


@pytest.mark.parametrize("option", [["--max-batch", "3000000000"], ["--tile", "1000000000000"],
                                    ["--margin", "1000000000000"]], ids=["max-batch", "tile", "margin"])
def test_a_window_or_batch_beyond_32_bits_is_refused_in_one_line(cache, capsys, tiny_checkpoint, option):
    """TensorRT's profile takes 32-bit sides: beyond them the builder raised a traceback ("Shape
    provided for opt is inconsistent with other shapes"), exit 1."""
    from srtrt import cli

    rc = cli.main(["build", "--tensorrt", "rtx", "--model", str(tiny_checkpoint), *option])
    err = capsys.readouterr().err
    assert rc == 2 and "TensorRT takes sides and batches up to 2,147,483,647" in err and "Traceback" not in err, err
    assert not list(cache.glob("*.plan"))


def test_an_empty_output_is_refused_not_taken_for_none(cache, capsys, tiny_checkpoint):
    """`srtrt build -o "$PLAN"` with PLAN unset built into the cache alone, said nothing, exit 0."""
    from srtrt import cli

    rc = cli.main(["build", "--tensorrt", "rtx", "--model", str(tiny_checkpoint), "-o", ""])
    assert rc == 2 and "-o is empty (an unset variable?)" in capsys.readouterr().err
    assert not list(cache.glob("*.plan"))


def _last_line_exit_2(capsys, argv) -> str:
    """The one `srtrt:` line of a build that printed notes first (served from the cache, building ...)."""
    from srtrt import cli

    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("srtrt: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_output_that_exists_or_cannot_be_written_is_one_line_and_keeps_an_earlier_plan(
        cache, capsys, tiny_checkpoint, tmp_path, monkeypatch):
    from test_tensorrt import _FullDisk

    from srtrt import atomic, cli

    build = ["build", "--tensorrt", "rtx", "--cc", "8.6", "--model", str(tiny_checkpoint), "--tile", "16",
             "--max-batch", "1", "-o"]
    under_a_file = tiny_checkpoint / "x.plan"
    line = _one_line_exit_2(capsys, [*build, str(under_a_file)])
    assert line == f"srtrt: {under_a_file}: {tiny_checkpoint} is a file, not a folder (-o writes into it)"
    photo = tmp_path / "photo.plan"
    photo.write_bytes(b"a photo")
    line = _one_line_exit_2(capsys, [*build, str(photo)])
    assert line == f"srtrt: {photo}: output already exists (use --overwrite to replace it)"
    assert photo.read_bytes() == b"a photo"
    assert not cache.exists() or not list(cache.glob("*.plan"))  # all refused before building

    out = tmp_path / "out" / "x.plan"
    assert cli.main([*build, str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    line = _one_line_exit_2(capsys, [*build, str(out)])
    assert line == f"srtrt: {out}: output already exists (use --overwrite to replace it)"
    real_open = open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        return _FullDisk(opened) if Path(file).parent == out.parent else opened

    monkeypatch.setattr(atomic, "open", open_on_a_full_disk, raising=False)
    line = _last_line_exit_2(capsys, [*build, str(out), "--overwrite"])  # served from the cache, then -o
    (cached,) = cache.glob("*.plan")
    assert line == f"srtrt: {out}: cannot write (No space left on device); the plan is in the cache: {cached}"
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # no partial file either
    engine_cache.validate(out)
    monkeypatch.delattr(atomic, "open")
    assert cli.main([*build, str(out), "--overwrite"]) == 0


def test_a_cache_that_cannot_take_the_plan_keeps_it_for_the_run_and_a_build_without_o_says_so(
        tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Something not a folder where the cache's engines go (as a full disk): the plan is kept for this
    process (a traceback after the whole build before), so -o still gets it; without -o the plan
    would be gone as the command ends: one line, exit 1."""
    from srtrt import cli
    from srtrt.engine.toolchain.trt_build import LOST_PLAN

    root = tmp_path / "cache"
    root.mkdir()
    (root / "engines").write_bytes(b"not a folder")
    monkeypatch.setenv("SRTRT_CACHE", str(root))
    build = ["build", "--tensorrt", "rtx", "--cc", "8.6", "--model", str(tiny_checkpoint), "--tile", "16",
             "--max-batch", "1"]
    assert cli.main([*build, "-o", str(tmp_path / "x.plan")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    engine_cache.validate(tmp_path / "x.plan")
    assert cli.main(build) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"srtrt: {LOST_PLAN}"
    assert (root / "engines").read_bytes() == b"not a folder"


def test_other_graphs_of_one_model_are_other_plans(cache, tmp_path):
    from srtrt.engine.toolchain.export import export_onnx
    from srtrt.engine.toolchain.trt_build import build

    from conftest import random_view

    view = random_view(blocks=1, channels=4)
    plain = export_onnx(view, tmp_path / "plain.onnx")
    polyphase = export_onnx(view, tmp_path / "polyphase.onnx", polyphase=True)  # same model and I/O dtype
    notes = io.StringIO()
    options = dict(precision="fp32", tensorrt="rtx", cc="8.6", tile=16, max_batch=1, progress=False, out=notes)
    first, key = build(onnx_path=str(plain), **options)
    second, other = build(onnx_path=str(polyphase), **options)
    assert key.model_sha256 == other.model_sha256 and first != second
    assert "served from the cache" not in notes.getvalue()
    again, _ = build(onnx_path=str(plain), **options)
    assert again == first and "served from the cache" in notes.getvalue()


def test_an_onnx_carries_the_sides_its_network_takes_into_the_profile(cache, tmp_path, capsys):
    """A graph of Real-ESRGAN x2's form (pixel-unshuffle: sides multiples of 4) built from its ONNX gets
    the windows a --model build gets (its profile took any side, and --tile 15 failed in the builder);
    a graph fixed no wider than its two margins holds no tile: one line before building."""
    pytest.importorskip("spandrel")
    from spandrel.architectures.ESRGAN import ESRGAN

    import srtrt
    from srtrt.engine.toolchain.export import export_onnx
    from srtrt.engine.toolchain.trt_build import build

    from conftest import random_view, save_community_models

    model = save_community_models(tmp_path, {"x2": lambda: ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1,
                                                                   scale=4, shuffle_factor=2)})["x2"]
    graph = export_onnx(srtrt.load_model(model), tmp_path / "x2.onnx")
    options = dict(precision="fp32", tensorrt="rtx", cc="8.6", tile=15, max_batch=1, progress=False, out=io.StringIO())
    _, from_onnx = build(onnx_path=str(graph), **options)
    _, from_model = build(model=str(model), **options)
    assert from_onnx.profile == from_model.profile
    assert all(side % 4 == 0 for side in (*from_onnx.profile.min[2:], *from_onnx.profile.max[2:]))

    view = random_view(blocks=1, channels=4)
    margin = view.radius
    assert 16 <= 2 * margin
    fixed = export_onnx(view, tmp_path / "16.onnx", dynamic=False, input_shape=(1, 3, 16, 16))
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--cc", "8.6", "--onnx", str(fixed),
                                     "--precision", "fp32", "--max-batch", "1"])
    assert line == (f"srtrt: {fixed}: the ONNX is fixed at 16x16, no wider than its two margins of {margin}: export it "
                    f"with --shape of at least {2 * margin + 1}x{2 * margin + 1}, or build with a smaller --margin")
    assert not list(cache.glob("*-b1-16x16-*.plan"))


def test_an_onnx_the_builder_refuses_is_named_not_its_temporary_copy(cache, capsys, small_onnx, tmp_path):
    import onnx

    m = onnx.load(str(small_onnx))
    m.graph.node[0].op_type = "NoSuchOp"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    line = _last_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--onnx", str(bad), "--precision", "fp32",
                                      "--tile", "16", "--max-batch", "1"])
    assert line == f"srtrt: {bad}: TensorRT-RTX could not parse the ONNX (1 error(s) above)"
    assert not list(cache.glob("*.plan"))


def test_a_corrupt_onnx_is_refused(cache, capsys, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07\x12\x04srtr\xff\xff\xff\xff garbage that is no protobuf")
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--onnx", str(bad), "--precision", "fp32"])
    assert line.startswith(f"srtrt: {bad}: not a readable ONNX file")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")  # parses as an empty ModelProto
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--onnx", str(empty)])
    assert "no graph with inputs and outputs" in line
    assert not cache.exists() or not list(cache.glob("*.plan"))


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    from srtrt.engine.toolchain.export import export_onnx

    from conftest import random_view

    return export_onnx(random_view(blocks=1, channels=4), tmp_path_factory.mktemp("onnx") / "m.onnx")


def _onnx_with_external_weights(source: Path, folder: Path) -> Path:
    """`source` re-saved in `folder` with its weights in `weights.bin` beside it."""
    import onnx

    folder.mkdir(parents=True)
    path = folder / source.name
    onnx.save_model(onnx.load(str(source)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_onnx_folder_is_refused_before_any_read(cache, capsys, tmp_path, monkeypatch,
                                                                           small_onnx, where):
    import onnx.external_data_helper as helper

    path = _onnx_with_external_weights(small_onnx, tmp_path / "model")
    secret = tmp_path / "secret.bin"
    secret.write_bytes((path.parent / "weights.bin").read_bytes())
    location = "../secret.bin" if where == "parent" else str(secret)
    _relocate(path, location)

    def no_read(*args, **kwargs):
        raise AssertionError("external data was read before the check")

    monkeypatch.setattr(helper, "load_external_data_for_model", no_read)
    monkeypatch.setattr(helper, "load_external_data_for_tensor", no_read)
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--onnx", str(path), "--precision", "fp32"])
    assert line.startswith(f"srtrt: {path}: refused: external data {location!r}")
    assert not cache.exists() or not list(cache.glob("*.plan"))


def test_external_data_inside_the_folder_builds(cache, tmp_path, small_onnx):
    from srtrt.engine.toolchain.trt_build import build

    path = _onnx_with_external_weights(small_onnx, tmp_path / "model")
    # no precision asked: an --onnx graph's is its dtypes' (it was fp16 by default, refused against this fp32 graph)
    plan, key = build(onnx_path=str(path), tensorrt="rtx", tile=16, max_batch=1, progress=False, out=io.StringIO())
    assert plan.is_file() and key.flavour == "rtx" and key.plugin == "none" and key.precision == "fp32"


def test_tensorrt_refuses_rtx_targets(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0.106", Builder=object))
    line = _one_line_exit_2(capsys, ["build", "--tensorrt", "trt", "--cc", "8.9"])
    assert "--cc names TensorRT-RTX targets" in line


# ---------------------------------------------------------------------------------------------
# the cache on a GPU: RTX plans whose targets cover it


def test_find_takes_an_rtx_plan_that_covers_the_gpu_and_names_the_difference_otherwise(cache):
    def find(gpu, cc, version=VERSION, **kw):
        return engine_cache.find(SHA, "fp16", gpu, cc, version, flavour="rtx", **kw)

    with pytest.raises(SrtrtError, match="no cached TensorRT-RTX engine for model abababababab .* `srtrt build "
                                         "--tensorrt rtx --precision fp16`"):
        find("NVIDIA GeForce RTX 4090", (8, 9))
    ada = engine_cache.store(rtx_key(), b"ada and ampere")
    engine_cache.store(dataclasses.replace(rtx_key(), flavour="trt", trt_version="11.4.0.106",
                                           gpu_name="NVIDIA GeForce RTX 4090", compute_capabilities=((8, 9),)),
                       b"a TensorRT plan is not an RTX one")
    assert find("NVIDIA GeForce RTX 4090", (8, 9)) == ada
    assert find("NVIDIA GeForce RTX 3060", (8, 6)) == ada  # any GPU of a target capability
    with pytest.raises(SrtrtError) as e:
        find("NVIDIA H200", (9, 0))
    assert str(e.value) == ("engine is a TensorRT-RTX plan for sm_86, sm_89, this GPU is NVIDIA H200 (sm_90), which "
                            "TensorRT-RTX does not target: build with TensorRT (`srtrt build --tensorrt trt`)")
    with pytest.raises(SrtrtError) as e:
        find("NVIDIA GeForce RTX 5090", (12, 0))
    assert str(e.value) == ("engine is a TensorRT-RTX plan for sm_86, sm_89, this GPU is NVIDIA GeForce RTX 5090 "
                            "(sm_120): run `srtrt build --tensorrt rtx --cc 12.0`")
    with pytest.raises(SrtrtError, match="engine was built with TensorRT-RTX 1.7.1.116, this is TensorRT-RTX 9.9"):
        find("NVIDIA GeForce RTX 4090", (8, 9), version="9.9")

    portable = engine_cache.store(rtx_key(compute_capabilities=(), profile=profile_for(336, 4)), b"portable")
    assert find("NVIDIA GeForce RTX 5090", (12, 0)) == portable
    assert find("NVIDIA RTX A6000", (8, 6), window=336) == portable
    assert find("NVIDIA RTX A6000", (8, 6), window=592) == ada
    with pytest.raises(SrtrtError, match=r"\(sm_75\): run `srtrt build --tensorrt rtx --cc 7.5`"):
        find("NVIDIA GeForce RTX 2080", (7, 5))  # Turing needs an explicit target

    k = engine_cache.read_sidecar(ada)["key"]
    engine_cache.check_runs_here(k, "NVIDIA GeForce RTX 4080", (8, 9), VERSION)
    with pytest.raises(SrtrtError, match="this GPU is NVIDIA A100-SXM4-80GB \\(sm_80\\): run `srtrt build "
                                         "--tensorrt rtx --cc 8.0`"):
        engine_cache.check_runs_here(k, "NVIDIA A100-SXM4-80GB", (8, 0), VERSION, ada)


def test_rtx_keys_round_trip_and_name_their_targets():
    k = rtx_key()
    assert EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    assert k.label == f"TensorRT-RTX {VERSION}" and k.gpu == "sm_86, sm_89"
    assert rtx_key(compute_capabilities=((8, 9), (8, 6), (8, 9))) == k  # sorted, deduplicated
    assert k.stem().startswith(f"abababababab-fp16-none-b4-592x592-m40-sm86-sm89-rtx{VERSION}-")
    assert rtx_key(compute_capabilities=()).stem().startswith("abababababab-fp16-none-b4-592x592-m40-portable-rtx")
    assert len({k.digest(), rtx_key(compute_capabilities=()).digest(), rtx_key(trt_version="1.8").digest()}) == 3


def test_runtime_cache_lies_beside_the_plan_per_gpu(tmp_path):
    plan = tmp_path / "abc.plan"
    a = engine_cache.runtime_cache_path(plan, "NVIDIA GeForce RTX 4090", (8, 9))
    b = engine_cache.runtime_cache_path(plan, "NVIDIA GeForce RTX 4080", (8, 9))
    assert a.parent == tmp_path and a.name == "abc.nvidia-geforce-rtx-4090-sm89.runtime-cache" and a != b
    assert not a.name.endswith(".plan")  # never taken for a plan by engine_cache.entries


def test_targets_known_to_the_cache_are_the_installed_enum():
    names = [n for n in rtx.ComputeCapability.__members__ if n.startswith("SM")]
    assert {(int(n[2:-1]), int(n[-1])) for n in names} == set(engine_cache.RTX_TARGETS)
    assert set(engine_cache.RTX_DEFAULT_TARGETS) <= set(engine_cache.RTX_TARGETS)


# ---------------------------------------------------------------------------------------------
# the runtime's pieces that need no GPU


def test_every_validity_bit_has_a_clear_reason():
    from srtrt.engine.backends.tensorrt_rtx_backend import VALIDITY_REASONS, validity_reasons

    bits = {name: int(v) for name, v in rtx.EngineInvalidityDiagnostics.__members__.items()}
    assert set(bits) == set(VALIDITY_REASONS)
    for bit in bits.values():
        (reason,) = validity_reasons(rtx, bit, (8, 9))
        assert "\n" not in reason and ": " in reason, reason  # what is wrong: what to do
    both = validity_reasons(rtx, bits["UNSUPPORTED_CC"] | bits["OLD_CUDA_DRIVER"], (9, 0))
    assert len(both) == 2 and "(sm_90)" in both[0] and "--cc 9.0" in both[0] and "driver" in both[1]
    assert validity_reasons(rtx, 0, (8, 9)) == []
    assert validity_reasons(rtx, 1 << 20, (8, 9)) == ["TensorRT-RTX gave reason bits 0x100000, which srtrt does "
                                                      "not know"]


def test_the_tiled_runtime_uses_the_margin_a_plan_was_built_for():
    from srtrt.engine.backends.base import Backend, TileDefaults
    from srtrt.engine.datapath.runtime import TiledUpscaler

    class Engine(Backend):
        radius, margin, defaults = 40, 24, TileDefaults(core=64, batch=2)

        def infer(self, x):
            return x

    assert TiledUpscaler(Engine()).margin == 24
    assert TiledUpscaler(Engine(), margin=48).margin == 48
    Engine.margin = None
    assert TiledUpscaler(Engine()).margin == 40


def test_an_engine_fixed_at_one_window_refuses_a_smaller_image_in_one_line():
    """A plan fixed at one window (a window-attention model) cannot take the image-sized window a
    smaller image would need: one line before anything runs, not a failure inside the engine."""
    from srtrt.engine.backends.base import Backend, TileDefaults
    from srtrt.engine.datapath.runtime import TiledUpscaler
    from srtrt.errors import SrtrtError

    class FixedEngine(Backend):  # stands in for a TensorRT plan whose profile is one 40x40 window
        radius, margin, defaults, balanced_tiles = 4, 4, TileDefaults(core=32, batch=1), False

        def accepts(self, batch, height, width):
            return (height, width) == (40, 40)

        def infer(self, x):
            return x

        def describe(self):
            return "batch <= 1, window 40x40 only"

    runtime = TiledUpscaler(FixedEngine(), core=32)
    assert runtime.plan(100, 70).window_shape == (40, 40)
    with pytest.raises(SrtrtError, match=r"image is 60x30: its 30x40 windows are outside what this engine takes "
                                         r"\(batch <= 1, window 40x40 only\)"):
        runtime.plan(30, 60)


def _attributes(path: Path, alias: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == alias:
            found.add(node.attr)
    return found


def _names_in_tensorrt_rtx() -> set[str]:
    names = set(dir(rtx))
    for attr in dir(rtx):
        obj = getattr(rtx, attr)
        if isinstance(obj, type):
            names |= set(dir(obj)) | set(getattr(obj, "__members__", {}))
    return names


def test_every_tensorrt_rtx_name_used_exists_in_the_installed_module():
    from srtrt.engine.backends import tensorrt_backend, tensorrt_rtx_backend
    from srtrt.engine.toolchain import trt_build

    names = _names_in_tensorrt_rtx()
    used = {
        "trt_build (rtx)": set(trt_build.RTX_NAMES_USED),
        "trt_build (shared)": set(trt_build.TRT_NAMES_USED) - set(trt_build.TRT_ONLY_NAMES),
        "tensorrt_backend (shared)": set(tensorrt_backend.TRT_NAMES_USED),
        "tensorrt_rtx_backend": set(tensorrt_rtx_backend.RTX_NAMES_USED),
    }
    missing = {where: sorted(n for n in ns if n not in names) for where, ns in used.items()}
    assert not any(missing.values()), missing
    for mod, path in ((trt_build, ROOT / "engine" / "toolchain" / "trt_build.py"),
                      (tensorrt_rtx_backend, ROOT / "engine" / "backends" / "tensorrt_rtx_backend.py")):
        undeclared = _attributes(path, "rtx") - set(mod.RTX_NAMES_USED) - {"__version__"}
        assert not undeclared, f"{mod.__name__}: add {sorted(undeclared)} to RTX_NAMES_USED"


# ---------------------------------------------------------------------------------------------
# the runtime on an RTX-class GPU


def _rtx_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cc = tuple(torch.cuda.get_device_capability())
    if cc not in engine_cache.RTX_TARGETS:
        pytest.skip(f"sm_{cc[0]}{cc[1]} is not a TensorRT-RTX target")
    return cc


@pytest.mark.gpu
@pytest.mark.parametrize("precision, cuda_graphs", [("fp16", True), ("fp32", False)])
def test_rtx_engine_matches_torch_tiles_match_whole_image_and_keeps_its_runtime_cache(
        cache, tiny_checkpoint, precision, cuda_graphs):
    import srtrt
    from srtrt.engine.backends.tensorrt_rtx_backend import TensorRTRTXBackend
    from srtrt.engine.datapath import tiles
    from srtrt.engine.toolchain.trt_build import build

    cc = _rtx_gpu()
    view = srtrt.load_model(str(tiny_checkpoint))
    core, margin = 24, view.radius
    path, k = build(model=str(tiny_checkpoint), precision=precision, tensorrt="rtx", tile=core, max_batch=4,
                    progress=False, out=io.StringIO())
    backend = TensorRTRTXBackend.from_cache(k.model_sha256, precision, "cuda", cuda_graphs=cuda_graphs)
    assert backend.margin == margin and backend.defaults.core == core and not backend.balanced_tiles
    window = core + 2 * margin
    tol = 3e-2 if precision == "fp16" else 3e-3
    torch.manual_seed(1)
    lr = torch.rand(1, 3, window, window - 5, device="cuda")
    ref = view.to("cuda")(lr)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        plan = tiles.plan(window, window - 5, core // 2, margin)
        batch = list(plan)
        backend.prepare(len(batch), *plan.window_shape)
        crops = torch.cat([lr[:, :, t.y.w0:t.y.w0 + t.y.wlen, t.x.w0:t.x.w0 + t.x.wlen] for t in batch])
        sr = backend.infer(crops).float()
        sr_again = backend.infer(crops).float()  # a replay, where graphs are on
        whole = backend.infer(lr).float()
    stream.synchronize()
    assert (whole - ref).abs().max().item() <= tol
    torch.testing.assert_close(sr_again, sr, atol=1e-3, rtol=0)
    out, s = torch.zeros_like(ref), backend.scale
    for i, t in enumerate(batch):
        top, left, h, w = t.core_in_window
        out[:, :, t.y.c0 * s:(t.y.c0 + h) * s, t.x.c0 * s:(t.x.c0 + w) * s] = \
            sr[i:i + 1, :, top * s:(top + h) * s, left * s:(left + w) * s]
    assert (out - whole).abs().max().item() <= tol
    backend.close()
    runtime_cache = engine_cache.runtime_cache_path(path, torch.cuda.get_device_name(), cc)
    assert runtime_cache.is_file() and runtime_cache.stat().st_size > 0
    again = TensorRTRTXBackend(path)
    assert not any("rebuilt" in n for n in again.notes), again.notes  # the saved cache was accepted
    again.close()


@pytest.mark.gpu
def test_rtx_plan_for_other_targets_is_refused_on_this_gpu(cache, tiny_checkpoint):
    from srtrt.engine.backends.tensorrt_rtx_backend import TensorRTRTXBackend
    from srtrt.engine.toolchain.trt_build import build

    cc = _rtx_gpu()
    other = next(t for t in engine_cache.RTX_TARGETS if t != cc)
    path, _ = build(model=str(tiny_checkpoint), precision="fp16", tensorrt="rtx", cc=f"{other[0]}.{other[1]}",
                    tile=16, max_batch=1, progress=False, out=io.StringIO())
    with pytest.raises(SrtrtError, match="engine is a TensorRT-RTX plan for") as e:
        TensorRTRTXBackend(path)
    assert "\n" not in str(e.value)

