"""`srtrt interpolate`: the blend is the parameter-wise lerp, alpha is chosen by the trainer's
srgan rule on the held-out photos, and what is written is a checkpoint that says how it was made."""
import json

import pytest
import torch

from srtrt import checkpoint, cli
from srtrt.errors import SrtrtError
from srtrt.nets import SRResNet, SRResNetConfig
from srtrt.train.interpolate import DEFAULT_ALPHAS, blend, choose

from synthetic import write_images

TINY = SRResNetConfig(scale=4, blocks=1, channels=8)


def _save(folder, name, seed, config=TINY):
    torch.manual_seed(seed)
    model = SRResNet(config).eval()
    for module in model.modules():  # non-trivial BN statistics, so they are blended too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return checkpoint.save(folder / name, model, "srresnet", config, {"training": {"phase": name}})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blend")
    return checkpoint.load(_save(folder, "psnr", 0)), checkpoint.load(_save(folder, "gan", 1)), folder


def test_blend_is_the_parameter_wise_lerp(pair):
    psnr, gan, _ = pair
    for alpha in (0.0, 0.25, 1.0):
        got = blend(psnr, gan, alpha).state_dict()
        for name, a in psnr.state_dict.items():
            if a.dtype.is_floating_point:
                want = (1 - alpha) * a + alpha * gan.state_dict[name]
                torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6)
            else:  # counters such as num_batches_tracked are not interpolated
                assert torch.equal(got[name], a)


def test_blend_refuses_other_configs_and_alphas_outside_0_1(pair, tmp_path):
    psnr, gan, _ = pair
    other = checkpoint.load(_save(tmp_path, "wide", 2, SRResNetConfig(scale=4, blocks=1, channels=16)))
    with pytest.raises(SrtrtError, match="cannot interpolate"):
        blend(psnr, other, 0.5)
    with pytest.raises(SrtrtError, match=r"alpha must be in \[0, 1\]"):
        blend(psnr, gan, 1.5)


def _rows(*rows):
    return [{"alpha": a, "val_psnr_y": p, "val_hf_ratio_y": h, "val_grid_ratio_y": g} for a, p, h, g in rows]


def test_choice_is_the_detail_closest_to_hr_within_the_psnr_floor_and_the_grid_cap():
    rows = _rows((0.0, 30.0, 0.15, 0.06), (0.5, 29.6, 0.30, 0.07), (0.7, 29.1, 0.45, 0.08),
                 (0.9, 28.5, 0.80, 0.09), (1.0, 28.0, 1.05, 0.10))
    assert choose(rows, psnr_drop=1.0)["alpha"] == 0.7  # 0.9 and 1.0 are below the 29.0 floor
    assert choose(rows, psnr_drop=3.0)["alpha"] == 1.0  # |1 - 1.05| beats |1 - 0.80|
    assert choose(rows, psnr_drop=0.1)["alpha"] == 0.0  # nothing else is within 0.1 dB
    # Detail that comes with more than twice the PSNR model's grid is not taken.
    gridded = _rows((0.0, 30.0, 0.15, 0.06), (0.5, 29.6, 0.30, 0.11), (0.7, 29.1, 0.45, 0.13))
    assert choose(gridded, psnr_drop=1.0)["alpha"] == 0.5
    with pytest.raises(SrtrtError, match="alpha 0"):
        choose(rows[1:], psnr_drop=1.0)


def test_cli_writes_the_chosen_blend_with_its_sweep_and_parents(pair, tmp_path, capsys):
    psnr, gan, folder = pair
    photos = tmp_path / "photos"
    write_images(photos, [(64, 64), (72, 56), (56, 80)], seed=3)
    out = tmp_path / "blended"
    code = cli.main(["interpolate", str(photos), "--psnr", str(folder / "psnr.safetensors"),
                     "--gan", str(folder / "gan.safetensors"), "--out", str(out), "--val-count", "1", "--val-crop", "48"])
    assert code == 0
    doc = json.loads(out.with_suffix(".json").read_text())["training"]
    assert [r["alpha"] for r in doc["sweep"]] == list(DEFAULT_ALPHAS)
    assert doc["alpha"] == choose(doc["sweep"], 1.0)["alpha"]
    assert doc["psnr_model"]["sha256"] == psnr.sha256 and doc["gan_model"]["sha256"] == gan.sha256
    assert doc["psnr_model"]["phase"] == "psnr" and len(doc["val_images"]) == 1
    written = checkpoint.load(out).state_dict
    for name, tensor in blend(psnr, gan, doc["alpha"]).state_dict().items():
        assert torch.equal(written[name], tensor)
    assert f"alpha {doc['alpha']}" in capsys.readouterr().out


