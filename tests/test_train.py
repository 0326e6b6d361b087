"""A tiny training run on generated images: the loss falls, resuming continues exactly, a
wall-clock budget stops a run with everything saved; the SRGAN phase with each content loss
(mse needs no VGG; vgg22/vgg54 run with a deliberately random VGG file, or refuse to start
without one) alternates D and G and resumes exactly; bench/gpu_train.py runs in smoke mode."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from srtrt import checkpoint, cli
from srtrt.errors import SrtrtError
from srtrt.nets import SRResNet, SRResNetConfig
from srtrt.train.losses import VGGContentLoss, content_loss, grid_loss, vgg19_features
from srtrt.train.trainer import TrainConfig, Validation, selection_score, train

from conftest import DiskFillsAfter
from synthetic import write_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_images(folder, [(64, 64), (72, 56), (56, 80), (64, 48), (48, 64)], seed=11)
    return folder


ITERS = 60


def _config(photos, out, **overrides) -> TrainConfig:
    base = dict(data=str(photos), out=str(out), blocks=2, channels=16, patch=32, batch=4, iters=ITERS,
                lr=2e-3, val_count=1, val_crop=48, val_every=ITERS // 2, log_every=1, workers=0, seed=0,
                device="cpu", amp="off", progress=False)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def straight_run(photos, tmp_path_factory):
    """One uninterrupted run, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("straight")
    return out, train(_config(photos, out))


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _without_speed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "it_s"} for r in rows]


def _generator_tensors(out) -> dict:
    return {k: v for k, v in load_file(str(out / "state.safetensors")).items() if k.startswith("g.")}


