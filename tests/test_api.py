"""`srtrt.upscale`: the Python face of `srtrt run`, kept to the same promises.

PIL in -> PIL out (modes, alpha, 16-bit), path -> file, skip/overwrite, errors as one-line
SrtrtError, the out-of-memory ladder and backend cleanup: all through the same per-file
pipeline as the CLI, so the outputs are the CLI's outputs byte for byte.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import srtrt
from srtrt.engine.batch import api
from srtrt.errors import SrtrtError

from conftest import smooth_image
from run_helpers import partials, pixels, run_cli, save_tiny_model, write_images

FP32 = {"backend": "torch", "precision": "fp32"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("model")))


@pytest.fixture(autouse=True)
def fresh_backend():
    api.close()
    yield
    api.close()


def test_pil_in_pil_out_equals_the_cli_output(tmp_path, capsys, model):
    (source,) = write_images(tmp_path, 1, height=30, width=41)
    code, err = run_cli(capsys, source, "-o", tmp_path / "cli.png", "--model", model, "--precision", "fp32",
                        "--backend", "torch")
    assert code == 0, err
    with Image.open(source) as img:
        out = srtrt.upscale(img, model=model, **FP32)
    assert out.mode == "RGB" and out.size == (41 * 4, 30 * 4)
    assert np.array_equal(np.asarray(out), pixels(tmp_path / "cli.png"))


def test_a_file_written_by_the_api_is_the_clis_byte_for_byte(tmp_path, capsys, model):
    """An image of several tile rows was streamed into its file by the API (and by a Ray actor,
    which runs the same call), but encoded whole by `srtrt run`: equal pixels, other PNG bytes."""
    (source,) = write_images(tmp_path, 1, height=30, width=41)
    options = ("--model", model, "--precision", "fp32", "--backend", "torch", "--tile", "8")
    assert run_cli(capsys, source, "-o", tmp_path / "cli.png", *options)[0] == 0
    srtrt.upscale(source, tmp_path / "api.png", model=model, tile=8, **FP32)
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()


def test_a_model_file_written_again_between_calls_is_read_again(tmp_path):
    """The kept backend was found by the model's path alone: a notebook that trained on and saved
    over the same file went on upscaling with the first weights."""
    (source,) = write_images(tmp_path, 1, height=20, width=24)
    path = str(save_tiny_model(tmp_path, seed=0))
    first = np.asarray(srtrt.upscale(source, model=path, **FP32))
    save_tiny_model(tmp_path, seed=1)
    second = np.asarray(srtrt.upscale(source, model=path, **FP32))
    api.close()
    fresh = np.asarray(srtrt.upscale(source, model=path, **FP32))
    assert not np.array_equal(first, second) and np.array_equal(second, fresh)


def test_a_checkpoint_named_by_its_stem_and_saved_again_is_read_again(tmp_path):
    (source,) = write_images(tmp_path, 1, height=20, width=24)
    save_tiny_model(tmp_path, seed=0)
    stem = str(tmp_path / "tiny")  # tiny.safetensors + tiny.json
    first = np.asarray(srtrt.upscale(source, model=stem, **FP32))
    save_tiny_model(tmp_path, seed=1)
    assert not np.array_equal(first, np.asarray(srtrt.upscale(source, model=stem, **FP32)))


def test_options_of_the_wrong_type_or_an_empty_model_are_one_line(tmp_path):
    """overwrite="false" is a true string: it replaced the file it was to keep. An empty model
    (an unset variable) was a ValueError traceback from pathlib."""
    (source,) = write_images(tmp_path, 1, height=20, width=24)
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"mine")
    with pytest.raises(SrtrtError, match="overwrite must be True or False, not 'false'"):
        srtrt.upscale(source, kept, overwrite="false")
    with pytest.raises(SrtrtError, match="allow_noncommercial must be True or False"):
        srtrt.upscale(source, allow_noncommercial="no")
    assert kept.read_bytes() == b"mine"
    for flag in (np.bool_(False), np.array([1, 2]).sum() > 5):  # numpy's bools are bools: they were refused
        with pytest.raises(SrtrtError, match="exists [(]overwrite=True replaces it[)]"):
            srtrt.upscale(source, kept, overwrite=flag)
        assert kept.read_bytes() == b"mine"
    srtrt.upscale(source, kept, overwrite=np.array([True]).all())
    assert kept.read_bytes().startswith(b"\x89PNG")
    for empty in ("", " "):
        with pytest.raises(SrtrtError, match="the model is empty"):
            srtrt.upscale(source, model=empty)
    for folder in (".", "/"):
        with pytest.raises(SrtrtError, match="names no model file"):
            srtrt.load_model(folder)
    # load_model took "no" as an opt-in, and a model of the wrong type was a TypeError from pathlib
    with pytest.raises(SrtrtError, match="allow_noncommercial must be True or False, not 'no'"):
        srtrt.load_model(allow_noncommercial="no")
    view = srtrt.load_model()
    for call in (lambda: srtrt.upscale(source, model=view), lambda: srtrt.load_model(view)):
        with pytest.raises(TypeError, match="not srtrt.nets.InferenceView [(]a loaded model is called directly"):
            call()
    for wrong in (source.open("rb"), __import__("io").BytesIO()):
        with pytest.raises(TypeError, match="output takes a file or folder path"):
            srtrt.upscale(source, wrong)


def test_numpy_integers_and_byte_paths_are_taken(tmp_path):
    """tile=np.int64(8) was refused as not an integer; a bytes path was taken as `output` only."""
    (source,) = write_images(tmp_path, 1, height=12, width=16)
    out = srtrt.upscale(bytes(source), tile=np.int64(8), margin=np.int32(40), model=b"srresnet", **FP32)
    assert np.array_equal(np.asarray(out), np.asarray(srtrt.upscale(source, **FP32)))


def test_a_pil_image_is_held_to_max_pixels_as_a_path_is(tmp_path):
    (source,) = write_images(tmp_path, 1, height=20, width=24)
    with pytest.raises(SrtrtError, match="over the limit of 100"):
        srtrt.upscale(source, max_pixels=100)
    with Image.open(source) as img, pytest.raises(SrtrtError, match="over the limit of 100"):
        srtrt.upscale(img, max_pixels=100)
    with pytest.raises(SrtrtError, match="over the limit of 100"):
        srtrt.upscale(Image.new("RGB", (24, 20)), max_pixels=100)


def test_an_output_named_by_bytes_is_written(tmp_path):
    (source,) = write_images(tmp_path, 1, height=20, width=24)
    written = srtrt.upscale(source, bytes(tmp_path / "out.png"), **FP32)
    assert written == tmp_path / "out.png" and Image.open(written).size == (96, 80)


def test_an_opened_file_is_read_as_its_path_is(tmp_path):
    """`Image.open(f)` skipped what reading `f` does: a signed 8-bit TIFF was upscaled as garbage
    (-100 read as 156) where the path is refused; a grey PNG's colour key gave no alpha."""
    tifffile = pytest.importorskip("tifffile")
    signed = tmp_path / "signed.tif"
    tifffile.imwrite(signed, np.tile(np.linspace(-100, 100, 24).astype(np.int8), (20, 1)))
    for given in (signed, Image.open(signed)):
        with pytest.raises(SrtrtError, match="signed 8-bit integer samples"):
            srtrt.upscale(given, **FP32)
    keyed = tmp_path / "keyed16.png"
    grey = smooth_image(20, 24)[:, :, 0].astype(np.uint16) * 257
    Image.fromarray(grey).save(keyed, transparency=int(grey[0, 0]))  # a 16-bit grey PNG with a tRNS colour key
    with pytest.warns(UserWarning, match="16-bit colour or grey[+]alpha cannot be held by a PIL image"):
        from_path, from_pil = srtrt.upscale(keyed, **FP32), srtrt.upscale(Image.open(keyed), **FP32)
    assert from_path.mode == from_pil.mode and np.array_equal(np.asarray(from_path), np.asarray(from_pil))
    assert len(from_path.getbands()) == 2  # the key became alpha


