"""int8: calibration ranges, the QDQ graph, and the openvino int8 path (engine/toolchain/quantize.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srtrt import checkpoint, registry
from srtrt.engine.toolchain.quantize import calibrate, lr_photos, quantize_onnx
from srtrt.errors import SrtrtError

from conftest import random_view, smooth_image


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _calibrated(view, seed: int = 1):
    photos = [torch.from_numpy(smooth_image(40, 48, seed=s)).permute(2, 0, 1)[None].float() / 255 for s in (seed, 7)]
    view.int8_calibration = calibrate(view, photos)
    return view, photos


def test_calibration_covers_every_int8_conv_input_tail_included_and_leaves_the_head():
    view, photos = _calibrated(random_view(blocks=2, channels=8))
    ranges = view.int8_calibration["ranges"]
    names = registry.of(view.generator).int8_convs(view.generator)
    assert list(ranges) == names and "head" not in ranges and names[-1] == "tail"
    assert view.int8_calibration["images"] == 2
    seen = {}
    conv = dict(view.generator.named_modules())["body.1.conv2"]
    hook = conv.register_forward_pre_hook(lambda _m, i: seen.setdefault("x", []).append(i[0]))
    with torch.no_grad():
        for x in photos:
            view(x)
    hook.remove()
    lo, hi = ranges["body.1.conv2"]
    assert lo <= min(float(x.min()) for x in seen["x"]) + 1e-5 and hi >= max(float(x.max()) for x in seen["x"]) - 1e-5


def test_qdq_graph_runs_in_onnxruntime_close_to_fp32(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from srtrt.engine.toolchain.export import export_onnx

    view, photos = _calibrated(random_view(blocks=2, channels=16))
    fp32 = onnx.load(export_onnx(view, tmp_path / "fp32.onnx"))
    path = export_onnx(view, tmp_path / "int8.onnx", precision="int8")
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == len(view.int8_calibration["ranges"]) == sum(
        1 for n in fp32.graph.node if n.op_type == "Conv") - 1  # all but the head
    assert not any(i.name == "generator.body.0.conv1.weight" for i in model.graph.initializer)  # int8 replaces it
    x = photos[0].numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    with torch.no_grad():
        ref = view(photos[0])
    assert _psnr(torch.from_numpy(out), ref) >= 35


def test_the_polyphase_tail_keeps_the_tails_name_and_runs_in_int8(tmp_path):
    """The polyphase graph OpenVINO runs rewrites the tail into a conv to 3*r*r channels: the tail's
    calibration range (the same values, before the shuffle) quantises it."""
    import onnx

    from srtrt.engine.toolchain.export import export_onnx

    view, _ = _calibrated(random_view(blocks=1, channels=8))
    model = onnx.load(export_onnx(view, tmp_path / "int8.onnx", precision="int8", polyphase=True))
    assert "generator.tail.weight" not in {i.name for i in model.graph.initializer}  # replaced by its int8 form
    quantised = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantised) == len(view.int8_calibration["ranges"])
    int8_tail = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims[0] == 3 * 4)
    assert list(int8_tail.dims[1:]) == [4 * 8, 5, 5]  # 12 phases of RGB from the 4 x 8 pre-shuffle channels


def test_a_prelu_between_int8_convs_becomes_max_with_the_same_values_unless_a_slope_exceeds_one(tmp_path,
                                                                                                monkeypatch):
    """OpenVINO on AMX leaves the int8 kernel for a conv with a PReLU fused into it (quantize.py
    _prelu_as_max): such a PRelu is written as Max(x, a*x), which equals it for slopes a <= 1
    (negative ones included); one channel above 1 keeps the PRelu, and so does the head's (its
    conv is not int8). Without graph optimisations onnxruntime runs both graphs' arithmetic as
    written: the outputs are equal."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from srtrt.engine.toolchain import quantize
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=2, channels=8)
    with torch.no_grad():
        acts = dict(view.generator.named_modules())
        acts["body.0.act"].weight.copy_(torch.linspace(-0.5, 1.0, 8))
        acts["body.1.act"].weight.copy_(torch.linspace(0.1, 1.5, 8))
    view, photos = _calibrated(view)
    rewritten = onnx.load(export_onnx(view, tmp_path / "max.onnx", precision="int8"))
    monkeypatch.setattr(quantize, "_prelu_as_max", lambda nodes, _initializers: nodes)
    plain = onnx.load(export_onnx(view, tmp_path / "prelu.onnx", precision="int8"))

    def after_conv(model, op):  # the convs (by bias name) whose output goes straight into an `op` node
        made_by = {out: n for n in model.graph.node for out in n.output}
        return sorted(made_by[n.input[0]].input[2] for n in model.graph.node
                      if n.op_type == op and made_by.get(n.input[0]) is not None and made_by[n.input[0]].op_type == "Conv")

    assert after_conv(rewritten, "Max") == ["generator.body.0.conv1.bias"]
    assert after_conv(rewritten, "PRelu") == ["generator.body.1.conv1.bias", "generator.head.bias"]
    assert after_conv(plain, "PRelu") == ["generator.body.0.conv1.bias", "generator.body.1.conv1.bias",
                                          "generator.head.bias"]

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda path: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"lr": photos[0].numpy()})[0]
    np.testing.assert_array_equal(run(tmp_path / "max.onnx"), run(tmp_path / "prelu.onnx"))