def test_cli_bad_alpha_is_one_line_and_writes_nothing(pair, tmp_path, capsys):
    _, _, folder = pair
    photos = tmp_path / "photos"
    write_images(photos, [(64, 64), (72, 56)], seed=4)
    out = tmp_path / "never"
    code = cli.main(["interpolate", str(photos), "--psnr", str(folder / "psnr"), "--gan", str(folder / "gan"),
                     "--out", str(out), "--alpha", "1.5", "--val-count", "1", "--val-crop", "48"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "alpha must be in [0, 1]" in err
    assert not list(tmp_path.glob("never*"))


def test_cli_an_existing_out_or_a_negative_psnr_drop_is_one_line(pair, tmp_path, capsys):
    """An existing blend is replaced only with --overwrite (as export, build and compare); a negative
    --psnr-drop, a floor above the PSNR model itself, silently picked alpha 1."""
    _, _, folder = pair
    photos = tmp_path / "photos"
    write_images(photos, [(64, 64), (72, 56)], seed=4)
    run = ["interpolate", str(photos), "--psnr", str(folder / "psnr"), "--gan", str(folder / "gan"),
           "--out", str(tmp_path / "blend"), "--val-count", "1", "--val-crop", "48"]
    assert cli.main([*run, "--psnr-drop", "-1"]) == 2
    assert capsys.readouterr().err == "srtrt: --psnr-drop must be a number >= 0, not -1.0\n"
    assert cli.main([*run, "--alpha", "0.3"]) == 0
    before = (tmp_path / "blend.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main([*run, "--alpha", "0.7"]) == 2
    assert "output already exists (use --overwrite to replace it)" in capsys.readouterr().err
    assert (tmp_path / "blend.safetensors").read_bytes() == before
    assert cli.main([*run, "--alpha", "0.7", "--overwrite"]) == 0
    assert checkpoint.load(tmp_path / "blend").meta["training"]["alpha"] == 0.7


def test_cli_validation_options_are_judged_as_train_judges_them(pair, tmp_path, capsys):
    """--val-crop under 4 x scale was taken, then every held-out photo was called too small to use."""
    _, _, folder = pair
    photos = tmp_path / "photos"
    write_images(photos, [(64, 64), (72, 56)], seed=4)
    for crop in ("8", "0"):
        code = cli.main(["interpolate", str(photos), "--psnr", str(folder / "psnr"), "--gan", str(folder / "gan"),
                         "--out", str(tmp_path / "never"), "--val-count", "1", "--val-crop", crop])
        err = capsys.readouterr().err
        assert code == 2 and err == f"srtrt: --val-crop must be at least 16 (4 x --scale), not {crop}\n", err
    assert not list(tmp_path.glob("never*"))


def test_a_dotted_out_name_is_all_name(pair, tmp_path, capsys):
    """--out blend_0.3 and blend_0.7 are two checkpoints: the ".3" was taken for a suffix and replaced,
    so both wrote blend_0.safetensors, and --model blend_0.3 loaded whichever came last."""
    _, _, folder = pair
    photos = tmp_path / "photos"
    write_images(photos, [(64, 64), (72, 56)], seed=4)
    for alpha in ("0.3", "0.7"):
        code = cli.main(["interpolate", str(photos), "--psnr", str(folder / "psnr"), "--gan", str(folder / "gan"),
                         "--out", str(tmp_path / f"blend_{alpha}"), "--alpha", alpha, "--val-count", "1",
                         "--val-crop", "48"])
        assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("blend_*")) == [
        "blend_0.3.json", "blend_0.3.safetensors", "blend_0.7.json", "blend_0.7.safetensors"]
    for alpha in ("0.3", "0.7"):
        assert checkpoint.load(tmp_path / f"blend_{alpha}").meta["training"]["alpha"] == float(alpha)
    with pytest.raises(SrtrtError, match="checkpoint file not found"):
        checkpoint.resolve(tmp_path / "blend_0.99")


def _interpolate_cli(capsys, photos, psnr, gan, out) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["interpolate", str(photos), "--psnr", str(psnr), "--gan", str(gan), "--out", str(out),
                     "--val-count", "1", "--val-crop", "48"])
    return code, capsys.readouterr().err


def test_cli_bad_folders_inputs_and_outputs_are_one_line(pair, tmp_path, capsys):
    _, _, folder = pair
    psnr, gan = folder / "psnr.safetensors", folder / "gan.safetensors"
    photos, empty = tmp_path / "photos", tmp_path / "empty"
    write_images(photos, [(64, 64), (72, 56)], seed=5)
    empty.mkdir()
    community_file = tmp_path / "compact4.pth"
    torch.save(SRResNet(TINY).state_dict(), community_file)  # a bare state dict: a community model file
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    gan_bytes = gan.read_bytes()
    for data, psnr_arg, gan_arg, out, cause in [
        (tmp_path / "missing", psnr, gan, tmp_path / "m", "missing: not a directory"),
        (empty, psnr, gan, tmp_path / "m", "empty: no images"),
        (photos, psnr, gan, a_file / "m", "a_file is a file, not a folder (--out writes into it)"),
        (photos, psnr, gan, a_file / "sub" / "m", "a_file is a file, not a folder (--out writes into it)"),
        (photos, psnr, community_file, tmp_path / "m", f"{community_file}: not an srtrt checkpoint"),
        (photos, community_file, gan, tmp_path / "m", "--psnr takes srtrt checkpoints"),
        (photos, psnr, gan, folder / "gan", "is an input of this command"),
        (photos, psnr, gan, f"{empty}/", "is a folder: --out names the file to write"),  # not empty.safetensors
    ]:
        code, err = _interpolate_cli(capsys, data, psnr_arg, gan_arg, out)
        assert code == 2 and err.count("\n") == 1 and cause in err, err
        assert "compact4.json" not in err
    assert gan.read_bytes() == gan_bytes  # the GAN checkpoint was not replaced by a blend
    assert not list(tmp_path.glob("m.*"))
