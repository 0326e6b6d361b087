"""Helpers for the `srtrt run` tests: a tiny random checkpoint, small images, leftovers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srtrt import checkpoint
from srtrt.nets import SRResNet, SRResNetConfig

from conftest import smooth_image


def save_tiny_model(folder: Path, name: str = "tiny", blocks: int = 1, channels: int = 4, seed: int = 0) -> Path:
    """A random SRResNet checkpoint small enough that a run takes milliseconds per image."""
    torch.manual_seed(seed)
    config = SRResNetConfig(blocks=blocks, channels=channels)
    return checkpoint.save(folder / f"{name}.safetensors", SRResNet(config).eval(), "srresnet", config)


def write_images(folder: Path, count: int, height: int = 24, width: int = 32, prefix: str = "img",
                 suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i}{suffix}"
        Image.fromarray(smooth_image(height, width, seed=i)).save(path)
        paths.append(path)
    return paths


def write_many_sizes(root: Path, count: int = 10) -> dict[str, tuple[int, int]]:
    """`count` small images in a new folder `root`, every size new (the many-sizes class, whose
    images share sheets); their (height, width) by stem."""
    root.mkdir()
    sizes = {}
    for i in range(count):
        h, w = 16 + i, 60 - i % 30
        Image.fromarray(smooth_image(h, w, seed=i)).save(root / f"small{i}.png")
        sizes[f"small{i}"] = (h, w)
    return sizes


def same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> bool:
    """Outputs of one image from a sheet and alone: OpenVINO's kernels sum in another order on another
    window (floats up to ~1.2e-7 apart), so a rare value rounds to the next 8- or 16-bit step."""
    difference = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return a.shape == b.shape and difference.max() <= 1 and np.mean(difference > 0) < 1e-3


def skip_without_private_mounts(mounts: str) -> None:
    """Skip unless `mounts` (shell mount commands) run in a private mount namespace here: root and unshare."""
    import shutil

    import pytest

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "sh", "-c", mounts],
                                                         capture_output=True).returncode != 0:
        pytest.skip("cannot mount a folder of its own here (needs root and unshare)")


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` run in a private mount namespace where `folder` is a read-only bind mount of itself."""
    import shlex

    script = f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))} && " \
             f"mount -o remount,bind,ro {shlex.quote(str(folder))} && exec {shlex.join(map(str, command))}"
    return ["unshare", "--mount", "sh", "-c", script]


def partials(folder: Path) -> list[Path]:
    """Temporary files a writer left behind (`.NAME.partial-PID-TOKEN`), searched recursively."""
    return [p for p in Path(folder).rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")]


def is_complete_image(path: Path, size: tuple[int, int] | None = None) -> bool:
    """Opens and decodes fully (a truncated file raises), with the expected size if given."""
    with Image.open(path) as img:
        img.load()
        return size is None or img.size == size


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def cli_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def without_dac_override(command: list[str]) -> list[str]:
    """`command` run so that file permissions apply to it: as root, without the capabilities that
    let root read and enter anything (setpriv); skips the test where that cannot be done."""
    import shutil

    import pytest

    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command]


def default_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP as a terminal gives them to a command it starts: the tests that send
    them must not inherit a runner's SIG_IGN (a non-interactive shell's background job ignores SIGINT,
    nohup SIGHUP), which srtrt leaves ignored, as asked. (A preexec_fn for subprocess.)"""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def srtrt_process(*args: str, **kwargs) -> subprocess.Popen:
    """`srtrt ...` in a fresh interpreter (for signals and concurrent runs), signals as a terminal gives them."""
    kwargs.setdefault("preexec_fn", default_signals)
    return subprocess.Popen([sys.executable, "-m", "srtrt.cli", *map(str, args)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@contextmanager
def terminal_signals():
    """In this process, for a test that signals itself: SIGINT raising KeyboardInterrupt and SIGTERM
    and SIGHUP at their default, where the runner had them ignored; restored after."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float) -> tuple[bool, str]:
    """Send `signum` to `process` as soon as `ready()` holds (polled every 5 ms); then wait for it.
    Returns (whether the signal was sent before the process ended, its stderr)."""
    deadline, sent = time.monotonic() + timeout, False
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                process.send_signal(signum)
                sent = True
                break
            time.sleep(0.005)
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return sent, err


def run_cli(capsys, *args) -> tuple[int, str]:
    """`srtrt run ARGS` in this process: (exit code, what it printed on stderr)."""
    from srtrt.cli import main

    code = main(["run", *map(str, args)])
    return code, capsys.readouterr().err


def finished(client, job_id: str, timeout: float = 60.0) -> dict:
    """An `srtrt serve` job's status once it has ended (done, failed, cancelled), polled through `client`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")
