"""ONNX export: parity of onnxruntime with torch, fp32 and fp16, plain and fused graphs,
dynamic shapes, metadata, atomic single-file output and the `srtrt export` command."""
from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import random_view, shared_data

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs srtrt[onnx]")
HAVE_ORTX = importlib.util.find_spec("onnxruntime_extensions") is not None
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3}
NP_DTYPE = {"fp32": np.float32, "fp16": np.float16}


def _tweak_prelu_slopes(view, seed=1):
    # Distinct per-channel slopes, some negative, so a slope mix-up would show.
    g = torch.Generator().manual_seed(seed)
    for m in view.modules():
        if isinstance(m, torch.nn.PReLU):
            m.weight.data = torch.rand(m.weight.shape, generator=g) - 0.3
    return view


@pytest.fixture(scope="module")
def view():
    return _tweak_prelu_slopes(random_view(blocks=2, channels=16))


@pytest.fixture(scope="module")
def exported(view, tmp_path_factory):
    """(precision, fused) -> path, each made once per module. Exports are slow on a CPU, so
    fp32-fused comes from rewriting fp32-plain, and fp16 is exported fused only (when
    onnxruntime can run it) - which also covers `export_onnx(fused=True)` end to end."""
    import onnx

    from srtrt.engine.toolchain.export import export_onnx, fuse_pixel_shuffle_prelu

    cache, root = {}, tmp_path_factory.mktemp("onnx")

    def get(precision, fused):
        key = (precision, fused)
        if key not in cache:
            path = root / f"model_{precision}_{'fused' if fused else 'plain'}.onnx"
            if key == ("fp32", True):
                model = onnx.load(str(get("fp32", False)))
                assert fuse_pixel_shuffle_prelu(model) == 2
                onnx.save(model, str(path))
                cache[key] = path
            else:
                cache[key] = export_onnx(view, path, precision=precision, fused=fused)
        return cache[key]
    return get


FP16_FUSED = HAVE_ORTX  # the fp16 graph the module exports


def _session(path):
    import onnxruntime as ort

    from srtrt.engine.toolchain.ort_custom_op import session_options

    return ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])


def _max_diff(path, view, x, precision):
    with torch.no_grad():
        expected = view(x).numpy()
    got = _session(path).run(["sr"], {"lr": x.numpy().astype(NP_DTYPE[precision])})[0]
    assert got.dtype == NP_DTYPE[precision] and got.shape == expected.shape
    return float(np.abs(got.astype(np.float32) - expected).max())


def _needs_ortx(fused):
    if fused and not HAVE_ORTX:
        pytest.skip("fused graphs run in onnxruntime through onnxruntime-extensions")


@pytest.mark.parametrize("precision, fused", [("fp32", False), ("fp32", True), ("fp16", FP16_FUSED)],
                         ids=["fp32-plain", "fp32-fused", "fp16"])
