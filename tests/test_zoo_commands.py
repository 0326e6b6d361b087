"""`--model COMMUNITY_FILE` in every command besides `srtrt run`: export (ONNX equal to torch fp32),
build (a TensorRT-RTX plan for a grey model, no GPU needed), eval and compare (the model's own
scale, channels and size multiple), calibrate (ranges kept by sha256; int8 export and run), `run --ray` (the driver
and its actors, on a stand-in Ray), and --allow-noncommercial reaching the loader.

Models are spandrel's own architecture classes with small configs and random weights."""
from __future__ import annotations

import io
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("spandrel")

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.OmniSR import OmniSR  # noqa: E402

import srtrt  # noqa: E402
from srtrt.cli import main, parser  # noqa: E402

from conftest import save_community_models, smooth_image, tiny_swinir  # noqa: E402

MODELS = {
    "c4": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4),
    "c2": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2),
    "grey": lambda: Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=2),
    # Real-ESRGAN x2's form: pixel-unshuffle, then an x4 body; LR sides must be multiples of 4.
    "rrdb_x2": lambda: ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2),
    "x1": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1),
    # window attention: exports only at a fixed size
    "swinir": tiny_swinir,
    # window attention too, not known so in advance: its dynamic-shape export is found to hold at one size
    "omnisr": lambda: OmniSR(num_feat=16, block_num=1, window_size=4, res_num=1, up_scale=2),
}


