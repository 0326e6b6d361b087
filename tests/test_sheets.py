"""Small images of many sizes sharing one window (engine/datapath/sheets.py, engine/batch/sheet_runs.py):
the packing, the masked networks on torch and OpenVINO, and `srtrt run` over such a folder."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.datapath import sheets
from srtrt.engine.datapath.imageio import read_image
from srtrt.engine.datapath.writers import open_writer

from conftest import random_view, smooth_image
from run_helpers import partials, run_cli, same_up_to_rounding, save_tiny_model, write_many_sizes


def _apart(a: sheets.Placement, b: sheets.Placement) -> int:
    """Pixels between two placed images (0 where they touch or overlap)."""
    dy = max(a.top - (b.top + b.height), b.top - (a.top + a.height), 0)
    dx = max(a.left - (b.left + b.width), b.left - (a.left + a.width), 0)
    return max(dy, dx)


@pytest.mark.parametrize("seed", range(5))
def test_packed_images_lie_inside_the_sheet_at_least_the_gap_apart(seed):
    rng = np.random.default_rng(seed)
    sizes = [(int(h), int(w)) for h, w in rng.integers(8, 200, (40, 2))]
    sheet, gap = (256, 320), 4
    placed = sheets.pack(sizes, sheet, gap)
    assert placed and len({p.index for p in placed}) == len(placed)
    for p in placed:
        assert (p.height, p.width) == sizes[p.index]
        assert 0 <= p.top and p.top + p.height <= sheet[0] and 0 <= p.left and p.left + p.width <= sheet[1]
    for a, b in itertools.combinations(placed, 2):
        assert _apart(a, b) >= gap, (a, b)


def test_a_sheet_is_filled_and_what_is_left_goes_on_the_next():
    sizes = [(100, 100)] * 9
    first = sheets.pack(sizes, (310, 310), 5)
    assert len(first) == 9  # three rows of three, 5 px apart, touching the far edges: exactly full
    assert len(sheets.pack(sizes, (309, 309), 5)) == 4
    with pytest.raises(ValueError, match="does not fit"):
        sheets.pack([(400, 10)], (310, 310), 5)


def test_masks_follow_each_layers_resolution():
    mask = torch.zeros(1, 1, 4, 6)
    mask[..., 1:3, 2:6] = 1
    finer = sheets.masks_at(mask, 8, 12)
    assert finer.shape == (1, 1, 8, 12) and torch.equal(finer[..., ::2, ::2], mask)
    assert torch.equal(sheets.masks_at(finer, 4, 6), mask)


def _sheet_of(images, sheet, gap):
    placed = sheets.pack([im.shape[:2] for im in images], sheet, gap)
    assert len(placed) == len(images)
    x, mask = sheets.compose(images, placed, sheet)
    return placed, x, mask


def _alone(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


SIZES = [(37, 53), (20, 64), (45, 30), (16, 17), (50, 41)]


def test_torch_masked_sheet_equals_each_images_whole_pass_fp32():
    view = random_view(blocks=2, channels=8, seed=5)
    backend = TorchBackend(view, "cpu", "fp32")
    images = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    placed, x, mask = _sheet_of(images, (96, 128), view.facts.sheet_gap)
    out = backend.infer_masked(x, mask)
    plain = backend.infer(x)  # the same sheet without masks: images see their neighbours and the gaps
    worst_plain = 0.0
    for p in placed:
        ref = backend.infer(_alone(images[p.index]))
        cut = out[..., p.top * 4:(p.top + p.height) * 4, p.left * 4:(p.left + p.width) * 4]
        assert (cut - ref).abs().max().item() <= 1e-5
        unmasked = plain[..., p.top * 4:(p.top + p.height) * 4, p.left * 4:(p.left + p.width) * 4]
        worst_plain = max(worst_plain, (unmasked - ref).abs().max().item())
        assert np.array_equal(sheets.cut(out, p, 4, np.uint8),
                              sheets.cut(ref, sheets.Placement(0, 0, 0, p.height, p.width), 4, np.uint8))
    assert worst_plain > 1e-3  # the masks are what makes it exact


def test_the_gap_is_the_widest_border_a_conv_reads():
    assert random_view().facts.sheet_gap == 4  # the 9x9 head at LR
    from srtrt.nets import InferenceView, SRResNet, SRResNetConfig

    narrow = InferenceView(SRResNet(SRResNetConfig(blocks=1, channels=4, head_kernel=3, tail_kernel=9)))
    assert narrow.facts.sheet_gap == 1  # 3x3 convs; the tail's 9x9 at x4 reads 4 px there, one LR pixel


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_masked_sheet_equals_each_images_static_graph(precision, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from srtrt.engine.backends.openvino_backend import OpenVinoBackend
    from srtrt.engine.toolchain.export import export_onnx
    from srtrt.engine.toolchain.quantize import calibrate

    view = random_view(blocks=2, channels=8, seed=6)
    if precision == "int8":
        view.int8_calibration = calibrate(view, [_alone(smooth_image(40, 48, seed=s)) for s in (1, 7)])
    onnx_file = export_onnx(view, tmp_path / "m.onnx", precision=precision, polyphase=True)
    backend = OpenVinoBackend(onnx_file, view.scale, view.radius, precision, cache=tmp_path / "blobs", channels=8)
    images = [smooth_image(h, w, seed=10 + i) for i, (h, w) in enumerate(SIZES)]
    placed, x, mask = _sheet_of(images, (96, 128), view.facts.sheet_gap)
    out = backend.infer_masked(x, mask)
    for p in placed:
        h, w = p.height, p.width
        ref = backend._run(backend._compile([1, 3, h, w], f"{h}x{w}"), _alone(images[p.index]))  # static, its own shape
        cut = out[..., p.top * 4:(p.top + h) * 4, p.left * 4:(p.left + w) * 4]
        assert (cut - ref).abs().max().item() <= 1e-5
    ones = backend.infer_masked(x, torch.ones_like(mask))
    assert torch.equal(ones, backend._run(backend._compile([1, 3, 96, 128], "sheet"), x))  # the masks cost no values


def _openvino():
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")  # the exporter that writes the graph the backend runs


def test_srtrt_run_puts_a_folder_of_many_small_sizes_on_sheets_with_the_outputs_of_one_at_a_time(
        tmp_path, capsys, own_srtrt_cache, monkeypatch):
    _openvino()
    cut = []
    real_cut = sheets.cut
    monkeypatch.setattr(sheets, "cut", lambda *a: cut.append(1) or real_cut(*a))  # counts the images on sheets
    weights = save_tiny_model(tmp_path, channels=8)
    folder = tmp_path / "in"
    write_many_sizes(folder)
    Image.fromarray(smooth_image(30, 31, channels=4, seed=3)).save(folder / "alpha.png")  # alpha bicubic beside it
    logo = smooth_image(27, 33, channels=4, seed=5)
    logo[:, :15, 3] = 0  # hidden colour: filled from the visible pixels first, as alone
    Image.fromarray(logo).save(folder / "logo.png")
    Image.fromarray(smooth_image(26, 35, channels=1, seed=4)[..., 0]).save(folder / "grey.png")  # grey: alone
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # fails alone, one line
    with open_writer(folder / "deep.png", 39, 28, 3, 16) as writer:  # 16-bit RGB: on the sheet, stays 16-bit
        writer.write_rows(smooth_image(28, 39, seed=9, dtype=np.uint16))
    run = ["--model", weights, "--backend", "openvino", "--precision", "fp32"]
    code, err = run_cli(capsys, folder, "-o", tmp_path / "out", *run)
    assert code == 1 and "share 512x512 windows (sheets)" in err
    assert len(cut) == 13  # the 10, alpha, logo and deep; grey alone
    assert err.count("broken.png") == 1 and "Traceback" not in err
    assert not partials(tmp_path / "out")
    (tmp_path / "alone").mkdir()
    for source in sorted(folder.glob("*.png")):
        if source.name == "broken.png":
            continue
        alone = tmp_path / "alone" / f"{source.stem}_x4.png"
        assert run_cli(capsys, source, "-o", alone, *run)[0] == 0
        sheet_output, alone_output = read_image(tmp_path / "out" / alone.name), read_image(alone)
        assert same_up_to_rounding(sheet_output.pixels, alone_output.pixels), source.name
        assert (sheet_output.alpha is None) == (alone_output.alpha is None)
        assert sheet_output.alpha is None or np.array_equal(sheet_output.alpha, alone_output.alpha)
    assert read_image(tmp_path / "out" / "deep_x4.png").pixels.dtype == np.uint16


def test_int8_gives_an_image_the_same_bytes_on_a_sheet_alone_and_in_tiles(tmp_path, capsys, own_srtrt_cache):
    """The default model in int8 (what `auto` picks on many CPUs): a small image alone ran on the
    dynamic-shape model, which rounds otherwise than the static ones sheets and large windows run
    on, so a folder's outputs were 5-6 levels off each image's own pass, on half the samples, and
    tiles of 144 px off the whole pass of a 420x400 image (static) by as much."""
    _openvino()
    folder = tmp_path / "in"
    write_many_sizes(folder)
    run = ["--backend", "openvino", "--precision", "int8"]
    code, err = run_cli(capsys, folder, "-o", tmp_path / "out", *run)
    assert code == 0 and "share 512x512 windows (sheets)" in err, err
    (tmp_path / "alone").mkdir()
    (tmp_path / "tiled").mkdir()
    for source in sorted(folder.glob("*.png"))[::4]:
        alone = tmp_path / "alone" / f"{source.stem}_x4.png"
        assert run_cli(capsys, source, "-o", alone, *run)[0] == 0
        tiled = tmp_path / "tiled" / alone.name
        assert run_cli(capsys, source, "-o", tiled, "--tile", "8", *run)[0] == 0
        sheet_output = read_image(tmp_path / "out" / alone.name).pixels
        assert np.array_equal(sheet_output, read_image(alone).pixels), source.name
        assert np.array_equal(sheet_output, read_image(tiled).pixels), source.name
    Image.fromarray(smooth_image(400, 420, seed=3)).save(tmp_path / "large.png")
    for tile in ("0", "64"):
        assert run_cli(capsys, tmp_path / "large.png", "-o", tmp_path / f"large{tile}.png", "--tile", tile, *run)[0] == 0
    assert np.array_equal(read_image(tmp_path / "large0.png").pixels, read_image(tmp_path / "large64.png").pixels)


def test_a_sheet_run_skips_existing_outputs_and_keeps_them(tmp_path, capsys, own_srtrt_cache):
    _openvino()
    weights = save_tiny_model(tmp_path, channels=4)
    folder = tmp_path / "in"
    write_many_sizes(folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "small3_x4.png").write_bytes(b"kept")
    code, err = run_cli(capsys, folder, "-o", out, "--model", weights, "--backend", "openvino", "--precision", "fp32")
    assert code == 0 and "(sheets)" in err and "small3_x4.png: exists, skipped" in err
    assert (out / "small3_x4.png").read_bytes() == b"kept"
    assert len(list(out.glob("*_x4.png"))) == 10


def test_torch_runs_small_images_one_by_one(tmp_path, capsys):
    """torch has no per-shape cost, and bigger windows cost it more per pixel: no sheets (Backend.shares_sheets)."""
    weights = save_tiny_model(tmp_path, channels=4)
    write_many_sizes(tmp_path / "in")
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", weights, "--backend", "torch")
    assert code == 0 and "10 done" in err and "sheets" not in err


def test_the_varied_bench_path_runs_sheets(tmp_path, own_srtrt_cache):
    _openvino()
    import sys
    from pathlib import Path

    from srtrt.engine.backends import create_backend

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import varied_run

    backend = create_backend("openvino", precision="fp32", view=random_view(blocks=1, channels=4)).backend
    sizes = write_many_sizes(tmp_path / "in")
    result = varied_run.run_files(backend, sorted((tmp_path / "in").glob("*.png")), tmp_path / "out")
    assert result["images"] == 10 and result["sheets"] == 1
    assert result["output_mp"] == pytest.approx(sum(h * w * 16 for h, w in sizes.values()) / 1e6)


def test_a_community_model_whose_gap_was_measured_runs_its_small_images_on_sheets(tmp_path, capsys, own_srtrt_cache,
                                                                                 monkeypatch):
    """RRDBNet x2 pixel-unshuffles by 2 (sides multiples of 4 here): its images start on that grid."""
    _openvino()
    pytest.importorskip("spandrel")
    from spandrel.architectures.ESRGAN import ESRGAN

    from srtrt.engine.backends.openvino_backend import OpenVinoBackend

    sheet_calls = []
    real = OpenVinoBackend.infer_masked
    monkeypatch.setattr(OpenVinoBackend, "infer_masked", lambda self, x, m: sheet_calls.append(1) or real(self, x, m))

    from conftest import save_community_models

    weights = save_community_models(tmp_path, {"x2": lambda: ESRGAN(in_nc=12, num_filters=8, num_blocks=1, scale=4,
                                                                   shuffle_factor=2)})["x2"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(9):
        Image.fromarray(smooth_image(16 + 4 * i, 40 - 4 * (i % 3), seed=i)).save(folder / f"s{i}.png")
    Image.fromarray(smooth_image(18, 22, seed=20)).save(folder / "odd.png")  # not on its grid: runs alone
    run = ["--model", weights, "--backend", "openvino", "--precision", "fp32"]
    code, err = run_cli(capsys, folder, "-o", tmp_path / "out", *run)
    assert code == 0 and "(sheets)" in err and "10 done" in err and len(sheet_calls) == 1
    (tmp_path / "alone").mkdir()
    for source in sorted(folder.glob("*.png")):
        alone = tmp_path / "alone" / f"{source.stem}_x2.png"
        assert run_cli(capsys, source, "-o", alone, *run)[0] == 0
        assert same_up_to_rounding(read_image(tmp_path / "out" / alone.name).pixels, read_image(alone).pixels), \
            source.name


def test_a_community_models_int8_images_run_one_by_one_with_the_bytes_they_get_alone(tmp_path, capsys,
                                                                                     own_srtrt_cache):
    """OpenVINO's int8 masked graph of a community model rounds otherwise than its plain one even under
    a mask of ones: a folder's images on sheets were 2 levels off their own pass on 19 % of samples."""
    _openvino()
    pytest.importorskip("spandrel")
    from spandrel.architectures.ESRGAN import ESRGAN

    import srtrt
    from srtrt import zoo
    from srtrt.engine.toolchain.quantize import calibrate

    from conftest import save_community_models

    weights = save_community_models(tmp_path, {"rrdb": lambda: ESRGAN(num_filters=16, num_blocks=2, scale=4)})["rrdb"]
    view = srtrt.load_model(weights)
    photos = [torch.from_numpy(smooth_image(40, 48, seed=s)).permute(2, 0, 1)[None].float() / 255 for s in (1, 7)]
    zoo.store_calibration(view.checkpoint_sha256, calibrate(view, photos))
    folder = tmp_path / "in"
    write_many_sizes(folder)
    run = ["--model", weights, "--backend", "openvino", "--precision", "int8"]
    code, err = run_cli(capsys, folder, "-o", tmp_path / "out", *run)
    assert code == 0 and "(sheets)" not in err, err
    (tmp_path / "alone").mkdir()
    for source in sorted(folder.glob("*.png"))[::3]:
        alone = tmp_path / "alone" / f"{source.stem}_x4.png"
        assert run_cli(capsys, source, "-o", alone, *run)[0] == 0
        assert np.array_equal(read_image(tmp_path / "out" / alone.name).pixels, read_image(alone).pixels), source.name