def test_loss_falls_and_validation_improves(straight_run):
    out, best = straight_run
    rows = _metrics(out)
    losses = [r["loss_g"] for r in rows if "loss_g" in r]
    assert [r["step"] for r in rows if "loss_g" in r] == list(range(1, ITERS + 1))
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])
    val = [(r["step"], r["val_psnr"]) for r in rows if "val_psnr" in r]
    assert [step for step, _ in val] == [ITERS // 2, ITERS]
    assert val[1][1] > val[0][1]


def test_run_directory_holds_checkpoint_state_and_curve(straight_run):
    out, best = straight_run
    assert best == out / "model.safetensors"
    ckpt = checkpoint.load(best)
    assert ckpt.config.channels == 16 and ckpt.meta["training"]["phase"] == "srresnet"
    assert ckpt.meta["training"]["iterations"] == ITERS
    assert ckpt.meta["training"]["val_images"]  # validation came from held-out training photos
    assert json.loads((out / "state.json").read_text())["step"] == ITERS
    assert (out / "curve.png").stat().st_size > 0 and (out / "last.safetensors").is_file()


def test_resumed_run_continues_and_matches_an_uninterrupted_run(photos, straight_run, tmp_path, capsys):
    straight, _ = straight_run
    interrupted = tmp_path / "interrupted"
    train(_config(photos, interrupted, iters=ITERS // 2))
    assert json.loads((interrupted / "state.json").read_text())["step"] == ITERS // 2
    capsys.readouterr()
    train(_config(photos, interrupted))
    assert f"at step {ITERS // 2}" in capsys.readouterr().out
    assert json.loads((interrupted / "state.json").read_text())["step"] == ITERS
    steps = [r["step"] for r in _metrics(interrupted) if "loss_g" in r]
    assert steps == list(range(1, ITERS + 1))  # no step repeated or skipped across the resume

    # Patches are a function of (seed, index) and the state holds model, optimiser and RNG, so
    # the two runs are the same computation.
    resumed, uninterrupted = _generator_tensors(interrupted), _generator_tensors(straight)
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), k
    assert _without_speed(_metrics(interrupted)) == _without_speed(_metrics(straight))


def test_content_loss_with_a_random_vgg():
    torch.manual_seed(0)
    loss = VGGContentLoss(None)  # random on purpose: only the mechanics are under test
    loss.train()
    assert not loss.features.training  # VGG stays a fixed feature extractor
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    sr = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    assert loss(hr, hr).item() == 0
    value = loss(sr, hr)
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.features.parameters())


@pytest.fixture
def random_vgg_file(tmp_path):
    """VGG19 weights in torchvision's layout, random on purpose, written as a user would pass them."""
    torch.manual_seed(0)
    path = tmp_path / "random_vgg19.safetensors"
    save_file({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, str(path))
    return path


def test_srgan_phase_trains_generator_and_discriminator(photos, straight_run, tmp_path, random_vgg_file):
    _, init = straight_run
    out = tmp_path / "srgan"
    train(_config(photos, out, phase="srgan", init=str(init), vgg_weights=str(random_vgg_file),
                  iters=3, batch=2, val_every=3, pixel_weight=0.1))
    rows = [r for r in _metrics(out) if "loss_g" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss_d"] > 0 and r["loss_content"] >= 0 for r in rows)
    state = load_file(str(out / "state.safetensors"))
    assert any(k.startswith("d.") for k in state) and any(k.startswith("opt_d.") for k in state)
    start = checkpoint.load(init).state_dict
    assert any(not torch.equal(state[f"g.{k}"], v) for k, v in start.items() if v.is_floating_point())
    assert checkpoint.load(out / "model").meta["training"]["phase"] == "srgan"


@pytest.mark.parametrize("content_loss", ["vgg22", "vgg54"])
def test_vgg_content_loss_without_weights_stops_before_training(photos, tmp_path, monkeypatch, content_loss):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no torchvision cache here
    out = tmp_path / "srgan"
    with pytest.raises(SrtrtError) as info:
        train(_config(photos, out, phase="srgan", content_loss=content_loss, init=str(tmp_path / "unused.safetensors")))
    message = str(info.value)
    assert "\n" not in message and "--vgg-weights" in message and "VGG19" in message
    assert "--content-loss mse" in message  # the way on without VGG
    assert not out.exists()  # not even an empty run folder

    with pytest.raises(SrtrtError, match="not found"):
        train(_config(photos, out, phase="srgan", content_loss=content_loss, vgg_weights=str(tmp_path / "missing.pth")))


def test_vgg22_content_loss_trains_with_a_vgg_file(photos, straight_run, tmp_path, random_vgg_file):
    _, init = straight_run
    out = tmp_path / "vgg22"
    train(_config(photos, out, phase="srgan", content_loss="vgg22", init=str(init), vgg_weights=str(random_vgg_file),
                  iters=2, batch=2, val_every=2))
    assert [r["step"] for r in _metrics(out) if "loss_g" in r] == [1, 2]
    assert checkpoint.load(out / "model").meta["training"]["content_loss"] == "vgg22"


GAN_ITERS = 6


def _gan_config(photos, out, init, **overrides) -> TrainConfig:
    gan = dict(phase="srgan", content_loss="mse", init=str(init), iters=GAN_ITERS, batch=2, val_every=GAN_ITERS // 2,
               lr=1e-3)
    return _config(photos, out, **{**gan, **overrides})


@pytest.fixture(scope="module")
def gan_run(photos, straight_run, tmp_path_factory):
    """SRGAN-MSE from the tiny SRResNet, with no VGG anywhere (an empty TORCH_HOME)."""
    _, init = straight_run
    out = tmp_path_factory.mktemp("gan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(out / "empty_torch_home"))
        train(_gan_config(photos, out, init))
    return out, init


def _adam_steps(state: dict, prefix: str) -> set[float]:
    return {float(v) for k, v in state.items() if k.startswith(prefix + ".") and k.endswith(".step")}


def test_srgan_mse_alternates_discriminator_and_generator_steps(gan_run):
    out, init = gan_run
    rows = [r for r in _metrics(out) if "loss_g" in r]
    assert [r["step"] for r in rows] == list(range(1, GAN_ITERS + 1))
    # One D step per G step: both optimisers have stepped every parameter once per iteration.
    state = load_file(str(out / "state.safetensors"))
    assert _adam_steps(state, "opt_d") == _adam_steps(state, "opt_g") == {float(GAN_ITERS)}
    # Both losses move, and the generator left its SRResNet start.
    for key in ("loss_d", "loss_g", "loss_content"):
        values = [r[key] for r in rows]
        assert len(set(values)) == len(values) and all(np.isfinite(values)), key
    assert all(r["loss_d"] > 0 for r in rows)
    start = checkpoint.load(init).state_dict
    assert any(not torch.equal(state[f"g.{k}"], v) for k, v in start.items() if v.is_floating_point())
    trained = checkpoint.load(out / "model").meta["training"]
    assert trained["phase"] == "srgan" and trained["content_loss"] == "mse" and trained["grid_weight"] == 10.0
    assert [r["step"] for r in _metrics(out) if "val_grid" in r] == [GAN_ITERS // 2, GAN_ITERS]


def test_resumed_srgan_run_matches_an_uninterrupted_one(photos, gan_run, tmp_path, monkeypatch, capsys):
    straight, init = gan_run
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    interrupted = tmp_path / "interrupted"
    train(_gan_config(photos, interrupted, init, iters=GAN_ITERS // 2))
    capsys.readouterr()
    train(_gan_config(photos, interrupted, init))
    assert f"at step {GAN_ITERS // 2}" in capsys.readouterr().out
    resumed, uninterrupted = (load_file(str(run / "state.safetensors")) for run in (interrupted, straight))
    assert resumed.keys() == uninterrupted.keys()
    assert any(k.startswith("d.") for k in resumed) and any(k.startswith("opt_d.") for k in resumed)
    # The DataLoader draws its base seed from the global RNG whenever an iterator starts, so the RNG
    # state a resumed run saves is one draw further on; no training step draws from it.
    for k in sorted(set(resumed) - {"rng.torch"}):  # G, D and both optimisers' moments: bit-identical
        assert torch.equal(resumed[k], uninterrupted[k]), k
    assert _without_speed(_metrics(interrupted)) == _without_speed(_metrics(straight))


def test_a_spent_time_budget_stops_with_everything_saved_and_resumes_exactly(photos, straight_run, tmp_path, capsys):
    straight, _ = straight_run
    out = tmp_path / "budget"
    train(_config(photos, out, minutes=1e-6))  # spent before the first step ends
    assert "budget is spent" in capsys.readouterr().out
    assert json.loads((out / "state.json").read_text())["step"] == 1
    assert checkpoint.load(out / "model").meta["training"]["iterations"] == 1
    assert [r["step"] for r in _metrics(out)] == [1, 1]  # the last step is logged and validated
    train(_config(photos, out))  # no budget: runs to the end
    resumed, uninterrupted = _generator_tensors(out), _generator_tensors(straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def _gpu_train_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_train.py"
    spec = importlib.util.spec_from_file_location("gpu_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_train_smoke_runs_both_phases_from_the_shipped_weights(photos, tmp_path, capsys, monkeypatch):
    """The GPU training script's whole path on this CPU: both phases, budget-limited, outputs in OUTDIR."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # SRGAN-MSE needs no VGG
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ on the path
    out = tmp_path / "gpu_train"
    assert _gpu_train_module().main([str(out), "--minutes", "0.2", "--smoke", "--data", str(photos)]) == 0
    summary = json.loads((out / "gpu_train.json").read_text())
    assert summary["smoke"] and summary["minutes"] == 0.2
    shipped = checkpoint.load()
    for phase, run in (("srresnet", "srresnet"), ("srgan", "srgan_mse")):
        model = checkpoint.load(out / run / "model")
        assert model.config == shipped.config and model.meta["training"]["phase"] == phase
        assert summary[run]["steps"] > summary[run]["probe_steps"] >= 1  # the probe, then the scheduled run
        assert model.meta["training"]["iterations"] <= summary[run]["steps"]
        assert (out / run / "metrics.jsonl").is_file() and (out / run / "state.json").is_file()
    assert checkpoint.load(out / "srresnet" / "model").meta["training"]["initialised_from"]["sha256"] == shipped.sha256
    assert summary["srgan_mse"]["init"] in (str(out / "srresnet" / "model.safetensors"), str(checkpoint.resolve(None)))
    assert checkpoint.load(out / "srgan_mse" / "model").meta["training"]["content_loss"] == "mse"


def test_init_starts_from_given_weights_and_rejects_another_config(photos, straight_run, tmp_path):
    out, best = straight_run
    start = checkpoint.load(best)
    cont = train(_config(photos, tmp_path / "cont", iters=1, val_every=1, lr=0.0, init=str(best)))
    assert all(torch.equal(start.state_dict[k], v) for k, v in checkpoint.load(cont).state_dict.items()
               if k.endswith("weight") and "bn" not in k)  # lr 0: the weights are exactly the init
    lineage = checkpoint.load(cont).meta["training"]["initialised_from"]
    assert lineage["sha256"] == start.sha256 and lineage["iterations"] == start.meta["training"]["iterations"]
    with pytest.raises(SrtrtError, match="--init has config"):
        train(_config(photos, tmp_path / "other", channels=8, init=str(best)))


def test_grid_loss_sees_a_sub_pixel_pattern_and_not_texture():
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 3, 48, 48, generator=gen) * 2 - 1
    texture = hr + 0.2 * torch.randn(4, 3, 48, 48, generator=gen)  # detail that differs from HR, no period
    pattern = hr + 0.2 * torch.randn(1, 3, 4, 4, generator=gen).repeat(1, 1, 12, 12)  # the same 4x4 tile everywhere
    assert grid_loss(hr, hr, 4) == 0
    assert grid_loss(pattern, hr, 4) > 100 * grid_loss(texture, hr, 4)
    # Its gradient removes the pattern: descending it flattens the tile (its mean is no pattern).
    tile = torch.zeros(1, 3, 4, 4, requires_grad=True)
    start = torch.randn(1, 3, 4, 4, generator=gen)
    for _ in range(200):
        loss = grid_loss(hr + (start + tile).repeat(1, 1, 12, 12), hr, 4)
        (grad,) = torch.autograd.grad(loss, tile)
        tile = (tile - 0.3 * grad).detach().requires_grad_(True)
    left = (start + tile).detach()
    assert (left - left.mean(dim=(2, 3), keepdim=True)).abs().max() < 0.05 * start.abs().max()


def test_srgan_selection_wants_detail_within_the_psnr_floor_and_without_a_grown_grid():
    start = Validation(psnr=30.0, hf=0.15, grid=0.06)
    assert selection_score("srresnet", Validation(29.0, 0.9, 0.5), start, 1.0) == 29.0  # PSNR alone
    textured, blurred = Validation(29.3, 0.60, 0.08), Validation(29.8, 0.30, 0.06)
    assert selection_score("srgan", textured, start, 1.0) > selection_score("srgan", blurred, start, 1.0)
    assert selection_score("srgan", Validation(28.9, 0.95, 0.06), start, 1.0) == -float("inf")  # below the floor
    assert selection_score("srgan", Validation(29.5, 0.95, 0.13), start, 1.0) == -float("inf")  # grid > 2x start's


def test_each_phase_has_its_own_default_run_folder():
    args = cli.parser().parse_args(["train", "photos", "--phase", "srgan"])
    assert args.out is None  # the config picks it by phase
    assert TrainConfig(data="photos", phase="srgan", out=args.out).out == "runs/srgan_x4"
    assert TrainConfig(data="photos").out == "runs/srresnet_x4"


def _state_text(out) -> str:
    return (out / "state.json").read_text()


def test_a_run_of_another_phase_or_network_is_not_resumed(photos, straight_run, gan_run):
    straight, init = straight_run
    gan, _ = gan_run
    before = _state_text(straight), _state_text(gan)
    with pytest.raises(SrtrtError) as other_phase:
        train(_gan_config(photos, straight, init))
    assert "phase srresnet, not srgan" in str(other_phase.value)
    assert "--no-resume" in str(other_phase.value) and "another --out" in str(other_phase.value)
    with pytest.raises(SrtrtError, match="blocks 2, not 1"):
        train(_config(photos, straight, blocks=1))
    with pytest.raises(SrtrtError, match="phase srgan, not srresnet"):  # an SRResNet run in a GAN run's folder
        train(_config(photos, gan))
    assert (_state_text(straight), _state_text(gan)) == before  # nothing resumed, nothing replaced


TINY_CLI = ["--blocks", "1", "--channels", "8", "--patch", "32", "--batch", "2", "--val-count", "1", "--val-crop", "48",
            "--iters", "1", "--val-every", "1", "--amp", "off", "--device", "cpu", "-q"]


def _train_cli(capsys, data, out, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["train", str(data), *TINY_CLI, "--out", str(out), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, cause", [
    (["--patch", "30"], "--patch 30 must be a multiple of --scale 4"),
    (["--log-every", "0"], "--log-every must be >= 1"),
    (["--val-every", "0"], "--val-every must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--lr", "-1"], "--lr must be a number >= 0, not -1.0"),
    (["--lr", "inf"], "--lr must be a number >= 0, not inf"),
    (["--iters", "0"], "--iters must be >= 1"),
    (["--iters", "-3"], "--iters must be >= 1"),
    (["--scale", "3", "--patch", "48"], "scale must be 2, 4 or 8"),
    (["--channels", "0"], "channels >= 1"),
    (["--val-crop", "2"], "--val-crop must be at least 16"),
    (["--device", "cuda"], "no CUDA device"),
    (["--seed", "-1"], "--seed must be in [0, 2**63), not -1"),  # both were tracebacks after the run folder was made
    (["--seed", str(10**23)], "--seed must be in [0, 2**63)"),
])
def test_a_bad_option_is_one_line_before_any_work(photos, tmp_path, capsys, monkeypatch, extra, cause):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _train_cli(capsys, photos, tmp_path / "run", *extra)
    assert code == 2 and err.count("\n") == 1 and cause in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_data_and_out_folders_are_one_line(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    write_images(few, [(64, 64)] * 3, seed=5)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for data, extra, cause in [
        (tmp_path / "missing", [], "missing: not a directory"),
        (empty, [], "empty: no images"),
        (few, ["--val-count", "4"], "all 3 photos are held out for validation (--val-count 4)"),
        (photos, ["--out", str(a_file)], "a_file: is a file, not a folder"),
        (photos, ["--out", str(a_file / "run")], "cannot create this folder (--out)"),
    ]:
        code, err = _train_cli(capsys, data, tmp_path / "run", *extra)
        assert code == 2 and err.count("\n") == 1 and cause in err, (data, err)


def test_a_diverging_run_stops_with_one_line_and_saves_no_lost_weights(photos, tmp_path, capsys):
    """A loss that is no longer a number: one line, exit 1 (was: NaN weights saved as the best model,
    exit 0, then black images from `srtrt run` and tracebacks from eval); what was saved before stays."""
    out = tmp_path / "run"
    code, err = _train_cli(capsys, photos, out, "--iters", "8", "--lr", "1e8", "--log-every", "1", "--val-every", "1")
    assert code == 1 and err.count("\n") == 1 and "training diverged at step" in err, err
    if (out / "model.safetensors").exists():
        checkpoint.load(out / "model")  # saved before the loss was lost: whole and finite


def test_weights_a_diverged_run_saved_are_one_line_wherever_they_are_loaded(photos, tmp_path, capsys):
    from srtrt.nets import SRResNet, SRResNetConfig

    config = SRResNetConfig(blocks=1, channels=4)
    net = SRResNet(config)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    path = checkpoint.save(tmp_path / "lost", net, "srresnet", config)
    image = next(photos.glob("*.png"))
    for command in (["run", str(image), "-o", str(tmp_path / "out.png")], ["eval", str(photos)]):
        assert cli.main([*command, "--model", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the weights hold NaN or infinite values" in err, err
    assert not (tmp_path / "out.png").exists()


def test_a_stop_during_a_save_waits_for_the_save_and_the_run_resumes(photos, tmp_path, capsys, monkeypatch):
    """SIGTERM between the best model's two files and the state's: the save completes first (a stop
    in between left a pair no run could resume or load), then exit 143; the next run resumes."""
    import os
    import signal

    from srtrt.train import trainer

    from run_helpers import terminal_signals

    real_save = trainer.checkpoint.save

    def save_then_signal(path, *args, **kwargs):
        written = real_save(path, *args, **kwargs)
        if Path(path).name == "model":
            os.kill(os.getpid(), signal.SIGTERM)
        return written

    monkeypatch.setattr(trainer.checkpoint, "save", save_then_signal)
    out = tmp_path / "run"
    with terminal_signals():
        code, err = _train_cli(capsys, photos, out, "--iters", "3")
    assert code == 143 and err.strip().splitlines()[-1] == "srtrt: stopped by SIGTERM", err
    monkeypatch.setattr(trainer.checkpoint, "save", real_save)
    checkpoint.load(out / "model")
    checkpoint.load(out / "last")
    code, err = _train_cli(capsys, photos, out, "--iters", "3")
    assert code == 0, err
    assert json.loads((out / "last.json").read_text())["training"]["iterations"] == 3


def test_a_read_only_out_folder_is_one_line_before_any_work(photos, tmp_path):
    """(a real read-only bind mount, in a private mount namespace: root only; was a traceback once
    the photos were read)"""
    import subprocess
    import sys

    from run_helpers import cli_env, read_only, skip_without_private_mounts

    out = tmp_path / "ro"
    out.mkdir()
    skip_without_private_mounts(f"mount --bind {out} {out} && mount -o remount,bind,ro {out}")
    command = [sys.executable, "-m", "srtrt.cli", "train", photos, *TINY_CLI, "--out", out]
    done = subprocess.run(read_only(out, command), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write (Read-only file system)" in done.stderr


def test_a_resumed_run_keeps_the_model_it_started_from_and_refuses_another(photos, straight_run, tmp_path, capsys):
    """Its state names the --init it started from: a resume without --init still records it (it was
    dropped), and a resume with another --init is refused (it was recorded as the parent)."""
    _, init = straight_run
    out = tmp_path / "run"
    assert _train_cli(capsys, photos, out, "--init", str(init), "--blocks", "2", "--channels", "16")[0] == 0
    parent = checkpoint.load(init).sha256
    code, err = _train_cli(capsys, photos, out, "--iters", "2", "--blocks", "2", "--channels", "16")
    assert code == 0, err
    assert json.loads((out / "last.json").read_text())["training"]["initialised_from"]["sha256"] == parent
    other = tmp_path / "other"
    assert _train_cli(capsys, photos, other, "--blocks", "2", "--channels", "16")[0] == 0
    code, err = _train_cli(capsys, photos, out, "--iters", "3", "--blocks", "2", "--channels", "16",
                           "--init", str(other / "model.safetensors"))
    assert code == 2 and "--init names another model than the one this run started from" in err, err
    # a run started from scratch, resumed with an --init: it was ignored and recorded as the parent
    before = (other / "model.json").read_bytes()
    code, err = _train_cli(capsys, photos, other, "--iters", "3", "--blocks", "2", "--channels", "16",
                           "--init", str(init))
    assert code == 2 and "this run started from (none: it started from scratch)" in err, err
    assert (other / "model.json").read_bytes() == before


def test_a_run_refused_for_its_init_or_photos_leaves_no_run_folder(photos, straight_run, tmp_path, capsys):
    """Each refusal left an empty --out folder behind, and a config that differs from --init's named
    no option that would make them agree."""
    _, init = straight_run
    refusals = [(["--phase", "srgan", "--content-loss", "mse"],
                 "the srgan phase starts from an SRResNet checkpoint: pass --init PATH"),
                (["--init", str(init), "--channels", "8"], "give this run the network options it was trained with "
                                                           "(--scale, --blocks, --channels)"),
                (["--val-count", "9"], "lower --val-count or add photos")]
    for i, (flags, said) in enumerate(refusals):
        code, err = _train_cli(capsys, photos, tmp_path / f"out{i}", "--blocks", "2", *flags)
        assert code == 2 and said in err, err
        assert not (tmp_path / f"out{i}").exists()


def test_unreadable_files_in_the_photo_folder_are_skipped_with_a_line(photos, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    write_images(mixed, [(64, 64)] * 4, seed=6)
    (mixed / "bad.png").write_text("not an image")
    (mixed / "extra.png").mkdir()  # a folder with an image's name is not a photo
    code, err = _train_cli(capsys, mixed, tmp_path / "run")
    assert code == 0 and err.count("\n") == 1 and "bad.png" in err and "(skipped)" in err
    assert checkpoint.load(tmp_path / "run" / "model").meta["training"]["iterations"] == 1


def test_an_unreadable_held_out_photo_is_not_recorded_as_a_validation_image(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(folder, [(64, 64)] * 4, seed=7)
    (folder / "zz.png").write_text("not an image")  # sorted last: the one photo held out
    code, err = _train_cli(capsys, folder, tmp_path / "run", "--val-count", "1")
    assert code == 0 and "zz.png" in err and "(skipped)" in err
    assert checkpoint.load(tmp_path / "run" / "model").meta["training"]["val_images"] == []


def test_no_resume_keeps_the_earlier_run_aside_and_starts_a_clean_record(photos, tmp_path, capsys):
    out = tmp_path / "run"
    tiny = dict(blocks=1, channels=8, iters=2, val_every=2, batch=2)
    train(_config(photos, out, **tiny))
    earlier_rows, earlier_model = _metrics(out), (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    train(_config(photos, out, **{**tiny, "iters": 1, "val_every": 1}, resume=False))
    assert f"kept in {out / 'earlier-1'}" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(out)] == [1, 1]  # the new run's rows alone
    assert _metrics(out / "earlier-1") == earlier_rows
    assert (out / "earlier-1" / "model.safetensors").read_bytes() == earlier_model
    assert checkpoint.load(out / "model").meta["training"]["iterations"] == 1


def test_a_community_model_file_given_to_init_is_named_as_one(photos, tmp_path):
    community_file = tmp_path / "compact4.pth"
    torch.save(SRResNet(SRResNetConfig(blocks=1, channels=8)).state_dict(), community_file)
    with pytest.raises(SrtrtError) as info:
        train(_config(photos, tmp_path / "run", init=str(community_file)))
    message = str(info.value)
    assert message.startswith(f"{community_file}: not an srtrt checkpoint") and "community model" in message
    assert "--init takes srtrt checkpoints" in message and "compact4.json" not in message
    assert not (tmp_path / "run").exists()  # a refused --init leaves no empty run folder


def _vgg_state(keep=lambda layer: True) -> dict:
    return {f"features.{k}": v for k, v in vgg19_features().state_dict().items() if keep(int(k.split(".")[0]))}


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_bad_vgg_weight_files_are_one_line_naming_the_file(tmp_path, random_vgg_file):
    no_features, partial, truncated, hostile = (tmp_path / name for name in
                                                ("classifier.pth", "partial.pth", "cut.safetensors", "hostile.pth"))
    torch.save({"classifier.0.weight": torch.zeros(2)}, no_features)
    torch.save(_vgg_state(lambda layer: layer < 9), partial)  # enough for vgg22, not for vgg54
    truncated.write_bytes(random_vgg_file.read_bytes()[:1000])
    marker = tmp_path / "executed"
    torch.save({"features.0.weight": _RunsAShellCommand(marker)}, hostile)
    for path, name, cause in [(no_features, "vgg54", "holds no VGG19 weights"),
                              (partial, "vgg54", "lack features.10.weight"),
                              (truncated, "vgg54", "corrupt or truncated"),
                              (hostile, "vgg22", "refused: the file's pickle names posix.system")]:
        with pytest.raises(SrtrtError) as info:
            content_loss(name, path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and cause in message and "\n" not in message, message
        assert "weights_only" not in message
    assert not marker.exists()  # the pickle was read, never run
    assert content_loss("vgg22", partial).features[0].weight.shape == (64, 3, 3, 3)


def _tiny_run(photos, out, iters: int, **overrides):
    """A 1-block run saved at every step, so state.* names `iters` steps."""
    tiny = dict(blocks=1, channels=8, batch=2, iters=iters, val_every=1)
    return train(_config(photos, out, **{**tiny, **overrides}))


def test_a_crash_between_the_state_files_is_refused_not_resumed_as_the_older_step(photos, tmp_path):
    out = tmp_path / "run"
    _tiny_run(photos, out, 1)
    step_1_json = (out / "state.json").read_text()
    _tiny_run(photos, out, 2)
    (out / "state.json").write_text(step_1_json)  # step-2 tensors beside step 1's JSON: killed between the renames
    with pytest.raises(SrtrtError) as info:
        _tiny_run(photos, out, 3)
    message = str(info.value)
    assert message.startswith(f"{out}: state.safetensors is not the one state.json (step 1)")
    assert "--no-resume starts fresh" in message and "\n" not in message


def test_a_state_saved_without_the_tensors_sha256_still_resumes(photos, tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_run(photos, out, 1)
    doc = json.loads((out / "state.json").read_text())
    del doc["tensors_sha256"]
    (out / "state.json").write_text(json.dumps(doc))
    _tiny_run(photos, out, 2)
    assert f"resumed {out} at step 1" in capsys.readouterr().out


@pytest.fixture(scope="module")
def saved_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "run"
    _tiny_run(photos, out, 1)
    return out


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _without(key):
    def damage(path):
        doc = json.loads(path.read_text())
        del doc[key]
        path.write_text(json.dumps(doc))
    return damage


@pytest.mark.parametrize("name, damage, cause", [
    ("state.safetensors", _truncate, "unreadable training state (state.safetensors: "),
    ("state.safetensors", lambda path: path.unlink(), "(state.safetensors: No such file or directory)"),
    ("state.json", _without("optimizers"), "damaged training state (lacks 'optimizers')"),
    ("state.json", _without("step"), "damaged training state (lacks 'step')"),
    ("metrics.jsonl", lambda path: path.write_text("{\"st\n" + path.read_text()), "line 1 is not a metrics row"),
])
def test_a_damaged_run_folder_is_one_line(photos, saved_run, tmp_path, capsys, name, damage, cause):
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    damage(out / name)
    capsys.readouterr()
    code = cli.main(["train", str(photos), *TINY_CLI, "--out", str(out), "--iters", "2"])
    said, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and cause in err and "--no-resume starts fresh" in err, err
    assert "resumed" not in said  # nothing was resumed


def test_a_cut_off_last_metrics_line_is_left_out_on_resume(photos, saved_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss_g": 0.4')  # a power cut mid-line
    code, err = _train_cli(capsys, photos, out, "--iters", "2")
    assert code == 0, err
    assert [(r["step"], "val_psnr" in r) for r in _metrics(out)] == [(1, False), (1, True), (2, False), (2, True)]


def test_resuming_rewrites_the_metrics_through_an_atomic_write(photos, saved_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    from srtrt import atomic
    written, real = [], atomic.write_text
    monkeypatch.setattr(atomic, "write_text", lambda path, *a, **k: written.append(Path(path).name) or real(path, *a, **k))
    code, err = _train_cli(capsys, photos, out, "--iters", "2")
    assert code == 0 and "metrics.jsonl" in written, err


def test_a_held_out_photo_too_small_to_validate_on_is_skipped_with_a_line(tmp_path, capsys):
    for name, size in [("zz.png", (8, 8)), ("zz.png", (400, 6)), ("zz.png", (12, 12))]:
        folder = tmp_path / f"photos{size}"
        write_images(folder, [(64, 64)] * 4, seed=7)
        _one_image(folder / name, size)
        code, err = _train_cli(capsys, folder, tmp_path / f"run{size}", "--val-count", "1")
        assert code == 0 and "zz.png" in err and "too small to validate on" in err and "(skipped)" in err, err
        assert checkpoint.load(tmp_path / f"run{size}" / "model").meta["training"]["val_images"] == []


def _one_image(path, size):
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_init_with_a_training_record_that_is_not_an_object_is_one_line(photos, straight_run, tmp_path):
    init = tmp_path / "init"
    for suffix in (".safetensors", ".json"):
        init.with_suffix(suffix).write_bytes((straight_run[0] / "model").with_suffix(suffix).read_bytes())
    doc = json.loads(init.with_suffix(".json").read_text())
    doc["training"] = "not a record"
    init.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(SrtrtError) as info:
        train(_config(photos, tmp_path / "run", init=str(init.with_suffix(".safetensors")), iters=1, val_every=1))
    message = str(info.value)
    assert message.startswith(f"{init.with_suffix('.json')}: ") and '"training" is not a JSON object' in message


class _FullDiskFile(DiskFillsAfter):
    """DiskFillsAfter in a `with` block, as srtrt.atomic writes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_training_onto_a_full_disk_is_one_line_naming_the_file(photos, tmp_path, capsys, monkeypatch):
    from srtrt import atomic
    real_open = open

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return _FullDiskFile(file) if "model.safetensors" in str(path) else file

    monkeypatch.setattr(atomic, "open", open_on_full_disk, raising=False)
    code, err = _train_cli(capsys, photos, tmp_path / "run")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"srtrt: {tmp_path / 'run' / 'model.safetensors'}: ") and "No space left on device" in err
    assert not list((tmp_path / "run").glob(".*partial*"))
