"""`srtrt eval` on generated images with random tiny models (one, or several in one table); the
published Set5 bicubic baseline, and the embedded models' scores against their sidecars when
../shared/data is present."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import srtrt
from srtrt import checkpoint
from srtrt.cli import main
from srtrt.nets import SRResNet, SRResNetConfig
from srtrt.train.evaluate import evaluate_folder

from embedded import install_embedded
from synthetic import blurred_grid, write_images

SET5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "set5"
SET14 = SET5.with_name("set14")
REAL_SRGAN = checkpoint.embedded_path("srgan")  # the shipped file, looked up before any test patches the folder
METRICS = {"psnr", "ssim", "hf", "grid"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = SRResNetConfig(blocks=2, channels=8)
    return checkpoint.save(tmp_path_factory.mktemp("model") / "tiny", SRResNet(cfg), "srresnet", cfg)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """RGB images of several sizes (one not a multiple of 4), plus a grey and an RGBA one."""
    root = tmp_path_factory.mktemp("data") / "synth"
    write_images(root, [(64, 64), (70, 53)], seed=1)
    rng = np.random.default_rng(2)
    Image.fromarray(blurred_grid(rng, 48, 40)).convert("L").save(root / "grey.png")
    Image.fromarray(blurred_grid(rng, 40, 48)).convert("RGBA").save(root / "alpha.png")
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_exactly_the_specified_structure(capsys, folder, model_path):
    code, out, err = _run(capsys, folder, "--model", model_path, "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)  # exactly one JSON object on stdout
    assert list(doc) == ["synth"]
    res = doc["synth"]
    assert set(res) == {"model", "bicubic", "images", "models"}
    assert set(res["model"]) == set(res["bicubic"]) == METRICS
    assert res["models"] == {"tiny": res["model"]}  # one model: its label is the checkpoint's file stem
    assert [r["name"] for r in res["images"]] == ["alpha.png", "grey.png", "img00.png", "img01.png"]
    for row in res["images"]:
        assert set(row) == {"name", "models", *(f"{m}_{k}" for m in ("model", "bicubic") for k in METRICS)}
        assert row["models"] == {"tiny": {k: row[f"model_{k}"] for k in METRICS}}
        assert all(math.isfinite(v) for k, v in row.items() if k not in ("name", "models"))
        assert row["bicubic_psnr"] > 28 and 0.8 < row["bicubic_ssim"] <= 1  # smooth images: bicubic is good
        assert 0 < row["bicubic_hf"] < 0.5  # ... but smooth: it loses the fine detail (here: the noise)
        assert row["model_psnr"] < row["bicubic_psnr"]  # an untrained model is not
    for method in ("model", "bicubic"):
        for metric in METRICS:
            mean = np.mean([r[f"{method}_{metric}"] for r in res["images"]])
            assert res[method][metric] == pytest.approx(mean, abs=1e-3)


def test_json_keys_one_entry_per_folder(capsys, folder, model_path, tmp_path):
    other = tmp_path / "other"
    write_images(other, [(32, 32)], seed=4)
    code, out, _ = _run(capsys, folder, other, "--model", model_path, "--json", "--scale", 4)
    assert code == 0 and list(json.loads(out)) == ["synth", "other"]


def _average_row(out: str) -> list[str]:
    return next(line for line in out.splitlines() if line.strip().startswith("average")).split()


def test_table_lists_every_image_and_the_average(capsys, folder, model_path):
    code, out, _ = _run(capsys, folder, "--model", model_path)
    assert code == 0
    assert "synth" in out and "tiny PSNR" in out and "bicubic PSNR" in out and "HF" in out
    for name in ("alpha.png", "grey.png", "img00.png", "img01.png", "average"):
        assert name in out
    result = evaluate_folder(folder, srtrt.load_model(model_path))
    cells = [float(v) for v in _average_row(out)[1:]]  # model PSNR SSIM HF grid, bicubic PSNR SSIM HF grid
    expected = [result[m][k] for m in ("model", "bicubic") for k in ("psnr", "ssim", "hf", "grid")]
    assert cells == pytest.approx(expected, abs=1e-3)


@pytest.fixture(scope="module")
def second_model_path(tmp_path_factory):
    torch.manual_seed(1)
    cfg = SRResNetConfig(blocks=1, channels=8)
    return checkpoint.save(tmp_path_factory.mktemp("model2") / "other", SRResNet(cfg), "srresnet", cfg)


def test_several_models_are_scored_in_one_table_and_one_json(capsys, folder, model_path, second_model_path):
    code, out, _ = _run(capsys, folder, "--model", model_path, "--model", second_model_path, "--json")
    assert code == 0
    res = json.loads(out)["synth"]
    assert list(res["models"]) == ["tiny", "other"]
    assert res["model"] == res["models"]["tiny"]  # the one-model keys describe the first model
    alone = evaluate_folder(folder, srtrt.load_model(second_model_path))
    assert res["models"]["other"] == pytest.approx(alone["model"], abs=1e-4)  # same numbers as a run of its own
    assert res["models"]["other"]["psnr"] != pytest.approx(res["models"]["tiny"]["psnr"], abs=1e-3)

    code, out, _ = _run(capsys, folder, "--model", model_path, "--model", second_model_path)
    header = next(line for line in out.splitlines() if "PSNR" in line).split()
    assert header == ["image", *(w for m in ("tiny", "other", "bicubic") for w in (m, "PSNR", "SSIM", "HF", "grid"))]
    cells = [float(v) for v in _average_row(out)[1:]]
    assert cells[4:8] == pytest.approx([res["models"]["other"][k] for k in ("psnr", "ssim", "hf", "grid")], abs=1e-3)


def test_a_model_file_named_bicubic_does_not_take_the_baselines_name(capsys, folder, model_path, tmp_path):
    """Its column and JSON key were "bicubic", beside the baseline's own."""
    import shutil

    named = tmp_path / "bicubic.safetensors"
    shutil.copy(model_path, named)
    shutil.copy(Path(model_path).with_suffix(".json"), named.with_suffix(".json"))
    code, out, _ = _run(capsys, folder, "--model", named, "--json")
    assert code == 0
    res = json.loads(out)["synth"]
    assert list(res["models"]) == [str(named)] and res["models"][str(named)] != res["bicubic"]


