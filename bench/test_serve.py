"""`srtrt serve` under load: 32 clients upload small images at once to one server process.

Every job must complete or be refused with 429 (the bounded queue), none lost, and each result
must be the one for its own input (every client sends an image of its own size, and every result
is compared byte for byte with the same file run in this process). Recorded: jobs/s over the
accepted jobs, p95 latency (upload to result), and the server's peak RSS, which must stay within
a bound above its RSS once warm (the queue bounds what is held: one image on the engine at a time).
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
httpx = pytest.importorskip("httpx", reason="the load clients use httpx")

CLIENTS = 32
QUEUE = 8                     # jobs waiting behind the running one; the rest of the 32 get 429
RSS_GROWTH_BOUND = 512 * 2**20  # bytes over the warm server's RSS
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the server's peak RSS from /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _tiny_model(folder: Path) -> Path:
    from srtrt import checkpoint
    from srtrt.nets import SRResNet, SRResNetConfig

    torch.manual_seed(0)
    config = SRResNetConfig(blocks=1, channels=8)
    return checkpoint.save(folder / "tiny.safetensors", SRResNet(config).eval(), "srresnet", config)


def _images(folder: Path, side: int) -> list[Path]:
    """One image per client, each of its own width, so a result given to the wrong client shows."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(CLIENTS):
        path = folder / f"client{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side + i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _expected(model: Path, images: list[Path], folder: Path) -> dict[str, bytes]:
    from srtrt.engine.batch.files import FileRunner
    from srtrt.engine.batch.options import RunOptions, open_backend

    options = RunOptions(model=str(model), backend="torch", device="cpu")
    runner = FileRunner(open_backend(options).backend, options)
    out = {}
    for image in images:
        destination = folder / f"{image.stem}_x4.png"
        assert runner.run(image, destination).status == "done"
        out[image.name] = destination.read_bytes()
    runner.backend.close()
    return out


def _server(port: int, models: Path, work: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, SRTRT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "srtrt.cli", "serve", "--port", str(port), "--models", str(models),
                             "--device", "cpu", "--queue", str(QUEUE), "--work-dir", str(work), "--no-warm"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _client(url: str, image: Path, results: list) -> None:
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as http:
        created = http.post("/api/jobs", files={"file": (image.name, image.read_bytes(), "image/png")},
                            data={"model": "tiny.safetensors", "backend": "torch"})
        if created.status_code == 429:
            results.append((image.name, "429", None, time.perf_counter() - started))
            return
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        while True:
            job = http.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.02)
        body = http.get(job["result_url"]).content if job["state"] == "done" else None
        results.append((image.name, job["state"], body, time.perf_counter() - started))


def _load(url: str, images: list[Path]) -> tuple[list, float]:
    results: list = []
    threads = [threading.Thread(target=_client, args=(url, image, results)) for image in images]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results, time.perf_counter() - started


def test_serve_under_32_clients(benchmark, tmp_path, mode):
    side = 16 if mode.name == "smoke" else 48
    for name in ("models", "in", "expected", "work", "cache"):
        (tmp_path / name).mkdir()
    model = _tiny_model(tmp_path / "models")
    images = _images(tmp_path / "in", side)
    expected = _expected(model, images, tmp_path / "expected")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _server(port, tmp_path / "models", tmp_path / "work", tmp_path / "cache")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/api/server", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.2)
        _client(url, images[0], [])  # warm: the model opens on its first job
        warm_rss = _rss(server.pid)["VmRSS"]

        rounds = []

        def one_round():
            rounds.append(_load(url, images))

        benchmark.group = "serve"
        benchmark.pedantic(one_round, rounds=1, iterations=1)
        results, wall = rounds[-1]
        peak_rss = _rss(server.pid)["VmHWM"]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    assert len(results) == CLIENTS  # none lost
    states = [state for _, state, _, _ in results]
    assert set(states) <= {"done", "429"}, states
    done = [(name, body, seconds) for name, state, body, seconds in results if state == "done"]
    assert len(done) >= QUEUE + 1  # the queue's places were taken before any 429
    for name, body, _ in done:
        assert body == expected[name], f"{name}: not its own result"
    latencies = sorted(seconds for _, _, seconds in done)
    p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
    benchmark.extra_info.update(kind="serve", clients=CLIENTS, queue=QUEUE, lr_side=side, accepted=len(done),
                                refused_429=states.count("429"), wall_s=round(wall, 3),
                                jobs_per_s=round(len(done) / wall, 2), p95_latency_s=round(p95, 3),
                                warm_rss_mb=round(warm_rss / 2**20, 1), peak_rss_mb=round(peak_rss / 2**20, 1))
    assert peak_rss - warm_rss < RSS_GROWTH_BOUND, f"peak RSS {peak_rss / 2**20:.0f} MiB vs {warm_rss / 2**20:.0f} warm"