def test_auto_times_an_uncalibrated_community_models_folder_on_the_windows_its_sheets_are(tmp_path, own_srtrt_cache):
    """Only int8 of a community model runs a folder one image at a time, and only a calibrated model
    has int8: an uncalibrated Compact, whose every path shares sheets or has no per-shape cost, was
    timed on new sizes."""
    _openvino()
    pytest.importorskip("spandrel")
    from spandrel.architectures.Compact import Compact

    import srtrt
    from srtrt.engine.backends import create_backend

    from conftest import save_community_models

    weights = save_community_models(tmp_path, {"compact": lambda: Compact(num_feat=8, num_conv=2, upscale=4)})
    selection = create_backend("auto", view=srtrt.load_model(weights["compact"]), shape_class="many-sizes")
    selection.backend.close()
    assert "window" in selection.reason and "size not seen before" not in selection.reason, selection.reason


def test_a_sheet_the_backend_cannot_compile_leaves_its_images_to_run_one_by_one(tmp_path, capsys, own_srtrt_cache,
                                                                               monkeypatch):
    """Fault injection: the graph with masks failing to compile (as OpenVINO says it) costs the run
    its sheets, said once, not its images."""
    _openvino()
    from srtrt.engine.backends.openvino_backend import OpenVinoBackend
    from srtrt.errors import SrtrtError

    def cannot(self, x, mask):
        raise SrtrtError("OpenVINO cannot compile this ONNX file for 1x3x512x512 with masks (injected)")

    monkeypatch.setattr(OpenVinoBackend, "infer_masked", cannot)
    weights = save_tiny_model(tmp_path, channels=4)
    write_many_sizes(tmp_path / "in", count=40)  # more than one sheet's worth: the second is not tried
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", weights, "--backend", "openvino",
                        "--precision", "fp32")
    assert code == 0 and "40 done" in err and err.count("small images run one at a time") == 1
    assert len(list((tmp_path / "out").glob("*_x4.png"))) == 40