def test_embedded_names_in_eval(capsys, folder, monkeypatch, tmp_path):
    paths = install_embedded(monkeypatch, tmp_path / "weights")
    code, out, _ = _run(capsys, folder, "--model", "srresnet", "--model", "srgan", "--json")
    assert code == 0
    res = json.loads(out)["synth"]
    assert list(res["models"]) == ["srresnet", "srgan"]
    assert res["models"]["srgan"] == pytest.approx(
        evaluate_folder(folder, srtrt.load_model(paths["srgan"]))["model"], abs=1e-4)
    code, out, _ = _run(capsys, folder, "--json")  # no --model: the default alone
    assert code == 0 and list(json.loads(out)["synth"]["models"]) == ["srresnet"]


def _error(capsys, *argv) -> str:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("srtrt: ") and err.count("\n") == 1  # one line, no traceback
    return err


def test_an_exact_image_is_left_out_of_the_psnr_average_and_said(capsys, folder, model_path, tmp_path):
    """A flat image bicubic reproduces exactly (PSNR infinite) made the folder's average infinite
    (null in JSON) though every other image's PSNR was finite."""
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    Image.new("RGB", (64, 64), (100, 120, 140)).save(mixed / "flat.png")
    code, out, _ = _run(capsys, mixed, "--model", model_path, "--json")
    res = json.loads(out)["mixed"]
    finite = [r["bicubic_psnr"] for r in res["images"] if r["bicubic_psnr"] is not None]
    assert code == 0 and len(finite) == len(res["images"]) - 1
    assert res["bicubic"]["psnr"] == pytest.approx(np.mean(finite), abs=1e-3)
    code, out, _ = _run(capsys, mixed, "--model", model_path)
    assert code == 0 and "(bicubic: 1 exact image(s), PSNR infinite, left out of its PSNR average)" in out
    assert "inf" not in out.split("average")[1].splitlines()[0]


def test_missing_directory(capsys, model_path, tmp_path):
    assert f"{tmp_path / 'nope'}: not a directory" in _error(capsys, tmp_path / "nope", "--model", model_path)


