"""`srtrt compare`: crops of LR, bicubic, each model and HR, exact model crops, labels with each
model's name and scores, panels shown at least MIN_PANEL pixels; both embedded models by default."""
import numpy as np
import pytest
from PIL import Image

import srtrt
from srtrt.cli import main
from srtrt.train.compare import (
    GAP,
    LABEL_HEIGHT,
    MIN_PANEL,
    compare_image,
    compare_panels,
    detail_crop,
    model_crop,
    zoom_for,
)
from srtrt.train.degrade import bicubic_downscale
from srtrt.train.evaluate import super_resolve
from srtrt.train.metrics import grid_ratio_y, hf_ratio_y, psnr_y

from embedded import install_embedded
from run_helpers import save_tiny_model
from synthetic import blurred_grid, write_images


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), "tiny", blocks=2, channels=8)


def _sheet_size(panels: int, size: int) -> tuple[int, int]:
    shown = size * zoom_for(size)
    return panels * shown + (panels - 1) * GAP, shown + LABEL_HEIGHT


def test_detail_crop_finds_the_textured_region():
    rng = np.random.default_rng(0)
    img = np.full((64, 96, 3), 128, np.uint8)
    img[32:64, 60:92] = rng.integers(0, 256, (32, 32, 3))
    assert detail_crop(img, 32, 4) == (60, 32)
    x, y = detail_crop(img, 24, 4)
    assert x % 4 == 0 and y % 4 == 0 and 60 <= x <= 68 and 32 <= y <= 40


def test_model_crop_equals_the_whole_image_run(model_path):
    model = srtrt.load_model(model_path)
    lr = bicubic_downscale(Image.fromarray(blurred_grid(np.random.default_rng(5), 160, 160)), 4)
    whole = super_resolve(model, lr).astype(int)
    for box in [(0, 0, 32, 32), (64, 48, 128, 112), (128, 128, 160, 160)]:
        x0, y0, x1, y1 = box
        diff = np.abs(model_crop(model, lr, box, 4).astype(int) - whole[y0:y1, x0:x1])
        assert diff.max() <= 1  # float32 accumulation order differs; the radius covers all dependencies