def test_a_sheet_that_runs_out_of_memory_leaves_its_images_to_run_alone(tmp_path, capsys, own_srtrt_cache,
                                                                         monkeypatch):
    """Fault injection: the host cannot hold a sheet (MemoryError); its images run one by one, each
    with the usual out-of-memory ladder, and the next sheet is tried again."""
    _openvino()
    from srtrt.engine.backends.openvino_backend import OpenVinoBackend

    calls = []
    real = OpenVinoBackend.infer_masked

    def first_fails(self, x, mask):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("injected")
        return real(self, x, mask)

    monkeypatch.setattr(OpenVinoBackend, "infer_masked", first_fails)
    weights = save_tiny_model(tmp_path, channels=4)
    (tmp_path / "in").mkdir()
    for i in range(16):  # about two sheets' worth
        Image.fromarray(smooth_image(150 + i, 170 - i, seed=i)).save(tmp_path / "in" / f"p{i}.png")
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", weights, "--backend", "openvino",
                        "--precision", "fp32")
    assert code == 0 and "16 done" in err and "Traceback" not in err and len(calls) >= 2
    assert len(list((tmp_path / "out").glob("*_x4.png"))) == 16


def test_an_image_a_sheet_gives_nan_for_fails_alone_and_the_others_are_written(tmp_path, capsys, own_srtrt_cache,
                                                                              monkeypatch):
    """Fault injection: the sheet's output NaN over one image's part (an overflow of its precision).
    That image was cut as black and written, said done, exit 0; the tiled runtime refuses NaN."""
    _openvino()
    from srtrt.engine.backends.openvino_backend import OpenVinoBackend

    real = OpenVinoBackend.infer_masked

    def nan_over_pure_red(self, x, mask):
        y = real(self, x, mask)
        red = (x[:, 0] == 1) & (x[:, 1] == 0) & (x[:, 2] == 0)
        return y.masked_fill(red.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None], float("nan"))

    monkeypatch.setattr(OpenVinoBackend, "infer_masked", nan_over_pure_red)
    weights = save_tiny_model(tmp_path, channels=4)
    write_many_sizes(tmp_path / "in")
    hot = smooth_image(30, 34, seed=7)
    hot[10:16, 12:18] = (255, 0, 0)
    Image.fromarray(hot).save(tmp_path / "in" / "hot.png")
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", weights, "--backend", "openvino",
                        "--precision", "fp32")
    assert code == 1 and "(sheets)" in err and "Traceback" not in err, err
    assert "hot.png: the network gave NaN or infinite values" in err and "10 done" in err, err
    assert not (tmp_path / "out" / "hot_x4.png").exists() and len(list((tmp_path / "out").glob("*_x4.png"))) == 10
    assert not partials(tmp_path / "out")