def test_directory_without_images(capsys, model_path, tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    assert "no images" in _error(capsys, tmp_path, "--model", model_path)


def test_unreadable_image_names_the_file(capsys, model_path, tmp_path):
    write_images(tmp_path, [(32, 32)])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = _error(capsys, tmp_path, "--model", model_path)
    assert str(tmp_path / "broken.png") in err and "header is corrupt" in err


def test_sixteen_bit_images_score_as_their_eight_bit_copies(capsys, model_path, tmp_path):
    """Pillow's convert("RGB") clips 16-bit grey to white (a 46 dB "score" on a blank image)."""
    rng = np.random.default_rng(3)
    grey, colour = blurred_grid(rng, 48, 52)[..., 0], blurred_grid(rng, 52, 48)
    for depth, scale in (("8", 1), ("16", 257)):
        (tmp_path / depth).mkdir()
        Image.fromarray(grey.astype(np.uint16) * scale if scale > 1 else grey).save(tmp_path / depth / "grey.png")
    Image.fromarray(colour).save(tmp_path / "8" / "colour.png")
    import imagecodecs  # 16-bit RGB PNG: Pillow cannot write one
    (tmp_path / "16" / "colour.png").write_bytes(imagecodecs.png_encode(colour.astype(np.uint16) * 257))
    scores = []
    for depth in ("8", "16"):
        code, out, err = _run(capsys, tmp_path / depth, "--model", model_path, "--json")
        assert code == 0, err
        scores.append(json.loads(out)[depth]["images"])
    assert scores[0] == scores[1]


def test_image_too_small_names_the_file(capsys, model_path, tmp_path):
    Image.new("RGB", (12, 12)).save(tmp_path / "tiny.png")
    assert "too small" in _error(capsys, tmp_path, "--model", model_path)


def test_scale_must_match_the_model(capsys, folder, model_path):
    assert "does not match the model's scale x4" in _error(capsys, folder, "--model", model_path, "--scale", 2)


def test_missing_model(capsys, folder, tmp_path):
    assert "checkpoint file not found" in _error(capsys, folder, "--model", tmp_path / "none.safetensors")


def test_model_neither_embedded_nor_a_file_lists_the_embedded_names(capsys, folder):
    err = _error(capsys, folder, "--model", "srgn")
    assert err.startswith("srtrt: srgn: checkpoint file not found") and "embedded models: srresnet" in err


def test_the_same_model_twice_is_refused(capsys, folder, model_path):
    assert "a model is named twice" in _error(capsys, folder, "--model", model_path, "--model", model_path)


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/data/set5 is not present")
def test_set5_bicubic_baseline_matches_the_literature(model_path):
    result = evaluate_folder(SET5, srtrt.load_model(model_path))
    assert len(result["images"]) == 5
    assert result["bicubic"]["psnr"] == pytest.approx(28.42, abs=0.02)
    assert result["bicubic"]["ssim"] == pytest.approx(0.811, abs=0.002)


def _scores_match_the_sidecar(model: str | None, folders: tuple[Path, ...]) -> dict[str, dict]:
    """Evaluate an embedded model on `folders`; every score its sidecar states must be reproduced (1e-3)."""
    stated = checkpoint.load(model).meta["eval"]
    view = srtrt.load_model(model)
    results = {}
    for folder in folders:
        result = evaluate_folder(folder, view)
        claims = stated[folder.name]["model"]
        assert {"psnr", "ssim"} <= set(claims)
        for metric, value in claims.items():
            if metric in result["model"]:
                assert result["model"][metric] == pytest.approx(value, abs=1e-3), (folder.name, metric)
        results[folder.name] = result
    return results


@pytest.mark.skipif(not (SET5.is_dir() and SET14.is_dir()), reason="../shared/data/set5, set14 are not present")
def test_default_model_reaches_its_targets_and_the_scores_its_sidecar_states():
    """Set5 >= 30.6 dB and Set14 >= 27.4 dB (Y); the shipped JSON must not overstate them."""
    results = _scores_match_the_sidecar(None, (SET5, SET14))
    assert results["set5"]["model"]["psnr"] >= 30.6
    assert results["set14"]["model"]["psnr"] >= 27.4


@pytest.mark.skipif(not REAL_SRGAN.is_file(), reason="srtrt/weights/srgan_x4.safetensors is not shipped yet")
def test_shipped_srgan_loads_by_name_and_scores_what_its_sidecar_states():
    ckpt = checkpoint.load("srgan")
    assert ckpt.sha256 == checkpoint.file_sha256(REAL_SRGAN)
    training = ckpt.meta["training"]  # a blend of the shipped SRResNet and its GAN fine-tune
    assert training["phase"] == "interpolate" and 0 < training["alpha"] <= 1
    assert training["psnr_model"]["sha256"] == checkpoint.load("srresnet").sha256
    assert training["gan_model"]["phase"] == "srgan" and training["gan_model"]["content_loss"] == "mse"
    assert training["gan_model"]["grid_weight"] > 0  # trained with the grid loss
    assert srtrt.load_model("srgan").scale == 4
    if SET5.is_dir():
        srgan = _scores_match_the_sidecar("srgan", (SET5,))["set5"]["model"]
        srresnet = checkpoint.load("srresnet").meta["eval"]["set5"]["model"]
        # Issue targets: Set5 >= 29 dB, at least twice the SRResNet's detail, no more than HR's,
        # and that detail not bought with a sub-pixel grid (at most twice the SRResNet's).
        assert srgan["psnr"] >= 29.0
        assert 2 * srresnet["hf"] <= srgan["hf"] <= 1.0
        assert srgan["grid"] <= 2 * srresnet["grid"]