def test_the_tiff_page_the_caller_chose_is_upscaled_and_stays_chosen(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(np.full((32, 32, 3), (200, 0, 0), np.uint8), photometric="rgb")  # the photo
        tiff.write(np.full((8, 8, 3), (0, 0, 200), np.uint8), photometric="rgb", subfiletype=1)  # its thumbnail
    with Image.open(path) as img:
        img.seek(1)
        out = srtrt.upscale(img, **FP32)
        assert out.size == (32, 32) and img.tell() == 1 and img.size == (8, 8)
        assert np.asarray(out)[..., 2].mean() > np.asarray(out)[..., 0].mean()  # the blue page, not the red one


def test_an_edited_tiff_with_a_thumbnail_is_upscaled_as_edited_and_left_as_edited(tmp_path):
    """Counting the pages seeked the caller's image away and back, which reloads its first page
    from the file: the edit was dropped from the result and from the caller's image."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb")  # a black photo
        tiff.write(np.zeros((4, 4, 3), np.uint8), photometric="rgb", subfiletype=1)  # its thumbnail
    with Image.open(path) as img:
        img.load()
        img.paste((255, 255, 255), (0, 0, 16, 16))
        out = srtrt.upscale(img, **FP32)
        assert np.asarray(img).min() == 255 and np.asarray(out).mean() > 200


def test_an_opened_image_is_not_read_again_from_a_file_that_replaced_it(tmp_path, monkeypatch):
    """An unloaded `Image.open(f)` was read again by its name: a file put in its place since (an
    atomic save), or a relative name after a change of folder, was upscaled instead."""
    red, blue = np.zeros((12, 12, 3), np.uint8), np.zeros((12, 12, 3), np.uint8)
    red[..., 0] = blue[..., 2] = 255
    Image.fromarray(red).save(tmp_path / "photo.png")
    Image.fromarray(blue).save(tmp_path / "new.png")
    monkeypatch.chdir(tmp_path)
    img = Image.open("photo.png")
    (tmp_path / "new.png").replace(tmp_path / "photo.png")
    out = np.asarray(srtrt.upscale(img, **FP32)).reshape(-1, 3).mean(0)
    assert out[0] > 200 and out[2] < 50


def test_a_closed_image_is_said_to_be_closed(tmp_path):
    (source,) = write_images(tmp_path, 1, height=8, width=8)
    with Image.open(source) as unloaded:
        pass
    with source.open("rb") as file:  # its file object closed (was "corrupt or unreadable image")
        opened_from_file = Image.open(file)
    loaded = Image.open(source)
    loaded.load()
    loaded.close()
    for img, cause in ((unloaded, "closed before its pixels were loaded"), (loaded, "the PIL image was closed"),
                       (opened_from_file, "closed before its pixels were loaded")):
        with pytest.raises(SrtrtError, match=cause):
            srtrt.upscale(img, **FP32)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_modes_survive_the_round_trip(model, mode):
    rgb = Image.fromarray(smooth_image(20, 24))
    img = rgb.convert(mode) if mode != "LA" else Image.merge("LA", (rgb.convert("L"), rgb.getchannel("G")))
    out = srtrt.upscale(img, model=model, **FP32)
    expected = {"L": "L", "RGBA": "RGBA", "LA": "LA", "P": "RGB"}[mode]
    assert out.mode == expected and out.size == (96, 80)
    if "A" in mode:  # alpha is upscaled with bicubic by default: a smooth plane stays within its range
        alpha = np.asarray(out.getchannel("A"), dtype=int)
        source_alpha = np.asarray(img.getchannel("A"), dtype=int)
        assert source_alpha.min() - 8 <= alpha.min() and alpha.max() <= source_alpha.max() + 8


def test_sixteen_bit_grey_stays_sixteen_bit(tmp_path, model):
    grey = smooth_image(18, 22, channels=1, dtype=np.uint16)[..., 0]
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    out = srtrt.upscale(path, model=model, **FP32)
    values = np.asarray(out)
    assert out.mode == "I;16" and out.size == (88, 72) and values.dtype == np.uint16
    assert values.max() > 255  # the 16-bit range is kept, not cut to 8 bits


def test_path_to_file_skips_existing_unless_overwrite(tmp_path, model):
    (source,) = write_images(tmp_path, 1)
    destination = tmp_path / "out_x4.png"
    assert srtrt.upscale(source, destination, model=model, **FP32) == destination
    first = destination.read_bytes()
    with pytest.raises(SrtrtError, match="exists \\(overwrite=True replaces it\\)") as caught:
        srtrt.upscale(source, destination, model=model, **FP32)
    assert "\n" not in str(caught.value) and destination.read_bytes() == first
    assert srtrt.upscale(source, destination, model=model, overwrite=True, **FP32) == destination
    assert destination.read_bytes() == first and partials(tmp_path) == []


def test_bad_input_is_one_line_srtrt_error_and_nothing_is_written(tmp_path, model):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(SrtrtError) as caught:
        srtrt.upscale(broken, tmp_path / "o.png", model=model, **FP32)
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "o.png").exists() and partials(tmp_path) == []
    with pytest.raises(SrtrtError, match=str(broken)):
        srtrt.upscale(broken, model=model, **FP32)


def test_size_limit_and_wrong_calls(tmp_path, model):
    (source,) = write_images(tmp_path, 1, height=24, width=32)
    with pytest.raises(SrtrtError, match=r"over the limit of 100 .* \(max_pixels= in Python\)"):
        srtrt.upscale(source, model=model, max_pixels=100, **FP32)
    with pytest.raises(TypeError):
        srtrt.upscale(source, model=model, tile_size=64)  # not an option of srtrt run
    with pytest.raises(TypeError, match="path"):
        srtrt.upscale(Image.new("RGB", (8, 8)), tmp_path / "o.png", model=model)
    with pytest.raises(TypeError, match="path"):  # said before any model is opened (none is, here)
        srtrt.upscale(Image.new("RGB", (8, 8)), tmp_path / "o.png", model=str(tmp_path / "absent.pth"))
    with pytest.raises(TypeError, match="takes a PIL image or a file path, not numpy.ndarray"):
        srtrt.upscale(np.zeros((8, 8, 3), np.uint8), model=model)
    for bad in ({"batch": 0}, {"tile": "8"}, {"margin": 1.5}):
        with pytest.raises(SrtrtError, match=f"{next(iter(bad))} must be an integer"):
            srtrt.upscale(source, model=model, **bad)


def test_an_output_folder_named_with_a_separator_is_created_as_srtrt_run_creates_it(tmp_path, model):
    (source,) = write_images(tmp_path, 1, height=24, width=32)
    written = srtrt.upscale(source, f"{tmp_path / 'new'}/", model=model, **FP32)
    assert written == tmp_path / "new" / f"{source.stem}_x4.png" and written.is_file()


def test_out_of_memory_ladder_holds_for_the_api(tmp_path, monkeypatch, model):
    import srtrt.engine.backends as backends

    from test_faults import out_of_memory_above

    made = []

    def create(name="auto", model=None, precision="auto", device=None, view=None, allow_noncommercial=False,
               shape_class="large"):
        view = srtrt.load_model(model)
        made.append(out_of_memory_above(view, 52 * 52))
        return backends.Selection(made[-1], "torch with injected out-of-memory", view.facts)

    (source,) = write_images(tmp_path, 1, height=160, width=160)
    options = {"model": model, "tile": 64, "margin": 10, "batch": 4, **FP32}
    reference = np.asarray(srtrt.upscale(source, **options))
    api.close()
    monkeypatch.setattr(backends, "create_backend", create)
    out = np.asarray(srtrt.upscale(source, **options))
    assert made[0].calls[:3] == [(4, 74, 74), (2, 74, 74), (1, 74, 74)] and set(made[0].calls[3:]) == {(1, 52, 52)}
    diff = np.abs(out.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_backend_is_kept_per_configuration_and_closed_when_replaced(tmp_path, monkeypatch, model):
    import srtrt.engine.backends as backends

    real_create, made, closed = backends.create_backend, [], []

    def create(*args, **kwargs):
        selection = real_create(*args, **kwargs)
        selection.backend.close = lambda b=selection.backend: closed.append(b)
        made.append(selection.backend)
        return selection

    monkeypatch.setattr(backends, "create_backend", create)
    img = Image.fromarray(smooth_image(16, 16))
    srtrt.upscale(img, model=model, **FP32)
    srtrt.upscale(img, model=model, tile=8, **FP32)  # tiles do not change the backend
    assert len(made) == 1 and closed == []
    srtrt.upscale(img, model=model, backend="torch", precision="bf16")
    assert len(made) == 2 and closed == [made[0]]
    api.close()
    assert closed == made


def test_threads_take_turns_on_the_kept_backend(model, tmp_path, own_srtrt_cache):
    """Two threads calling upscale at once on one OpenVINO backend (its infer requests serve one call
    at a time: "Infer Request is busy"), and a third switching models under them: every result is
    the one a lone call gives."""
    import threading

    pytest.importorskip("openvino")
    other = str(save_tiny_model(tmp_path, name="other", seed=1))
    img = Image.fromarray(smooth_image(160, 200))  # several windows a call: calls overlap
    options = {"backend": "openvino", "precision": "fp32", "tile": 48}
    alone = {m: np.asarray(srtrt.upscale(img, model=m, **options)) for m in (model, other)}
    failures, results = [], []

    def calls(m):
        try:
            for _ in range(4):
                results.append((m, np.asarray(srtrt.upscale(img, model=m, **options))))
        except Exception as e:  # noqa: BLE001 - what the test counts
            failures.append(repr(e))

    threads = [threading.Thread(target=calls, args=(m,)) for m in (model, model, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(results) == 12
    assert all(np.array_equal(got, alone[m]) for m, got in results)


def test_a_pil_result_is_upright_and_keeps_its_profile_and_exif(tmp_path, model):
    from test_imageio import srgb_profile
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "camera maker"
    exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003] = 28, 20  # the stored size, as cameras write it
    source = tmp_path / "turned.jpg"
    Image.fromarray(smooth_image(20, 28)).save(source, exif=exif.tobytes(), icc_profile=srgb_profile(), quality=95)
    with Image.open(source) as img:
        out = srtrt.upscale(img, model=model, **FP32)
    assert out.size == (20 * 4, 28 * 4)  # upright: the stored 28x20 turned a quarter
    assert out.info["icc_profile"] == srgb_profile()
    out.save(tmp_path / "saved.png", exif=out.info["exif"])
    with Image.open(tmp_path / "saved.png") as saved:
        assert saved.info["icc_profile"] == srgb_profile()
        assert saved.getexif()[0x0112] == 1 and saved.getexif()[0x010F] == "camera maker"
        assert saved.getexif().get_ifd(0x8769)[0xA002] == 20 * 4  # the result's width, not the input's


def test_a_pil_result_carries_the_files_dpi_and_xmp(tmp_path, model):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><r exif:PixelXDimension="28" tiff:Orientation="1"/></x:xmpmeta>'
    Image.fromarray(smooth_image(20, 28)).save(tmp_path / "scan.jpg", dpi=(300, 300), xmp=xmp)
    with Image.open(tmp_path / "scan.jpg") as loaded:
        loaded.load()  # a loaded image, or its copy, was taken without them
        for given in (tmp_path / "scan.jpg", loaded, loaded.copy()):
            out = srtrt.upscale(given, model=model, **FP32)
            assert out.info["dpi"] == (300, 300) and b'exif:PixelXDimension="112"' in out.info["xmp"]


def test_a_call_leaves_the_callers_random_stream_as_it_was(tmp_path, model):
    """Building a network draws its random initial weights: an application that seeds torch got
    another stream after its first call of each new configuration."""
    import torch

    api.close()  # the next call builds its network
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    srtrt.upscale(Image.fromarray(smooth_image(8, 8)), model=model, **FP32)
    srtrt.load_model(model)
    assert torch.equal(torch.rand(4), expected)


def test_every_call_that_loses_something_says_so(tmp_path, model):
    """Python's default filter shows a warning once per line of code: the second image written to a
    JPEG lost its alpha, and the second 16-bit image returned at 8 bits, without a word."""
    import subprocess
    import sys

    from run_helpers import cli_env

    for i in range(2):
        Image.fromarray(np.full((8, 8, 4), 60 * i + 50, np.uint8), "RGBA").save(tmp_path / f"a{i}.png")
        Image.fromarray(np.full((8, 8, 3), 60 * i + 50, np.uint8)).save(tmp_path / f"b{i}.png")
    script = f"""
import numpy as np, srtrt, tifffile
for i in range(2):
    srtrt.upscale({str(tmp_path)!r} + f"/a{{i}}.png", {str(tmp_path)!r} + "/out.jpg", overwrite=True,
                  model={str(model)!r}, backend="torch", precision="fp32")
    tifffile.imwrite({str(tmp_path)!r} + f"/d{{i}}.tif", np.full((8, 8, 3), 300 * i + 1000, np.uint16))
    srtrt.upscale({str(tmp_path)!r} + f"/d{{i}}.tif", model={str(model)!r}, backend="torch", precision="fp32")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("cannot store transparency") == 2, done.stderr
    assert done.stderr.count("returning 8 bits per sample") == 2, done.stderr