def test_onnxruntime_matches_torch_on_two_shapes(exported, view, precision, fused):
    _needs_ortx(fused)
    path = exported(precision, fused)
    for shape in [(1, 3, 13, 21), (3, 3, 8, 5)]:  # one file, dynamic batch, height and width
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert _max_diff(path, view, x, precision) <= TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_matches_torch_on_a_photo(exported, view, precision):
    from PIL import Image

    photo = Image.open(shared_data("samples", "astronaut.png")).convert("RGB")
    w, h = photo.size
    crop = photo.crop((w // 2 - 24, h // 4, w // 2 + 24, h // 4 + 40))  # face and helmet edge
    x = torch.from_numpy(np.asarray(crop, np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    assert _max_diff(exported(precision, FP16_FUSED), view, x, precision) <= TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_io_batchnorm_folded_and_single_file(exported, precision):
    import onnx

    fused = precision == "fp16" and FP16_FUSED
    path = exported(precision, fused)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("PixelShufflePReLU" if fused else "DepthToSpace") == 2
    elem = onnx.TensorProto.FLOAT if precision == "fp32" else onnx.TensorProto.FLOAT16
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("lr", "sr")
    assert inp.type.tensor_type.elem_type == elem == out.type.tensor_type.elem_type
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".onnx")) == []


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_graph_has_plugin_nodes(exported, precision):
    import onnx

    if precision == "fp16" and not FP16_FUSED:
        pytest.skip("fp16 is exported plain without onnxruntime-extensions")
    model = onnx.load(str(exported(precision, True)))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "DepthToSpace" not in ops and ops.count("PixelShufflePReLU") == 2
    assert ops.count("PRelu") == 3  # head + one per residual block remain
    for node in (n for n in model.graph.node if n.op_type == "PixelShufflePReLU"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.domain == "srtrt"
        assert attrs == {"upscale": 2, "plugin_namespace": b"srtrt", "plugin_version": b"1", "aot": 1}
        slope = next(t for t in model.graph.initializer if t.name == node.input[1])
        assert list(slope.dims) == [16]
    assert ("srtrt", 1) in [(o.domain, o.version) for o in model.opset_import]


def test_fusion_skips_dcr_depth_to_space():
    import onnx
    from onnx import helper

    from srtrt.engine.toolchain.export import fuse_pixel_shuffle_prelu

    nodes = [helper.make_node("DepthToSpace", ["x"], ["t"], blocksize=2, mode="DCR"),
             helper.make_node("PRelu", ["t", "a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor("a", onnx.TensorProto.FLOAT, [1], [0.25])])
    model = helper.make_model(graph)
    assert fuse_pixel_shuffle_prelu(model) == 0
    assert [n.op_type for n in model.graph.node] == ["DepthToSpace", "PRelu"]


def test_metadata(exported, view):
    from srtrt.engine.toolchain.export import GRAPH_FORM, state_dict_sha256
    from srtrt.engine.toolchain.onnx_io import load_onnx, metadata

    meta = metadata(exported("fp16", FP16_FUSED))
    assert metadata(load_onnx(exported("fp16", FP16_FUSED))) == meta  # a path or a loaded model
    expected = {"model_sha256": state_dict_sha256(view), "scale": 4, "radius": view.radius,
                "minimum": view.facts.minimum, "multiple_of": view.facts.multiple_of, "graph_form": GRAPH_FORM,
                "precision": "fp16", "fused": FP16_FUSED, "polyphase": False}
    assert meta == {**expected, **({"aot": True} if FP16_FUSED else {})}
    assert len(meta["model_sha256"]) == 64


def test_full_default_architecture_small_input(tmp_path):
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=16, channels=64, seed=3)
    path = export_onnx(view, tmp_path / "full.onnx")
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]


def test_cli_export_from_a_checkpoint(tmp_path, capsys):
    from srtrt import checkpoint
    from srtrt.cli import main
    from srtrt.engine.toolchain.onnx_io import metadata

    view = random_view(blocks=1, channels=8)
    weights = checkpoint.save(tmp_path / "ckpt", view.generator, "srresnet", view.generator.config)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", "-o", str(out), "--model", str(weights)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0]
    meta = metadata(out)
    assert meta["model_sha256"] == checkpoint.file_sha256(weights)
    assert (meta["scale"], meta["radius"], meta["precision"], meta["fused"]) == (4, view.radius, "fp32", False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp file left


def test_cli_errors_are_one_line(tmp_path, capsys):
    from srtrt.cli import main

    code = main(["export", "-o", str(tmp_path / "m.onnx"), "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not found" in err


def test_cli_export_never_writes_over_its_model_or_onto_a_folder(tmp_path, capsys):
    from srtrt import checkpoint
    from srtrt.cli import main

    view = random_view(blocks=1, channels=8)
    weights = checkpoint.save(tmp_path / "ckpt", view.generator, "srresnet", view.generator.config)
    before = {p: p.read_bytes() for p in (weights, weights.with_suffix(".json"))}
    for output, cause in ((weights, "is an input of this command"), (weights.with_suffix(".json"), "is an input"),
                          (tmp_path, "is a folder")):
        code = main(["export", "-o", str(output), "--model", str(weights)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and f"{output}: {cause}" in err
    assert {p: p.read_bytes() for p in before} == before


def test_cli_export_replaces_an_existing_file_only_with_overwrite(tmp_path, capsys):
    from srtrt import checkpoint
    from srtrt.cli import main
    from srtrt.engine.toolchain.onnx_io import metadata

    view = random_view(blocks=1, channels=8)
    weights = checkpoint.save(tmp_path / "ckpt", view.generator, "srresnet", view.generator.config)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"a photo")
    code = main(["export", "-o", str(photo), "--model", str(weights)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"srtrt: {photo}: output already exists (use --overwrite to replace it)"
    assert photo.read_bytes() == b"a photo"
    assert main(["export", "-o", str(photo), "--model", str(weights), "--overwrite"]) == 0
    assert metadata(photo)["model_sha256"] == checkpoint.file_sha256(weights)


def test_an_opset_the_converter_cannot_reach_is_one_line_and_no_file(tmp_path, capsys):
    from srtrt.cli import main

    out = tmp_path / "old.onnx"
    code = main(["export", "-o", str(out), "--model", "srresnet", "--opset", "9"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith("srtrt: --opset 9: the ONNX converter cannot bring this graph")
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.out + captured.err
    assert not out.exists()


@pytest.mark.parametrize("option, said", [
    (["--opset", "1000000000000"], "--opset 1000000000000: this onnx knows opsets 1 to"),
    (["--shape", "100000000x100000000"], "--shape 100000000x100000000: over the 400,000,000 pixels"),
    (["--shape", ""], "--shape is empty (an unset variable?)"),
], ids=["huge-opset", "huge-shape", "empty-shape"])
def test_an_opset_or_shape_out_of_range_is_refused_before_exporting(tmp_path, capsys, option, said):
    """A huge --opset failed in the converter and a huge --shape in allocating its example input, each
    with a traceback; an empty --shape (an unset variable) gave a dynamic graph, exit 0."""
    from srtrt.cli import main

    out = tmp_path / "m.onnx"
    code = main(["export", "-o", str(out), "--model", "srresnet", *option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"srtrt: {said}") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_bad_metadata_value_names_the_file_it_came_from(exported, tmp_path):
    import onnx

    from srtrt.engine.toolchain.onnx_io import metadata
    from srtrt.errors import SrtrtError

    model = onnx.load(exported("fp32", False))
    next(p for p in model.metadata_props if p.key == "srtrt.radius").value = "abc"
    with pytest.raises(SrtrtError, match=f"^{tmp_path / 'm.onnx'}: metadata srtrt.radius is 'abc', not a number"):
        metadata(model, tmp_path / "m.onnx")


def test_metadata_refuses_non_onnx(tmp_path):
    from srtrt.engine.toolchain.onnx_io import load_onnx, metadata
    from srtrt.errors import SrtrtError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00not a model")
    with pytest.raises(SrtrtError, match="bad.onnx: not a readable ONNX file"):
        metadata(bad)
    with pytest.raises(SrtrtError, match="missing.onnx: ONNX file not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_load_onnx_checks_external_data_before_reading_it(exported, tmp_path, monkeypatch):
    import onnx
    import onnx.external_data_helper as helper

    from srtrt.engine.toolchain.onnx_io import load_onnx
    from srtrt.errors import SrtrtError

    path = tmp_path / "m.onnx"
    onnx.save_model(onnx.load(str(exported("fp32", False))), str(path), save_as_external_data=True,
                    location="w.bin", size_threshold=0)
    assert load_onnx(path).graph.initializer[0].raw_data  # inside its folder: loaded
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save_model(proto, str(path))
    monkeypatch.setattr(helper, "load_external_data_for_model", lambda *a: pytest.fail("read before the check"))
    with pytest.raises(SrtrtError, match="refused: external data '../w.bin' lies outside"):
        load_onnx(path)


def test_unfusing_restores_the_stock_ops_and_the_numbers(exported, view, tmp_path):
    from srtrt.engine.toolchain.export import fused_nodes, save_onnx, unfuse_pixel_shuffle_prelu
    from srtrt.engine.toolchain.onnx_io import load_onnx, metadata

    model = load_onnx(exported("fp32", True))
    assert len(fused_nodes(model)) == 2
    assert unfuse_pixel_shuffle_prelu(model) == 2 and not fused_nodes(model)
    assert unfuse_pixel_shuffle_prelu(model) == 0
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DepthToSpace") == 2 and ops.count("PRelu") == 5
    assert "srtrt" not in [o.domain for o in model.opset_import]
    path = save_onnx(model, tmp_path / "unfused.onnx")
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert metadata(path)["fused"] is False and "aot" not in metadata(path)
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]


def test_custom_op_registration_is_idempotent():
    if not HAVE_ORTX:
        pytest.skip("onnxruntime-extensions is not installed")
    from srtrt.engine.toolchain import ort_custom_op

    ort_custom_op.register()
    ort_custom_op.register()
    assert ort_custom_op.session_options() is not None


def test_polyphase_graph_computes_the_same_image_with_a_small_final_shuffle(view, tmp_path):
    import onnx

    from srtrt.engine.toolchain.export import export_onnx
    from srtrt.engine.toolchain.onnx_io import metadata

    path = export_onnx(view, tmp_path / "poly.onnx", polyphase=True)
    for shape in [(1, 3, 13, 21), (2, 3, 8, 5)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    assert ops.count("DepthToSpace") == 2
    assert ops[-7:] == ["PRelu", "Conv", "DepthToSpace", "Tanh", "Add", "Mul", "Clip"]  # the shuffle is last
    # The last shuffle moves 3 x 4 channels (RGB per sub-pixel phase), not the 16 features.
    tail = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    weights = {t.name: t for t in model.graph.initializer}
    assert list(weights[tail.input[1]].dims) == [12, 4 * view.generator.config.channels, 5, 5]
    meta = metadata(path)
    assert meta["polyphase"] is True and meta["radius"] == view.radius


def test_runtime_graph_is_traced_quickly_and_holds_at_sizes_it_was_not_traced_at(view, tmp_path):
    """The CPU backends' cached graph comes from the TorchScript exporter (a trace: shapes could be
    baked in): exact at other sizes and batches, and every conv's weight keeps its module's name."""
    import onnx

    from srtrt.engine.toolchain.export import EXAMPLE_SHAPE, LEGACY_OPSET, export_for_runtime
    from srtrt.engine.toolchain.quantize import WEIGHT_PREFIX

    path = export_for_runtime(view, tmp_path / "runtime.onnx", polyphase=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == LEGACY_OPSET  # the quick exporter ran
    for shape in [(1, 3, 13, 21), (3, 3, 8, 5), (1, 3, 2 * EXAMPLE_SHAPE[2] + 7, 9)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]
    convs = {f"{name}.weight" for name, m in view.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {n.input[1] for n in model.graph.node if n.op_type == "Conv"} <= convs  # what quantize_onnx finds them by
    assert all(name.startswith(WEIGHT_PREFIX) for name in convs)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


def test_runtime_graph_falls_back_to_torch_export(view, tmp_path, monkeypatch):
    import onnx

    from srtrt.engine.toolchain import export

    def gone(*args, **kwargs):  # a torch without the TorchScript exporter
        raise RuntimeError("legacy exporter removed")
    monkeypatch.setattr(export, "_to_onnx_torchscript", gone)
    path = export.export_for_runtime(view, tmp_path / "runtime.onnx")
    assert onnx.load(str(path)).opset_import[0].version > export.LEGACY_OPSET
    x = torch.rand(1, 3, 11, 17, generator=torch.Generator().manual_seed(5))
    assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]


def _shared_small_constants(model) -> list[str]:
    """Small initializers (biases, slopes) that more than one node reads, directly or through an Identity."""
    from onnx import numpy_helper

    from srtrt.engine.toolchain.export import SMALL_CONSTANT_BYTES

    small = {i.name for i in model.graph.initializer if numpy_helper.to_array(i).nbytes <= SMALL_CONSTANT_BYTES}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in small}
    readers = Counter(alias.get(name, name) for n in model.graph.node if n.op_type != "Identity"
                      for name in n.input if alias.get(name, name) in small)
    return sorted(name for name, count in readers.items() if count > 1)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_each_node_owns_its_small_constants(tmp_path, exporter):
    """A model whose PReLU slopes are equal (untrained ones are all 0.25): the exporter keeps one
    initializer for all of them, which keeps OpenVINO from fusing each PReLU into its conv
    (tests/test_openvino.py). The written graph gives each node its own copy, the same values."""
    import onnx

    from srtrt.engine.toolchain.export import _to_onnx, export_onnx

    view = random_view(blocks=2, channels=16)
    raw = _to_onnx(view, torch.float32, None, True, None, exporter)
    assert _shared_small_constants(raw), "the exporter shares no constant here: nothing would be tested"
    path = export_onnx(view, tmp_path / "model.onnx", exporter=exporter)
    model = onnx.load(str(path))
    assert _shared_small_constants(model) == []
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    convs = {f"{name}.weight" for name, m in view.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {n.input[1] for n in model.graph.node if n.op_type == "Conv"} <= convs  # the int8 rewrite's names
    x = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(7))
    assert _max_diff(path, view, x, "fp32") <= TOLERANCE["fp32"]


def test_a_cached_graph_from_before_constants_were_owned_is_exported_again(tmp_path, monkeypatch):
    """The CPU backends' cache holds graphs by model and form: one without this GRAPH_FORM (an older
    srtrt's, with shared constants) is never run, it is exported again."""
    import onnx

    from srtrt.engine import backends
    from srtrt.engine.toolchain import export

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))
    view = random_view(blocks=1, channels=8, seed=2)
    path = backends._exported_onnx(view, "fp32")
    old = onnx.load(str(path))
    props = {p.key: p.value for p in old.metadata_props if not p.key.endswith("graph_form")}
    onnx.helper.set_model_props(old, props)
    export.save_onnx(old, path)
    path.with_name(path.name + ".json").unlink()
    again = backends._exported_onnx(view, "fp32")
    assert again == path
    from srtrt.engine.toolchain.onnx_io import metadata

    assert metadata(path)["graph_form"] == export.GRAPH_FORM


def test_a_constant_copy_never_takes_a_graph_inputs_name():
    """A copy of a shared constant named after a graph input would replace that input's values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from srtrt.engine.toolchain.export import own_constants

    c = numpy_helper.from_array(np.full(4, 25.0, np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["c_2", "c"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4]) for name in ("x", "c_2")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert own_constants(model) == 1
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, c_2 = np.arange(4, dtype=np.float32), np.full(4, 4.0, np.float32)
    (y,) = session.run(["y"], {"x": x, "c_2": c_2})
    assert np.array_equal(y, x + 25 + 4 * 25)


def test_export_into_a_folder_that_is_a_file_is_one_line_before_any_tracing(tmp_path, capsys):
    from srtrt.cli import main

    (tmp_path / "taken").write_text("a file")
    rc = main(["export", "-o", str(tmp_path / "taken" / "sub" / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"srtrt: {tmp_path / 'taken' / 'sub' / 'm.onnx'}: {tmp_path / 'taken'} is a file, "
                               "not a folder (-o writes into it)"]


def test_an_export_leaves_the_applications_other_threads_their_stdout_and_warnings(capsys):
    """An in-process export (an API call's first openvino/auto use) swapped sys.stdout for a StringIO
    and the warning filters for its own, process-wide: another thread's print() went nowhere, its
    warnings were ignored, and a filter it added meanwhile was undone."""
    import sys
    import threading
    import warnings

    from srtrt.engine.toolchain.export import _quiet_exporter

    inside, done = threading.Event(), threading.Event()

    def export():
        with _quiet_exporter():
            print("the exporter's progress")
            inside.set()
            done.wait(30)

    worker = threading.Thread(target=export)
    worker.start()
    assert inside.wait(30)
    try:
        print("the application's line")
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("the application's warning", UserWarning, stacklevel=1)
        warnings.filterwarnings("ignore", message="added by the application")
        added = warnings.filters[0]
    finally:
        done.set()
        worker.join()
    out = capsys.readouterr().out
    assert "the application's line" in out and "the exporter's progress" not in out
    assert [str(w.message) for w in seen] == ["the application's warning"]
    assert added in warnings.filters and sys.stdout is not None
    warnings.filters.remove(added)


def test_onnxruntime_says_nothing_of_its_own_where_its_home_cache_cannot_be_written(tmp_path):
    """Its import printed a coloured warning line (a telemetry id it could not keep) where the home
    cache was not writable (a service account; XDG_CACHE_HOME a file), into pipes too."""
    import os
    import subprocess
    import sys

    (tmp_path / "a_file").write_text("")
    probe = ("import os; from srtrt.engine.backends.onnxruntime_backend import available; "
             "print(available()[0], 'ORT_DISABLE_TELEMETRY' in os.environ)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "a_file")})
    assert done.stdout.strip() == "True False" and done.stderr == "", done.stderr

