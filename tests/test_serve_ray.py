"""`srtrt serve --ray` on a local Ray (2 CPUs): a job through the Ray Serve deployment gives the
same bytes as one run in the server's own process. Skipped without the `serve-ray` extra."""
from __future__ import annotations

import time
import warnings

import pytest

pytest.importorskip("fastapi", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve", reason="srtrt serve --ray needs its extra: pip install 'srtrt[serve-ray]'")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient  # noqa: E402

from srtrt.cli import parser  # noqa: E402
from srtrt.engine.serve.app import create_app  # noqa: E402
from srtrt.engine.serve.main import config_from_args  # noqa: E402

from run_helpers import finished, save_tiny_model, write_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def upload(client, data: bytes, name: str) -> str:
    files = {"file": (name, data, "application/octet-stream")}
    created = client.post("/api/jobs", files=files, data={"model": "tiny.safetensors", "backend": "torch"})
    assert created.status_code == 202, created.text
    return created.json()["id"]


def served(tmp_path, models, *flags):
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    args = parser().parse_args(["serve", "--models", str(models), "--work-dir", str(tmp_path / "work"), "--no-warm",
                                *flags])
    return TestClient(create_app(config_from_args(args), log=lambda m: None), base_url="http://127.0.0.1:8000")


def test_a_job_through_ray_serve_gives_the_same_bytes(local_ray, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    image, other = write_images(tmp_path / "in", 2, height=24, width=32)
    broken = b"\x89PNG\r\n\x1a\n not a png"

    results = {}
    for flags in ((), ("--ray",)):
        with served(tmp_path / "-".join(flags or ("local",)), models, *flags) as client:
            queue = client.app.state.queue
            assert type(queue.warm).__name__ == ("RayBackends" if flags else "WarmBackends")
            assert queue.workers == 1  # one CPU replica of 2 cores: one job at a time
            job = finished(client, upload(client, image.read_bytes(), image.name), 180)
            assert job["state"] == "done", job
            assert job["progress"]["unit"] == "tile" and job["progress"]["done"] == job["progress"]["total"] >= 1
            assert "torch" in job["backend"]
            results[flags] = client.get(job["result_url"]).content
            failed = finished(client, upload(client, broken, "broken.png"), 180)
            assert failed["state"] == "failed" and failed["message"].startswith("broken.png: "), failed
            assert "srtrt-replica" not in failed["message"] and "\n" not in failed["message"]
            later = finished(client, upload(client, other.read_bytes(), other.name), 180)
            assert later["state"] == "done"  # the replica goes on after a failed file
    assert results[("--ray",)] == results[()]


def test_cancel_reaches_the_replica(local_ray, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    pytest.importorskip("av")
    from test_video import make_clip

    long = tmp_path / "long.mp4"
    make_clip(long, frames=240, size=(64, 48), audio=None)  # a step per frame: the job is caught mid-way
    (small,) = write_images(tmp_path / "small", 1, height=24, width=32)
    with served(tmp_path, models, "--ray") as client:
        job_id = upload(client, long.read_bytes(), long.name)
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job_id}").json()["progress"]["done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.delete(f"/api/jobs/{job_id}").json()["cancel_requested"] is True
        job = finished(client, job_id, 180)
        assert job["state"] == "cancelled" and job["progress"]["done"] < job["progress"]["total"], job
        started = time.monotonic()
        after = finished(client, upload(client, small.read_bytes(), small.name), 180)
        assert after["state"] == "done" and time.monotonic() - started < 30  # the replica is free again


def test_a_video_whose_container_changes_keeps_the_replicas_name(local_ray, tmp_path):
    """An .avi comes back as Matroska (`srtrt run` writes clip_x4.mkv): the server names and serves the
    replica's file as it was written, as a local job does (was: Matroska bytes named clip_x4.avi)."""
    pytest.importorskip("av")
    from test_video import make_clip

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    clip = tmp_path / "clip.avi"
    make_clip(clip, frames=4, codec="mjpeg", pix_fmt="yuvj420p", audio=None)
    answers = {}
    for flags in ((), ("--ray",)):
        with served(tmp_path / "-".join(flags or ("local",)), models, *flags) as client:
            job = finished(client, upload(client, clip.read_bytes(), clip.name), 180)
            assert job["state"] == "done", job
            got = client.get(job["result_url"])
            answers[flags] = got.headers["content-disposition"], got.headers["content-type"], got.content[:4]
    assert answers[("--ray",)] == answers[()]
    assert 'filename="clip_x4.mkv"' in answers[()][0] and answers[()][2] == b"\x1aE\xdf\xa3"


def test_sigterm_stops_a_ray_server_with_its_status(tmp_path):
    """ray.init swaps in a SIGTERM handler of its own (sys.exit(15)): `srtrt serve --ray` exited 15
    without its `stopped by` line. It stops as without --ray: 143, the line, its work folder removed."""
    import signal

    import httpx
    from test_serve import free_port

    from run_helpers import srtrt_process

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    (tmp_path / "work").mkdir()
    port = free_port()
    server = srtrt_process("serve", "--ray", "--port", port, "--models", models, "--work-dir", tmp_path / "work",
                           "--no-warm")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        err = server.communicate(timeout=60)[1]
    finally:
        server.kill()
    assert server.returncode == 143, err
    assert err.strip().splitlines()[-1] == "srtrt: stopped by SIGTERM"
    assert "Traceback" not in err, err
    assert list((tmp_path / "work").iterdir()) == []


def test_a_deep_input_through_a_replica_names_the_fp32_backend_that_ran_it(local_ray, tmp_path):
    """As in the server's own process (test_serve): the replica says which backend ran the input."""
    import numpy as np

    from srtrt.engine.datapath.writers import open_writer

    from conftest import smooth_image

    (tmp_path / "models").mkdir()
    with open_writer(tmp_path / "deep.png", 24, 20, 3, 16) as writer:
        writer.write_rows(smooth_image(20, 24, seed=2, dtype=np.uint16))
    with served(tmp_path, tmp_path / "models", "--ray") as client:
        created = client.post("/api/jobs", files={"file": ("deep.png", (tmp_path / "deep.png").read_bytes())},
                              data={"backend": "torch"})
        assert created.status_code == 202, created.text
        job = finished(client, created.json()["id"], 180)
    assert job["state"] == "done", job
    if job["backend"].startswith("torch (fp32"):  # no bf16 here: nothing runs apart
        pytest.skip("torch runs the shipped model in fp32 on this CPU")
    assert job["backend"].startswith("inputs of 16 bits a sample run on torch (fp32"), job["backend"]