def test_panels_are_lr_bicubic_each_model_and_hr_with_scores_on_the_crop(model_path, tmp_path):
    image = write_images(tmp_path, [(120, 100)], seed=3)[0]
    models = {"tiny": srtrt.load_model(model_path), "other": srtrt.load_model(save_tiny_model(tmp_path, seed=4))}
    panels = compare_panels(image, models, crop=64)
    assert [p.title for p in panels] == ["LR", "bicubic", "tiny", "other", "HR"]
    assert all(p.pixels.shape == (64, 64, 3) for p in panels)
    hr = panels[-1].pixels
    for panel in panels[1:4]:
        assert panel.detail == (f"{psnr_y(panel.pixels, hr, 0):.2f} dB  HF {hf_ratio_y(panel.pixels, hr, 0):.2f}  "
                                f"grid {grid_ratio_y(panel.pixels, 4):.2f}")
    # Each model panel is that model's whole-image output at the crop (the crop sits where HR is found).
    with Image.open(image) as im:
        full = np.asarray(im.convert("RGB"))
    (y, x), = np.argwhere(np.all(np.lib.stride_tricks.sliding_window_view(full, (64, 64, 3))[:, :, 0] == hr,
                                 axis=(2, 3, 4)))[:1]
    lr = bicubic_downscale(Image.fromarray(full[:100, :120]), 4)
    for panel, model in zip(panels[2:4], models.values(), strict=True):
        whole = super_resolve(model, lr).astype(int)[y:y + 64, x:x + 64]
        assert np.abs(panel.pixels.astype(int) - whole).max() <= 1
    assert not np.array_equal(panels[2].pixels, panels[3].pixels)
    # LR: each LR pixel repeated x4, i.e. nearest-neighbour upscaling of the LR crop.
    lr_crop = np.asarray(lr.crop((x // 4, y // 4, x // 4 + 16, y // 4 + 16)))
    assert np.array_equal(panels[0].pixels, lr_crop.repeat(4, 0).repeat(4, 1))


def test_small_crops_are_shown_enlarged_to_whole_pixels(model_path, tmp_path):
    assert zoom_for(48) == 6 and zoom_for(256) == 1 and zoom_for(300) == 1 and 48 * zoom_for(48) >= MIN_PANEL
    image = write_images(tmp_path, [(90, 70)], seed=7)[0]
    panels = compare_panels(image, srtrt.load_model(model_path), crop=48)
    sheet = np.asarray(compare_image(image, srtrt.load_model(model_path), crop=48))
    assert sheet.shape[1::-1] == _sheet_size(4, 48)
    shown = 48 * zoom_for(48)
    hr_panel = sheet[LABEL_HEIGHT:, 3 * (shown + GAP):]
    assert np.array_equal(hr_panel, panels[-1].pixels.repeat(6, 0).repeat(6, 1))  # no resampling
    assert (sheet[:LABEL_HEIGHT] < 128).any()  # the labels are drawn


def test_compare_writes_one_png(model_path, tmp_path, capsys):
    image = write_images(tmp_path / "in", [(90, 70)], seed=7)[0]
    out = tmp_path / "out" / "cmp.png"
    assert main(["compare", str(image), "-o", str(out), "--model", str(model_path), "--crop", "48"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == _sheet_size(4, 48)
        sheet = np.asarray(im.convert("RGB"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["cmp.png"]  # no temporary file left
    labelled = {"tiny": srtrt.load_model(model_path)}  # the CLI labels a checkpoint with its file stem
    assert np.array_equal(sheet, np.asarray(compare_image(image, labelled, crop=48)))


def test_compare_writes_the_format_its_suffix_names_and_never_over_its_photo(model_path, tmp_path, capsys):
    image = write_images(tmp_path / "in", [(90, 70)], seed=7)[0]
    photo = image.read_bytes()
    for output, cause in ((image, "is an input of this command"), (tmp_path / "side.gif", "-o needs one of")):
        assert main(["compare", str(image), "-o", str(output), "--model", str(model_path), "--crop", "48"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{output}: {cause}" in err
    assert image.read_bytes() == photo and not (tmp_path / "side.gif").exists()
    for name, image_format in (("side.jpg", "JPEG"), ("side.bmp", "BMP")):  # what `srtrt run -o` writes (BMP was refused)
        out = tmp_path / name
        assert main(["compare", str(image), "-o", str(out), "--model", str(model_path), "--crop", "48"]) == 0
        with Image.open(out) as im:
            assert im.format == image_format and im.size == _sheet_size(4, 48)


def test_compare_replaces_an_existing_file_only_with_overwrite(model_path, tmp_path, capsys):
    """`-o` onto any existing file replaced it without a word (a photo, another model's sidecar)."""
    image = write_images(tmp_path / "in", [(90, 70)], seed=7)[0]
    other = tmp_path / "holiday.png"
    other.write_bytes(b"a photo of someone's")
    args = ["compare", str(image), "-o", str(other), "--model", str(model_path), "--crop", "48"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"srtrt: {other}: output already exists (use --overwrite to replace it)"
    assert other.read_bytes() == b"a photo of someone's"
    assert main([*args, "--overwrite"]) == 0
    with Image.open(other) as im:
        assert im.size == _sheet_size(4, 48)


def test_default_crop_is_256_and_is_clamped_to_the_image(model_path, tmp_path):
    big = write_images(tmp_path, [(300, 280)], seed=8, prefix="big")[0]
    assert compare_image(big, srtrt.load_model(model_path)).size == _sheet_size(4, 256)
    small = write_images(tmp_path, [(40, 36)], seed=8, prefix="small")[0]
    assert compare_image(small, srtrt.load_model(model_path), crop=128).size == _sheet_size(4, 36)


def test_default_shows_every_embedded_model_and_model_repeats(monkeypatch, tmp_path, model_path, capsys):
    image = write_images(tmp_path / "in", [(64, 64)], seed=9)[0]
    paths = install_embedded(monkeypatch, tmp_path / "weights")
    out = tmp_path / "both.png"
    assert main(["compare", str(image), "-o", str(out)]) == 0
    models = {name: srtrt.load_model(path) for name, path in paths.items()}
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(compare_image(image, models)))
    assert Image.open(out).size == _sheet_size(5, 64)

    assert main(["compare", str(image), "-o", str(out), "--model", "srgan", "--model", str(model_path),
                 "--overwrite"]) == 0
    assert Image.open(out).size == _sheet_size(5, 64)
    capsys.readouterr()

    install_embedded(monkeypatch, tmp_path / "only_srresnet", names=("srresnet",))  # srgan not shipped: one model
    assert main(["compare", str(image), "-o", str(out), "--overwrite"]) == 0
    assert Image.open(out).size == _sheet_size(4, 64)
    assert main(["compare", str(image), "-o", str(tmp_path / "no.png"), "--model", "srgan"]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and err.count("\n") == 1 and not (tmp_path / "no.png").exists()


def test_compare_unreadable_image(capsys, model_path, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["compare", str(bad), "-o", str(tmp_path / "o.png"), "--model", str(model_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("crop", [1, 4, 5, 7])
def test_a_crop_under_two_lr_pixels_is_one_line(capsys, model_path, tmp_path, crop):
    image = write_images(tmp_path / "in", [(90, 70)], seed=7)[0]
    out = tmp_path / "o.png"
    assert main(["compare", str(image), "-o", str(out), "--model", str(model_path), "--crop", str(crop)]) == 2
    err = capsys.readouterr().err
    assert f"--crop {crop} is too small: a crop of at least 8 px is needed at x4" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["compare", str(image), "-o", str(out), "--model", str(model_path), "--crop", "8"]) == 0