pytestmark = pytest.mark.usefixtures("own_srtrt_cache")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return save_community_models(tmp_path_factory.mktemp("zoo"), MODELS)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two small HR photos whose sides are not multiples of 8 (x2 times the unshuffle model's 4)."""
    folder = tmp_path_factory.mktemp("hr")
    for i, (h, w) in enumerate([(46, 50), (42, 54)]):
        Image.fromarray(smooth_image(h, w, seed=i)).save(folder / f"p{i}.png")
    return folder


def one_line_exit_2(capsys, argv) -> str:
    rc = main(list(map(str, argv)))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("srtrt: "), captured.err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# srtrt export


def test_export_writes_a_graph_equal_to_torch_fp32_and_says_polyphase_is_a_no_op(files, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from srtrt.engine.toolchain.onnx_io import metadata

    out = tmp_path / "out" / "c4.onnx"
    assert main(["export", "-o", str(out), "--model", str(files["c4"]), "--polyphase"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    assert line.startswith(f"wrote {out} (fp32, Compact, x4, RGB, tile margin ") and ", polyphase" not in line
    assert "--polyphase changes nothing in the Compact model" in captured.err
    view = srtrt.load_model(files["c4"])
    meta = metadata(out)
    assert (meta["model_sha256"], meta["scale"], meta["radius"]) == (view.checkpoint_sha256, 4, view.radius)
    assert (meta["precision"], meta["fused"], meta["polyphase"]) == ("fp32", False, False)  # as exported, honestly

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 16, 20), (2, 3, 9, 13)]:  # dynamic batch, height and width
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        (got,) = session.run(["sr"], {"lr": x.numpy()})
        with torch.no_grad():
            want = view(x).numpy()
        assert got.shape == want.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
        assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("flags, says", [
    (["--fused"], "--fused: the Compact model has no conv -> PixelShuffle -> PReLU steps"),
    (["--precision", "int8"], "--precision int8: this model has no int8 calibration (srtrt calibrate PHOTOS --model "),
    (["--opset", "18"], "--opset is not supported for community models"),
])
def test_export_options_a_community_model_cannot_honour_are_one_line(files, tmp_path, capsys, flags, says):
    out = tmp_path / "m.onnx"
    line = one_line_exit_2(capsys, ["export", "-o", out, "--model", files["c2"], *flags])
    assert says in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# srtrt build --tensorrt rtx


def test_build_a_tensorrt_rtx_plan_for_a_grey_model_without_a_gpu(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("onnxscript")
    from srtrt.engine.toolchain import engine_cache

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))  # the engine cache starts empty
    view = srtrt.load_model(files["grey"])
    rc = main(["build", "--tensorrt", "rtx", "--model", str(files["grey"]), "--tile", "16", "--max-batch", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "the Compact model has no conv -> PixelShuffle -> PReLU steps for the PixelShufflePReLU plugin: " \
           "building without it" in captured.err
    (plan,) = engine_cache.cache_dir().glob("*.plan")
    doc = json.loads(plan.with_suffix(".json").read_text())
    side = 16 + 2 * view.radius
    assert doc["key"]["model_sha256"] == view.checkpoint_sha256 and doc["key"]["plugin"] == "none"
    assert doc["key"]["margin"] == view.radius
    assert doc["key"]["profile"] == {"min": [1, 1, 1, 1], "opt": [2, 1, side, side], "max": [2, 1, side, side]}
    assert (doc["scale"], doc["radius"], doc["channels"]) == (2, view.radius, 1)
    assert doc["io"] == {"inputs": {"lr": "FLOAT16"}, "outputs": {"sr": "FLOAT16"}}
    assert engine_cache.validate(plan)["key"].model_sha256 == view.checkpoint_sha256


@pytest.mark.slow
def test_a_window_attention_model_builds_a_plan_fixed_at_one_window(files, tmp_path, capsys, monkeypatch):
    """SwinIR has no dynamic-shape graph: its plan takes exactly one window, one at a time, and says so."""
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("onnxscript")
    from srtrt.engine.toolchain import engine_cache

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    view = srtrt.load_model(files["swinir"])
    rc = main(["build", "--tensorrt", "rtx", "--precision", "fp32", "--model", str(files["swinir"]), "--tile", "24"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    side = 24 + 2 * view.facts.margin
    assert f"the engine takes {side}x{side} windows only, 1 at a time" in captured.err
    assert f"batch <= 1, window {side}x{side} only" in captured.out
    (plan,) = engine_cache.cache_dir().glob("*.plan")
    profile = json.loads(plan.with_suffix(".json").read_text())["key"]["profile"]
    assert profile["min"] == profile["opt"] == profile["max"] == [1, 3, side, side]


def test_a_model_whose_dynamic_graph_holds_at_one_size_exports_with_a_hint_and_builds_for_one_window(
        files, tmp_path, capsys, monkeypatch):
    """OmniSR is not among the architectures known to export at a fixed size only; its dynamic-shape
    graph fails the check at an untraced size: export says to add --shape, build makes a one-window plan."""
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    err = one_line_exit_2(capsys, ["export", "-o", tmp_path / "o.onnx", "--model", files["omnisr"]])
    assert "dynamic-shape graph holds at the size it was traced at only" in err and "add --shape HxW" in err
    rc = main(["build", "--tensorrt", "rtx", "--precision", "fp32", "--model", str(files["omnisr"]), "--tile", "16"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "OmniSR's dynamic-shape graph holds at its traced size only: the engine takes" in captured.err
    assert "batch <= 1, window" in captured.out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_failed_export_with_overwrite_leaves_the_file_it_was_to_replace(files, tmp_path, capsys, monkeypatch, precision):
    """The export child wrote the fp32 graph onto -o before checking it, and removed -o on any failure:
    a failed `--overwrite` export deleted the user's earlier file. It is now replaced only by a graph
    that passed."""
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kept.onnx"
    out.write_bytes(b"an earlier export")
    err = one_line_exit_2(capsys, ["export", "-o", out, "--model", files["omnisr"], "--precision", precision,
                                   "--overwrite"])
    assert "dynamic-shape graph holds at the size it was traced at only" in err
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "kept.onnx"]  # no graph left beside it


def test_int8_and_fp16_graphs_of_a_model_whose_dynamic_graph_holds_at_one_size_are_judged_as_its_fp32_one(
        files, photos, tmp_path, capsys, monkeypatch):
    """Only the fp32 graph used to be checked at an untraced size: an int8 (or fp16) export of OmniSR
    was written dynamic, and a calibrated OmniSR failed on every image whose size was not the traced
    one. Every precision's export is now judged by its fp32 trace, and int8 runs from static graphs."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    model = str(files["omnisr"])
    assert main(["calibrate", str(photos), "--model", model]) == 0
    err = one_line_exit_2(capsys, ["export", "-o", tmp_path / "int8.onnx", "--model", model, "--precision", "int8"])
    assert "dynamic-shape graph holds at the size it was traced at only" in err and "add --shape HxW" in err
    assert not (tmp_path / "int8.onnx").exists()
    Image.fromarray(smooth_image(37, 51, seed=5)).save(tmp_path / "odd.png")
    rc = main(["run", str(tmp_path / "odd.png"), "--model", model, "--backend", "openvino", "--precision", "int8",
               "-o", str(tmp_path / "int8.png")])
    assert rc == 0, capsys.readouterr().err
    assert "backend openvino (int8" in capsys.readouterr().err
    with torch.inference_mode():
        want = srtrt.load_model(model)(torch.from_numpy(smooth_image(37, 51, seed=5)).permute(2, 0, 1)[None] / 255.0)
    want = (want[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy()
    got = np.asarray(Image.open(tmp_path / "int8.png"), dtype=float)
    assert got.shape == want.shape and np.abs(got - want).mean() < 2


def test_an_onnx_fixed_at_a_non_square_shape_is_refused_in_one_line(files, tmp_path, capsys, monkeypatch):
    """The runtime's windows are square wherever the image allows: a plan fixed at 24x32 could take none."""
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    graph = tmp_path / "c2.onnx"
    assert main(["export", "-o", str(graph), "--model", str(files["c2"]), "--shape", "24x32"]) == 0
    capsys.readouterr()
    line = one_line_exit_2(capsys, ["build", "--tensorrt", "rtx", "--precision", "fp32", "--onnx", graph])
    assert "the ONNX is fixed at 24x32, but the runtime's windows are square: export it with --shape NxN" in line


@pytest.mark.gpu
@pytest.mark.parametrize("flavour", ["trt", "rtx"])
def test_a_fixed_window_plan_runs_a_window_attention_model_on_the_gpu(files, tmp_path, monkeypatch, flavour):
    """On a GPU: SwinIR's one-window plan, tiled, stays within the measured margin's bound of torch's
    whole-image pass (one 8-bit level, less the TF32 rounding a TensorRT fp32 build allows itself);
    an image smaller than the window is one line."""
    from srtrt.engine.backends.tensorrt_backend import TensorRTBackend, available
    from srtrt.engine.backends.tensorrt_rtx_backend import TensorRTRTXBackend
    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.datapath.runtime import Planes, TiledUpscaler
    from srtrt.engine.toolchain import engine_cache, trt_build

    ok, why = available(flavour)
    if not ok:
        pytest.skip(why)
    if flavour == "rtx" and tuple(torch.cuda.get_device_capability()) not in engine_cache.RTX_TARGETS:
        pytest.skip("this GPU is not a TensorRT-RTX target")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    view = srtrt.load_model(files["swinir"])
    path, _ = trt_build.build(model=str(files["swinir"]), precision="fp32", tensorrt=flavour, tile=24,
                              progress=False, out=io.StringIO())
    backend = (TensorRTBackend if flavour == "trt" else TensorRTRTXBackend)(path, "cuda")
    image = smooth_image(70, 90).astype(np.float32) / 255
    tiled, _ = TiledUpscaler(backend).run_to_array(Planes(image))
    whole, _ = TiledUpscaler(TorchBackend(view, "cpu", "fp32"), core=0, margin=0).run_to_array(Planes(image))
    levels = np.abs(np.round(np.clip(tiled, 0, 1) * 255) - np.round(np.clip(whole, 0, 1) * 255))
    assert (levels <= 1).mean() >= 0.99 and levels.max() <= 3, (levels <= 1).mean()
    with pytest.raises(srtrt.SrtrtError, match="windows are outside what this engine takes"):
        TiledUpscaler(backend).run_to_array(Planes(image[:20, :30]))
    backend.close()


# ---------------------------------------------------------------------------------------------
# srtrt eval and srtrt compare


def test_eval_scores_rgb_grey_and_unshuffle_models_at_their_scale(files, photos, capsys):
    from srtrt.train.evaluate import super_resolve

    argv = ["eval", str(photos), "--json"] + [a for name in ("c2", "grey", "rrdb_x2") for a in ("--model", str(files[name]))]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)[photos.name]
    assert list(result["models"]) == ["c2", "grey", "rrdb_x2"] and len(result["images"]) == 2
    for scores in result["models"].values():
        assert all(np.isfinite(v) for v in scores.values())

    lr = Image.fromarray(smooth_image(20, 24, seed=3))
    grey = super_resolve(srtrt.load_model(files["grey"]), lr)
    assert grey.shape == (40, 48, 3) and (grey == grey[..., :1]).all()  # a grey model is scored as grey
    assert not (super_resolve(srtrt.load_model(files["c2"]), lr) == grey).all()

    line = one_line_exit_2(capsys, ["eval", str(photos), "--model", files["c2"], "--scale", "4"])
    assert "--scale 4 does not match the model's scale x2" in line
    for command in (["eval", photos], ["compare", photos / "p0.png", "-o", photos / "side.png"]):
        line = one_line_exit_2(capsys, [*command, "--model", files["c4"], "--model", files["c2"]])
        assert "models of different scales cannot share a table: c4 is x4, c2 is x2" in line
    line = one_line_exit_2(capsys, ["eval", str(photos), "--model", files["x1"]])
    assert "an x1 (restoration) model has no downscaled input to score" in line


def test_compare_crops_equal_whole_image_runs_and_a_grey_model_shows_grey(files, photos, tmp_path, capsys):
    from srtrt.train.compare import compare_panels, model_crop
    from srtrt.train.degrade import bicubic_downscale
    from srtrt.train.evaluate import read_hr, super_resolve

    for name in ("c2", "rrdb_x2"):  # exact tiles: the crop's window gives the whole-image pixels
        view = srtrt.load_model(files[name])
        assert view.facts.exact
        lr = bicubic_downscale(read_hr(photos / "p0.png", 2, 4), 2)
        whole = super_resolve(view, lr)
        for box in [(2, 6, 18, 22), (30, 10, 48, 30)]:
            x0, y0, x1, y1 = box
            np.testing.assert_array_equal(model_crop(view, lr, box, 2), whole[y0:y1, x0:x1])

    models = {name: srtrt.load_model(files[name]) for name in ("c2", "grey", "rrdb_x2")}
    panels = compare_panels(photos / "p1.png", models, crop=32)
    assert [p.title for p in panels] == ["LR", "bicubic", "c2", "grey", "rrdb_x2", "HR"]
    assert {p.pixels.shape for p in panels} == {(32, 32, 3)}
    assert (panels[3].pixels == panels[3].pixels[..., :1]).all() and not (panels[2].pixels == panels[2].pixels[..., :1]).all()

    out = tmp_path / "sheet.png"
    assert main(["compare", str(photos / "p1.png"), "-o", str(out), "--model", str(files["grey"]), "--crop", "32"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and Image.open(out).size[1] > 32


# ---------------------------------------------------------------------------------------------
# srtrt calibrate


def test_calibrate_keeps_a_community_models_ranges_by_sha256_and_int8_runs_on_openvino(files, photos, tmp_path, capsys):
    """The ranges go to srtrt's cache, never beside the user's file; export and run then take int8
    (QDQ convs, head and tail in float) and it stays close to the model's own fp32 output."""
    pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from srtrt.engine.backends import create_backend
    from srtrt.engine.datapath.runtime import Planes, TiledUpscaler

    before = sorted(p.name for p in files["c4"].parent.iterdir())
    assert srtrt.load_model(files["c4"]).int8_calibration is None
    assert main(["calibrate", str(photos), "--model", str(files["c4"])]) == 0
    out = capsys.readouterr().out
    assert "calibrated 4 convs on 2 photos" in out  # 6 convs: all but the first and last
    # none needed float; the line said "every conv in int8" of a model whose first and last are float
    assert "int8 simulated to agree with fp32 to " in out
    assert ": 4 convs in int8 (those that read and write the image are in float always)" in out
    assert sorted(p.name for p in files["c4"].parent.iterdir()) == before
    view = srtrt.load_model(files["c4"])
    assert len(view.int8_calibration["ranges"]) == 4

    out = tmp_path / "c4-int8.onnx"
    assert main(["export", "-o", str(out), "--model", str(files["c4"]), "--precision", "int8"]) == 0
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("Conv") == 6

    image = smooth_image(40, 44, seed=3)
    outputs = {}
    for precision in ("fp32", "int8"):
        with create_backend("openvino", precision=precision, view=view).backend as backend:
            outputs[precision], _ = TiledUpscaler(backend).run_to_array(Planes(image), np.uint8)
    diff = outputs["int8"].astype(float) - outputs["fp32"]
    assert 0 < np.abs(diff).max() <= 8  # int8 ran (not the fp32 graph), within a few levels
    assert 10 * np.log10(255 ** 2 / np.mean(diff ** 2)) > 40

    # the guard for a model without a test set: agreement with its own fp32 output, cached per calibration
    from srtrt.engine.backends.agreement import agreement_judge

    judge = agreement_judge(view, lambda name, precision: create_backend(name, precision=precision, view=view).backend)
    ok, why = judge("openvino", "int8")
    assert ok and why.startswith("int8 agrees with this model's fp32 output to "), why


def test_a_calibration_the_cache_cannot_keep_or_with_nothing_to_quantise_is_not_a_success(photos, tmp_path, capsys,
                                                                                         monkeypatch):
    """calibrate said "calibrated ..." and exited 0 with its ranges in a temporary cache deleted at exit
    (the next run: "this model has no int8 calibration"); a model whose only convs read and write the
    image was "calibrated 0 convs", and its float graph was then timed and picked as int8. Its photos
    take --max-pixels, as the line for an over-limit photo says."""
    models = save_community_models(tmp_path, {
        "fresh": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=12, num_conv=2, upscale=2),
        "shallow": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=0, upscale=2)})
    line = one_line_exit_2(capsys, ["calibrate", photos, "--model", models["shallow"]])
    assert line == (f"srtrt: {models['shallow']}: the model has no conv between the two that read and write the image: "
                    "nothing to run in int8")
    line = one_line_exit_2(capsys, ["calibrate", photos, "--model", models["fresh"], "--max-pixels", "-5"])
    assert line == "srtrt: --max-pixels must be an integer >= 0 (0: no limit), not -5"
    assert main(["calibrate", str(photos), "--model", str(models["fresh"]), "--max-pixels", "100"]) == 2
    err = capsys.readouterr().err
    assert "over the limit of 100" in err  # each photo skipped, then none was left, and the last line says why
    assert f"no photo to calibrate on ({len(list(photos.iterdir()))} skipped above, each for the cause its line gives" in err
    line = one_line_exit_2(capsys, ["run", photos / "p0.png", "-o", tmp_path / "o.png", "--model", models["fresh"],
                                    "--precision", "int8"])  # the line names the model it is about
    assert line.startswith(f"srtrt: {models['fresh'].resolve()}: --precision int8: this model has no int8 calibration")
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "a-file" / "cache"))
    assert main(["calibrate", str(photos), "--model", str(models["fresh"])]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("srtrt: the cache cannot keep the calibration, so it would be gone when this command "
                                "ends: set SRTRT_CACHE to a folder srtrt can write"), err


def test_the_convs_that_read_and_write_the_image_stay_in_float_past_a_colour_transform(photos, tmp_path, capsys):
    """RCAN runs a fixed 1x1 mean shift before its first conv and after its last: taken for the first and
    last convs, they left in float what needs no care, and the conv that reads the image went to int8."""
    from spandrel.architectures.RCAN import RCAN

    model = save_community_models(tmp_path, {"rcan": lambda: RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16,
                                                                   reduction=4)})["rcan"]
    assert main(["calibrate", str(photos), "--model", str(model)]) == 0
    capsys.readouterr()
    calibration = srtrt.load_model(model).int8_calibration
    int8 = set(calibration["ranges"])
    assert int8 and not int8 & {"model.sub_mean", "model.head.0", "model.tail.1", "model.add_mean"}, int8


def test_upscale_takes_a_community_models_new_calibration_between_calls(photos, tmp_path, capsys):
    """srtrt.upscale keeps its backend between calls; a `srtrt calibrate` meanwhile (another shell) gave
    a community model new int8 ranges in srtrt's cache, and every later call ran the old ones."""
    pytest.importorskip("openvino")
    from srtrt.engine.batch import api
    from srtrt.engine.toolchain.quantize import int8_graph_tag

    model = save_community_models(tmp_path, {"recal": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=12,
                                                                     num_conv=3, upscale=2)})["recal"]
    dark = tmp_path / "dark"
    dark.mkdir()
    Image.fromarray((smooth_image(46, 50, seed=5) // 8).astype(np.uint8)).save(dark / "d.png")
    image = Image.fromarray(smooth_image(24, 28, seed=7))
    tags = []
    for folder in (dark, photos):
        assert main(["calibrate", str(folder), "--model", str(model)]) == 0
        capsys.readouterr()
        srtrt.upscale(image, model=model, precision="int8")
        tags.append(int8_graph_tag(srtrt.load_model(model).int8_calibration))
        assert tags[-1] in api._current["backend"].describe()
    assert tags[0] != tags[1]
    api.close()


def test_the_int8_agreement_is_measured_again_on_another_cpu(files, monkeypatch):
    """A CPU with bf16 instructions runs OpenVINO int8's float layers in bf16, one without in fp32: one
    SPAN's int8 agreed to 91.7 dB on the one and 40.6 dB on the other, and a cache shared between them
    carried the first figure to the second."""
    from srtrt import hardware
    from srtrt.engine.backends import agreement
    from srtrt.engine.backends.torch_backend import TorchBackend

    view, made = srtrt.load_model(files["c2"]), []

    def make():
        made.append(1)
        return TorchBackend(view, "cpu", "fp32")

    agreement.measured_agreement(view, "torch", "fp32", make)
    agreement.measured_agreement(view, "torch", "fp32", make)
    assert len(made) == 1  # cached
    flags = hardware.cpu_flags()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags ^ {"avx512_bf16"})  # the other machine
    agreement.measured_agreement(view, "torch", "fp32", make)
    assert len(made) == 2


# ---------------------------------------------------------------------------------------------
# srtrt run --ray: the driver and its actors, on a stand-in for Ray that runs the actor in this process


class _Dataset:
    made: list = []

    def __init__(self, items):
        self.items = items

    def map_batches(self, fn, fn_constructor_args=(), **kwargs):
        self.fn, self.args = fn, fn_constructor_args
        _Dataset.made.append(self)
        return self

    def iter_rows(self):
        actor = self.fn(*self.args)
        for item in self.items:
            rows = actor({k: [v] for k, v in item.items()})
            yield {k: v[0] for k, v in rows.items()}


def _stand_in_ray():
    data = types.ModuleType("ray.data")
    data.from_items = _Dataset
    data.ActorPoolStrategy = lambda size: ("pool", size)
    data.DataContext = types.SimpleNamespace(get_current=lambda: types.SimpleNamespace(enable_progress_bars=False))
    ray = types.ModuleType("ray")
    ray.__version__, ray.data = "2.60.0", data
    ray.is_initialized = lambda: True  # a cluster "already connected": nothing to start or shut down
    ray.cluster_resources = lambda: {"CPU": 1}
    return ray, data


def test_ray_actors_get_the_community_model_and_outputs_carry_its_scale(files, tmp_path, capsys, monkeypatch):
    ray, data = _stand_in_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.data", data)
    _Dataset.made.clear()
    for i in range(2):
        Image.fromarray(smooth_image(12, 16, seed=i)).save(tmp_path / f"in{i}.png")
    out = tmp_path / "out"
    code = main(["run", str(tmp_path / "in0.png"), str(tmp_path / "in1.png"), "-o", str(out), "--model",
                 str(files["c2"]), "--backend", "torch", "--precision", "fp32", "--allow-noncommercial", "--ray"])
    err = capsys.readouterr().err
    assert code == 0, err
    (dataset,) = _Dataset.made
    options, says_setup = dataset.args
    assert (options.model, options.allow_noncommercial, options.device) == (str(files["c2"]), True, "cpu")
    assert says_setup is False  # actors on this machine: the driver said the backend line
    assert sorted(p.name for p in out.iterdir()) == ["in0_x2.png", "in1_x2.png"]
    assert Image.open(out / "in0_x2.png").size == (32, 24)
    assert "srtrt: 2 done, 0 skipped, 0 failed" in err


# ---------------------------------------------------------------------------------------------
# --allow-noncommercial


def test_every_model_command_takes_allow_noncommercial():
    commands = {"run": ["x"], "eval": ["d"], "compare": ["i", "-o", "o"], "calibrate": ["p"], "export": ["-o", "o"],
                "build": []}
    for command, rest in commands.items():
        args = parser().parse_args([command, *rest, "--allow-noncommercial"])
        assert args.allow_noncommercial is True
        assert parser().parse_args([command, *rest]).allow_noncommercial is False


def test_allow_noncommercial_reaches_the_loader_from_upscale_eval_and_calibrate(files, photos, monkeypatch, capsys,
                                                                                tmp_path):
    from srtrt.engine.batch import api

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path))  # the calibration below stays out of the module's cache
    real, seen = srtrt.load_model, []

    def recording(model=None, allow_noncommercial=False):
        seen.append((model, allow_noncommercial))
        return real(model, allow_noncommercial)

    monkeypatch.setattr(srtrt, "load_model", recording)
    image = Image.fromarray(smooth_image(10, 12))
    try:
        out = srtrt.upscale(image, model=str(files["c2"]), backend="torch", precision="fp32", allow_noncommercial=True)
    finally:
        api.close()
    assert out.size == (24, 20) and seen[-1] == (str(files["c2"]), True)
    assert main(["eval", str(photos), "--model", str(files["c2"]), "--allow-noncommercial", "--json"]) == 0
    assert seen[-1] == (str(files["c2"]), True)
    main(["calibrate", str(photos), "--model", str(files["c2"]), "--allow-noncommercial"])
    assert seen[-1] == (str(files["c2"]), True)
    capsys.readouterr()


def test_build_refuses_fp16_for_a_model_spandrel_marks_unsafe_in_fp16(files, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    from dataclasses import replace

    from srtrt.engine.toolchain import trt_build

    view = srtrt.load_model(files["c2"])
    view.facts = replace(view.facts, half=False)  # as spandrel says of SwinIR, RCAN, ...
    monkeypatch.setattr(srtrt, "load_model", lambda model=None, allow_noncommercial=False: view)
    with pytest.raises(srtrt.SrtrtError, match=r"--precision fp16: Compact does not support fp16 \(spandrel marks it "
                                               r"unsafe: its outputs overflow or go NaN\); build with --precision fp32"):
        trt_build.build(model=str(files["c2"]), tensorrt="rtx", out=io.StringIO())


@pytest.mark.slow
def test_ray_run_on_a_local_cluster(files, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    for i in range(2):
        Image.fromarray(smooth_image(12, 16, seed=i)).save(tmp_path / f"in{i}.png")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        code = main(["run", str(tmp_path / "in0.png"), str(tmp_path / "in1.png"), "-o", str(tmp_path / "out"),
                     "--model", str(files["grey"]), "--backend", "torch", "--precision", "fp32", "--ray", "-q"])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in0_x2.png", "in1_x2.png"]


def test_openvino_refuses_bf16_where_spandrel_says_the_model_overflows_in_it(files):
    """The torch backend refused bf16 for a model spandrel marks unsafe in it (AuraSR); openvino ran it."""
    pytest.importorskip("openvino")
    from dataclasses import replace

    from srtrt.engine.backends import create_backend

    view = srtrt.load_model(files["c2"])
    view.facts = replace(view.facts, bfloat16=False)
    with pytest.raises(srtrt.SrtrtError, match=r"Compact does not support bf16 \(spandrel marks it unsafe"):
        create_backend("openvino", precision="bf16", view=view)


def test_onnxruntime_refuses_fp16_where_spandrel_says_the_model_overflows(files, tmp_path, capsys):
    """The torch backend, export and build refused it; onnxruntime exported and ran it in fp16."""
    Image.fromarray(smooth_image(24, 24, seed=3)).save(tmp_path / "in.png")
    line = one_line_exit_2(capsys, ["run", str(tmp_path / "in.png"), "--model", str(files["swinir"]),
                                    "--backend", "onnxruntime", "--precision", "fp16"])
    assert "SwinIR does not support fp16 (spandrel marks it unsafe: its outputs overflow or go NaN)" in line
    assert not (tmp_path / "in_x2.png").exists()