def test_int8_export_without_calibration_is_refused_in_one_line(tmp_path):
    from srtrt.engine.toolchain.export import export_onnx

    with pytest.raises(SrtrtError, match="has no int8 calibration"):
        export_onnx(random_view(), tmp_path / "m.onnx", precision="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_a_calibration_naming_a_missing_conv_is_refused(tmp_path):
    import onnx

    from srtrt.engine.toolchain.export import export_onnx

    view, _ = _calibrated(random_view(blocks=1, channels=8))
    model = onnx.load(export_onnx(view, tmp_path / "fp32.onnx"))
    bad = {"ranges": {**view.int8_calibration["ranges"], "body.9.conv1": [0.0, 1.0]}}
    with pytest.raises(SrtrtError, match="body.9.conv1"):
        quantize_onnx(model, bad)


def test_int8_from_the_cached_fp32_graph_equals_a_traced_one(tmp_path):
    """The backends quantise their cached fp32 graph rather than trace the model again: the
    same graph as tracing for int8 directly, and another model's graph is refused."""
    import onnx

    from srtrt.engine.toolchain.export import export_onnx

    view, _ = _calibrated(random_view(blocks=1, channels=8))
    fp32 = export_onnx(view, tmp_path / "fp32.onnx", polyphase=True)
    traced = onnx.load(export_onnx(view, tmp_path / "traced.onnx", precision="int8", polyphase=True))
    derived = onnx.load(export_onnx(view, tmp_path / "derived.onnx", precision="int8", polyphase=True, float_graph=fp32))
    assert derived.SerializeToString() == traced.SerializeToString()
    other, _ = _calibrated(random_view(blocks=1, channels=8, seed=5))
    with pytest.raises(SrtrtError, match="fp32.onnx: is not this model's plain fp32 graph"):
        export_onnx(other, tmp_path / "wrong.onnx", precision="int8", polyphase=True, float_graph=fp32)
    with pytest.raises(SrtrtError, match="not this model's plain fp32 graph"):  # a plain tail is not the polyphase form
        export_onnx(view, tmp_path / "wrong.onnx", precision="int8", float_graph=fp32)


def test_openvino_int8_agrees_with_fp32_and_tiles_match_the_whole_image(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    from srtrt.engine.backends import create_backend
    from srtrt.engine.datapath.runtime import Planes, TiledUpscaler

    view, photos = _calibrated(random_view(blocks=2, channels=16))
    backend = create_backend("openvino", precision="int8", view=view).backend
    assert backend.precision == "int8" and "-int8-" in backend.path.name
    with torch.no_grad():
        ref = view(photos[0])
    assert _psnr(backend.infer(photos[0]), ref) >= 35
    img = smooth_image(44, 60, seed=3)
    whole, _ = TiledUpscaler(backend, core=0).run_to_array(Planes(img), np.float32)
    tiled, _ = TiledUpscaler(backend, core=16, margin=view.radius).run_to_array(Planes(img), np.float32)
    assert np.abs(whole - tiled).max() <= 2e-2  # same static ranges in every tile: only op-order rounding


def test_a_community_models_int8_computes_the_same_in_openvinos_dynamic_and_static_models(tmp_path, monkeypatch):
    """A Compact whose convs have zero biases (as random or pruned weights do): OpenVINO 2026.4's
    dynamic-shape model mis-scaled a bias-less int8 conv written for the Max form, so such a conv
    keeps its PRelu (quantize._prelu_as_max). Every form the run may take (the dynamic model for a
    small window, a static one for a large) agrees with fp32, and the guard judges each. The
    ranges are the view's own, never stored: the exporting child takes them from the parent."""
    pytest.importorskip("openvino")
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    import srtrt
    from srtrt import zoo
    from srtrt.engine.backends import create_backend

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).eval()
    with torch.no_grad():  # Kaiming, as trained nets scale: small weights hide the error under the upsampled input
        for name, p in net.named_parameters():
            p.zero_() if name.endswith(".bias") else torch.nn.init.kaiming_normal_(p, a=0.2) if p.dim() == 4 else None
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "compact.safetensors"))
    view = srtrt.load_model(str(tmp_path / "compact.safetensors"))
    assert zoo.stored_calibration(view.checkpoint_sha256) is None
    photos = [torch.from_numpy(smooth_image(40, 48, seed=s)).permute(2, 0, 1)[None].float() / 255 for s in (1, 7)]
    view.int8_calibration = calibrate(view, photos)
    lr = torch.from_numpy(smooth_image(32, 32, seed=3)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = view(lr)
    with create_backend("openvino", precision="int8", view=view).backend as backend:
        backend.dynamic_pixels = 10**9  # int8 compiles every shape; its dynamic-shape model is checked all the same
        dynamic, static = backend.every_form_infer(lr)
        assert backend.dynamic_runs == 1
    assert _psnr(dynamic, ref) >= 35 and _psnr(static, ref) >= 35  # the Max form's dynamic model: 13 dB


def test_calibrate_command_writes_the_sidecar_and_keeps_the_weights(tmp_path, capsys):
    from srtrt.cli import main

    stem = tmp_path / "model"
    view = random_view(blocks=1, channels=8)
    checkpoint.save(stem, view.generator, "srresnet", view.generator.config)
    before = checkpoint.file_sha256(stem.with_suffix(".safetensors"))
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for s in range(3):
        Image.fromarray(smooth_image(64, 80, seed=s)).save(photos / f"p{s}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    assert main(["calibrate", str(photos), "--model", str(stem)]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "skipped" in err
    loaded = checkpoint.load(stem)
    assert loaded.sha256 == before and loaded.meta["int8_calibration"]["images"] == 3
    import srtrt

    assert srtrt.load_model(stem).int8_calibration["ranges"].keys() == set(
        registry.of(view.generator).int8_convs(view.generator))
    assert main(["calibrate", str(tmp_path / "nowhere"), "--model", str(stem)]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(tmp_path / "empty"), "--model", str(stem)]) == 2
    assert capsys.readouterr().err.startswith(f"srtrt: {tmp_path / 'empty'}: no images (")
    assert main(["calibrate", str(photos), "--model", str(stem), "--images", "0"]) == 2
    assert "--images 0: calibrate on at least one photo" in capsys.readouterr().err
    assert checkpoint.load(stem).meta["int8_calibration"]["images"] == 3  # the refusals changed nothing


def test_calibrating_an_embedded_model_by_name_is_refused_and_changes_nothing(tmp_path, capsys):
    """`srtrt calibrate PHOTOS` (no --model) rewrote the installed default model's sidecar: its int8
    ranges no longer matched the quality guard's, and `auto` dropped int8 until a reinstall."""
    from srtrt.cli import main

    sidecars = [checkpoint.model_files(name)[2] for name in (None, "srgan")]
    before = [p.read_bytes() for p in sidecars]
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(smooth_image(64, 80)).save(photos / "p.png")
    for model in ([], ["--model", "srgan"]):
        assert main(["calibrate", str(photos), *model]) == 2
        err = capsys.readouterr().err
        assert "comes with the int8 ranges its quality-guard figures were measured with" in err and "--model COPY" in err
        assert len(err.splitlines()) == 1
    assert [p.read_bytes() for p in sidecars] == before


def test_calibrating_a_checkpoint_in_a_read_only_folder_is_one_line_before_the_work(tmp_path):
    """Its ranges go into its sidecar: a read-only folder (a real read-only bind mount, in a private
    mount namespace: root only) is one line, exit 2, before the photos are read (was a traceback after
    the calibration)."""
    import subprocess
    import sys

    from run_helpers import cli_env, read_only, skip_without_private_mounts

    models = tmp_path / "models"
    models.mkdir()
    skip_without_private_mounts(f"mount --bind {models} {models} && mount -o remount,bind,ro {models}")
    view = random_view(blocks=1, channels=4)
    checkpoint.save(models / "model", view.generator, "srresnet", view.generator.config)
    sidecar = (models / "model.json").read_bytes()
    command = [sys.executable, "-m", "srtrt.cli", "calibrate", tmp_path / "no-photos-here", "--model", models / "model"]
    done = subprocess.run(read_only(models, command), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"srtrt: {models / 'model.json'}: cannot write (Read-only file system)\n"
    assert (models / "model.json").read_bytes() == sidecar


def test_lr_photos_downscale_by_the_scale_and_stop_at_the_limit(tmp_path):
    from PIL import Image

    for s in range(3):
        Image.fromarray(smooth_image(40, 64, seed=s)).save(tmp_path / f"p{s}.png")
    shapes = [tuple(x.shape) for x in lr_photos(tmp_path, 4, limit=2)]
    assert shapes == [(1, 3, 10, 16), (1, 3, 10, 16)]


def test_int8_on_the_torch_backend_is_one_clear_line():
    from srtrt.engine.backends import create_backend

    with pytest.raises(SrtrtError, match="the torch backend: precision must be one of"):
        create_backend("torch", precision="int8", device="cpu", view=random_view())


@pytest.mark.parametrize("damaged", [{"x": "y"}, "x", {"ranges": {"head": "nan"}}, {"ranges": {"body.0": [0, float("nan")]}},
                                     {"ranges": {"body.0": [0, True]}}])
def test_a_damaged_calibration_in_a_sidecar_counts_as_none(tmp_path, capsys, damaged):
    """A sidecar whose int8_calibration was edited out of shape: int8 is refused in one line, as for a model
    never calibrated (was a KeyError or TypeError traceback in calibration_digest or quantize_onnx)."""
    import srtrt
    from srtrt.cli import main

    from run_helpers import save_tiny_model

    model = save_tiny_model(tmp_path)
    checkpoint.update_meta(model, "int8_calibration", damaged)
    assert srtrt.load_model(str(model)).int8_calibration is None
    code = main(["export", "--model", str(model), "--precision", "int8", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # the model named, and in the command that calibrates it (was: no file, and "--model M")
    assert f"srtrt: {model}: --precision int8: this model has no int8 calibration (srtrt calibrate PHOTOS --model {model} " \
           "measures one)" in err, err
    assert not (tmp_path / "m.onnx").exists()
