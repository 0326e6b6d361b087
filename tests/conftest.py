"""Shared fixtures. Tests run on the CPU and never need ../shared (they use it when present)."""
from __future__ import annotations

import contextlib
import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from srtrt.nets import InferenceView, SRResNet, SRResNetConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent (fresh clones, CI elsewhere)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def random_view(blocks: int = 2, channels: int = 8, scale: int = 4, seed: int = 0) -> InferenceView:
    """A small random SRResNet with non-trivial eval-mode BatchNorm statistics."""
    torch.manual_seed(seed)
    g = SRResNet(SRResNetConfig(scale=scale, blocks=blocks, channels=channels))
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return InferenceView(g).eval()


@contextlib.contextmanager
def strict_fp32():
    """Plain fp32 convolutions and matmuls: TF32 would make fp32 comparisons loose."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def smooth_image(h: int, w: int, channels: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A photo-like test image: smooth gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for _ in range(channels):
        fy, fx, ph = rng.uniform(0.02, 0.2, 3)
        planes.append(0.5 + 0.35 * np.sin(fy * yy + ph) * np.cos(fx * xx) + 0.1 * rng.random((h, w)))
    img = np.clip(np.stack(planes, -1), 0, 1)
    top = np.iinfo(dtype).max
    return (img * top).round().astype(dtype)


class DiskFillsAfter:
    """A file on a disk with room for `room` more bytes (0: already full): the write that does
    not fit raises ENOSPC; everything else (seek, flush, close, ...) is the real file's."""

    def __init__(self, file, room: int = 0):
        self._file, self._room = file, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 1-block, 8-channel SRResNet checkpoint with fixed random weights (the engine build tests)."""
    from srtrt import checkpoint

    torch.manual_seed(0)
    config = SRResNetConfig(scale=4, blocks=1, channels=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(path, SRResNet(config).eval(), "srresnet", config)
    return path.with_suffix(".safetensors")


@pytest.fixture(scope="module")
def own_srtrt_cache(tmp_path_factory):
    """srtrt's cache (measurements, exports, engines) in a folder of this module's own, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SRTRT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def steady_host(monkeypatch):
    """Whether `auto` reuses a timing must not hang on what else the host runs meanwhile (a test suite
    beside this one, a local Ray's own processes): measurements made in this process are taken as made
    on an idle host. test_measured's tests of a busy host set the threshold back."""
    from srtrt.engine.backends import measured

    monkeypatch.setattr(measured, "BUSY_WAITED", float("inf"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and oversubscribed cores make them crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_swinir():
    """A two-block SwinIR x2 (window attention: no dynamic-shape export), small enough for tests."""
    from spandrel.architectures.SwinIR import SwinIR

    with warnings.catch_warnings():  # its constructor calls torch.meshgrid without indexing=
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        return SwinIR(img_size=32, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=8, upscale=2,
                      upsampler="pixelshuffledirect")


def save_fp16_overflowing_compact(path: Path) -> Path:
    """A small Compact (spandrel: half supported) whose activations pass fp16's 65504: its first conv
    x1e7 and the next /1e7, the same function in fp32."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    with torch.no_grad():
        net.body[0].weight.mul_(1e7)
        net.body[0].bias.mul_(1e7)
        net.body[2].weight.div_(1e7)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def save_community_models(folder: Path, makers: dict) -> dict[str, Path]:
    """Each maker's network (spandrel's own classes) with seed-0 random weights halved (random
    outputs stay inside [0, 1] more often), saved as NAME.safetensors in `folder`."""
    from safetensors.torch import save_file

    paths = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():  # SwinIR/HAT's constructors call torch.meshgrid without indexing=
            warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
            net = make().eval()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.5)
        paths[name] = folder / f"{name}.safetensors"
        save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, str(paths[name]))
    return paths
