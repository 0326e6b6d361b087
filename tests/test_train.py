"""A tiny training run on generated images: the loss falls, resuming continues exactly, and the
SRGAN phase runs its mechanics (with a deliberately random VGG file) or refuses to start without VGG."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from srtrt import checkpoint
from srtrt.errors import SrtrtError
from srtrt.train.losses import VGGContentLoss, vgg19_features
from srtrt.train.trainer import TrainConfig, train
from synthetic import write_images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and oversubscribed cores make them crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_srgan_phase_without_vgg_weights_stops_before_training(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no torchvision cache here
    out = tmp_path / "srgan"
    with pytest.raises(SrtrtError) as info:
        train(_config(photos, out, phase="srgan", init=str(tmp_path / "unused.safetensors")))
    message = str(info.value)
    assert "\n" not in message and "--vgg-weights" in message and "VGG19" in message
    assert not (out / "metrics.jsonl").exists() and not (out / "state.json").exists()

    with pytest.raises(SrtrtError, match="not found"):
        train(_config(photos, out, phase="srgan", vgg_weights=str(tmp_path / "missing.pth")))


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