def test_what_a_sheet_would_change_runs_alone(tmp_path, capsys, own_srtrt_cache):
    """A grey model (each channel of an RGB image is an image to it), images below the model's minimum
    side (refused alone, so refused here too) and `--tile` / `--margin` (a sheet is one window): no sheets."""
    _openvino()
    pytest.importorskip("spandrel")
    from spandrel.architectures.ESRGAN import ESRGAN

    from conftest import save_community_models

    models = save_community_models(tmp_path, {"grey": lambda: ESRGAN(in_nc=1, out_nc=1, num_filters=8, num_blocks=1),
                                              "rgb": lambda: ESRGAN(num_filters=8, num_blocks=1)})
    write_many_sizes(tmp_path / "in")
    run = ["--backend", "openvino", "--precision", "fp32"]
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "grey", "--model", models["grey"], *run)
    assert code == 0 and "10 done" in err and "(sheets)" not in err
    Image.fromarray(smooth_image(1, 1, seed=1)).save(tmp_path / "in" / "dot.png")  # below RRDBNet's 2-pixel side
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "rgb", "--model", models["rgb"], *run)
    assert code == 1 and "(sheets)" in err and "dot.png: image is 1x1, smaller than the 2-pixel side" in err
    assert "10 done" in err and "1 failed" in err
    weights = save_tiny_model(tmp_path, channels=4)
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "tiled", "--model", weights, "--tile", "16", *run)
    assert code == 0 and "(sheets)" not in err


def test_alpha_through_the_network_runs_alone(tmp_path, capsys, own_srtrt_cache, monkeypatch):
    """`--alpha model` runs the alpha plane through the network as an image of its own: not on a sheet."""
    _openvino()
    cut = []
    real_cut = sheets.cut
    monkeypatch.setattr(sheets, "cut", lambda *a: cut.append(1) or real_cut(*a))
    weights = save_tiny_model(tmp_path, channels=4)
    write_many_sizes(tmp_path / "in")
    Image.fromarray(smooth_image(30, 31, channels=4, seed=3)).save(tmp_path / "in" / "alpha.png")
    run = ["--model", weights, "--backend", "openvino", "--precision", "fp32", "--alpha", "model"]
    code, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", *run)
    assert code == 0 and "(sheets)" in err and len(cut) == 10
    assert run_cli(capsys, tmp_path / "in" / "alpha.png", "-o", tmp_path / "alone.png", *run)[0] == 0
    assert np.array_equal(read_image(tmp_path / "out" / "alpha_x4.png").alpha, read_image(tmp_path / "alone.png").alpha)


def test_a_network_that_pads_its_input_inside_runs_its_images_one_by_one():
    """SRFormer pads its input to a window multiple before its first conv: the sheet's mask fit
    no layer, and measuring the gap was a RuntimeError traceback from load_model and upscale."""
    import torch.nn.functional as F

    from srtrt.community import CommunityModel
    from srtrt.zoo import measure_sheet_gap

    class PadsToEight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3 * 16, 3, padding=1)

        def forward(self, x):
            h, w = x.shape[2:]
            x = F.pad(x, (0, -w % 8, 0, -h % 8))
            return F.pixel_shuffle(self.conv(x), 4)[..., :h * 4, :w * 4]

    model = CommunityModel(module=PadsToEight(), architecture_name="PadsToEight", architecture_id="PadsToEight",
                           tags=(), scale=4, input_channels=3, output_channels=3, supports_half=True,
                           supports_bfloat16=True,
                           minimum=1, multiple_of=1, square=False, tiling="supported", purpose="SR",
                           global_operations=False, sha256="0" * 64)
    assert measure_sheet_gap(model) == 0
