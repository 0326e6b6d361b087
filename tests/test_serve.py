"""`srtrt serve` through the ASGI test client: jobs, progress, results equal to `srtrt run`, limits, auth."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import struct
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
pytest.importorskip("python_multipart", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx is what is installed
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from srtrt.engine.serve.app import create_app  # noqa: E402
from srtrt.engine.serve.settings import ServeConfig  # noqa: E402
from srtrt.errors import SrtrtError  # noqa: E402

from run_helpers import default_signals, finished, run_cli, save_tiny_model, srtrt_process, write_images  # noqa: E402

LOCAL = "http://127.0.0.1:8000"
TINY = {"model": "tiny.safetensors", "backend": "torch"}

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    save_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("inputs"), 3, height=24, width=32)


@contextmanager
def serving(tmp_path: Path, models_dir: Path, base_url: str = LOCAL, **settings):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    app = create_app(ServeConfig(models_dir=models_dir, work_dir=work, **settings), log=lambda m: None)
    with TestClient(app, base_url=base_url) as client:
        client.app_state = app.state
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(config: ServeConfig):
    """`srtrt serve`'s own uvicorn server (main.server) on a thread: yields its URL and `stop()`, which
    shuts it down as Ctrl-C does and returns once it has (called again at exit)."""
    from srtrt.engine.serve.main import server

    running = server(create_app(config, log=lambda m: None), config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.started, "uvicorn did not start"

    def stop():
        running.should_exit = True
        thread.join(15)

    try:
        yield f"http://{config.host}:{config.port}", stop
    finally:
        stop()


def answering(url: str, timeout: float = 60.0) -> None:
    """Returns once an `srtrt serve` process at `url` answers (it imports torch first: seconds)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/jobs", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def stalled_upload(port: int) -> socket.socket:
    """A multipart upload that says 100 kB are coming, sends its first 100 bytes, then nothing."""
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n\x89PNG' + b"\0" * 30
    head = (f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + part)
    return sock


@contextmanager
def paced_upload(port: int, first: bytes, rest: bytes, chunk: int, client: str):
    """A multipart upload (boundary `b`) of `first + rest` that sends its headers and `first` at once, then
    `chunk` bytes of `rest` every 0.1 s from a thread; yields its socket."""
    head = (f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Srtrt-Client: {client}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(first) + len(rest)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head.encode() + first)
    stop = threading.Event()

    def send():
        for at in range(0, len(rest), chunk):
            if stop.wait(0.1):
                return
            try:
                sock.sendall(rest[at:at + chunk])
            except OSError:  # the server answered and closed
                return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield sock
    finally:
        stop.set()
        sender.join(5)
        sock.close()


def whole_reply(sock: socket.socket) -> tuple[bytes, bytes]:
    """An answer's head and its whole body (its Content-Length), however the bytes come."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += sock.recv(65536) or b"\r\n\r\n"  # closed before a head: what came is the answer
        except TimeoutError:
            return b"(no answer)", b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while length and len(body) < int(length[1]):
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return head, body


def form(data: bytes, name: str, **fields) -> bytes:
    """A whole multipart/form-data body (boundary `b`): the fields, then the file."""
    parts = [f'--b\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n' for key, value in fields.items()]
    file = f'--b\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    return "".join(parts).encode() + file.encode() + data + b"\r\n--b--\r\n"


def receiving(tmp_path: Path, uploads: int = 1) -> None:
    """Returns once the server has `uploads` job folders, each with an upload's file open in it."""
    deadline = time.monotonic() + 10
    while len(list((tmp_path / "work").glob("*/*/input.png"))) < uploads:
        assert time.monotonic() < deadline, "the upload never reached the server"
        time.sleep(0.02)


def reply(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except TimeoutError:
        return b"(no answer)"


def upload(client, data: bytes, name: str = "photo.png", **fields):
    return client.post("/api/jobs", files={"file": (name, data, "application/octet-stream")}, data={**TINY, **fields})


def job_folders(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "work").glob("*/*") if p.is_dir()]


class Gate:
    """Holds the worker inside a job's first progress report until released: a job that stays running."""

    def __init__(self, queue):
        self.entered, self.release = threading.Event(), threading.Event()
        self._progress = queue._progress
        queue._progress = self

    def __call__(self, *args):
        self.entered.set()
        assert self.release.wait(30)
        return self._progress(*args)


# --------------------------------------------------------------------------- the job path


def test_upload_progress_result_equals_srtrt_run(tmp_path, models_dir, images, capsys):
    source = images[0]
    with serving(tmp_path, models_dir) as client:
        created = upload(client, source.read_bytes(), source.name)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        events = []
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["state"] == "done", events[-1]
        progress = events[-1]["progress"]
        assert progress["unit"] == "tile" and progress["done"] == progress["total"] >= 1
        assert "torch" in events[-1]["backend"]
        result = client.get(events[-1]["result_url"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        download = client.get(events[-1]["result_url"], params={"download": 1})
        assert 'attachment; filename="img0_x4.png"' in download.headers["content-disposition"]
    code, err = run_cli(capsys, source, "-o", tmp_path / "cli.png", "--model", models_dir / "tiny.safetensors",
                        "--backend", "torch", "-q")
    assert code == 0, err
    assert result.content == (tmp_path / "cli.png").read_bytes()
    assert Image.open(io.BytesIO(result.content)).size == (32 * 4, 24 * 4)


def test_a_deep_input_names_the_fp32_backend_that_ran_it(tmp_path, models_dir):
    """The shipped model under auto (a reduced precision the guard allows, where this CPU has one):
    a 16-bit PNG ran in fp32, while the job named the int8 or bf16 backend it did not run on."""
    import numpy as np

    from srtrt.engine.datapath.writers import open_writer

    from conftest import smooth_image

    with open_writer(tmp_path / "deep.png", 24, 20, 3, 16) as writer:
        writer.write_rows(smooth_image(20, 24, seed=2, dtype=np.uint16))
    with open_writer(tmp_path / "flat.png", 24, 20, 3, 8) as writer:
        writer.write_rows(smooth_image(20, 24, seed=2))
    with serving(tmp_path, models_dir) as client:
        def job(name):
            created = client.post("/api/jobs", files={"file": (name, (tmp_path / name).read_bytes())},
                                  data={"backend": "torch"})
            assert created.status_code == 202, created.text
            done = finished(client, created.json()["id"])
            assert done["state"] == "done", done
            return done["backend"]

        flat, deep = job("flat.png"), job("deep.png")
    if flat.startswith("torch (fp32"):  # no bf16 here: nothing runs apart
        pytest.skip("torch runs the shipped model in fp32 on this CPU")
    assert flat.startswith("torch (bf16") and deep.startswith("inputs of 16 bits a sample run on torch (fp32"), deep


def test_json_job_then_put_input(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir) as client:
        created = client.post("/api/jobs", json={**TINY, "filename": "from-json.png"})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] == "awaiting_input" and job["input_url"]
        put = client.put(job["input_url"], content=images[1].read_bytes())
        assert put.status_code == 202, put.text
        done = finished(client, job["id"])
        assert done["state"] == "done" and done["result_name"] == "from-json_x4.png"
        assert client.put(job["input_url"], content=b"again").status_code in (404, 409)
        assert client.post("/api/jobs", json={**TINY, "filename": "notes.txt"}).status_code == 415
        bad = client.post("/api/jobs", json={**TINY, "filename": "a.png", "tile": 0})
        assert bad.status_code == 422 and "\n" not in bad.json()["detail"]
        # bodies json.loads raises other errors for: bad UTF-8, nesting past the recursion limit, a huge integer
        for body in (b'{"filename":"\xff\xfe.png"}', b"[" * 8000 + b"]" * 8000,
                     b'{"filename":"a.png","png_level":' + b"1" * 5000 + b"}"):
            answer = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and answer.json()["detail"].startswith("the body is not JSON")


def test_a_second_put_while_the_first_is_writing_is_409_and_the_job_survives(tmp_path, models_dir, images):
    """A PUT finds the input file already open for writing (another PUT under way): it is refused
    without discarding the job the other request is filling."""
    from srtrt.engine.serve import uploads

    with serving(tmp_path, models_dir) as client:
        job = client.post("/api/jobs", json={**TINY, "filename": "c.png"}).json()
        (folder,) = job_folders(tmp_path)
        uploads.input_path(folder, "c.png").write_bytes(images[1].read_bytes()[:10])  # the first PUT's bytes so far
        second = client.put(job["input_url"], content=images[1].read_bytes())
        assert second.status_code == 409 and "receiving its input from another request" in second.json()["detail"]
        assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "awaiting_input" and folder.is_dir()


def test_cancel_queued_and_running_jobs(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir) as client:
        gate = Gate(client.app_state.queue)
        running = upload(client, images[0].read_bytes()).json()["id"]
        assert gate.entered.wait(30)
        queued = upload(client, images[1].read_bytes()).json()["id"]
        assert client.get(f"/api/jobs/{queued}").json()["position"] == 1
        assert client.delete(f"/api/jobs/{queued}").json()["state"] == "cancelled"
        assert client.delete(f"/api/jobs/{running}").json()["cancel_requested"] is True
        gate.release.set()
        job = finished(client, running)
        assert job["state"] == "cancelled" and job["result_url"] is None
        assert client.get(f"/api/jobs/{running}/result").status_code == 409
        assert job_folders(tmp_path) == []  # inputs and partial outputs removed
        after = upload(client, images[2].read_bytes()).json()["id"]
        assert finished(client, after)["state"] == "done"  # the server goes on
        assert client.delete(f"/api/jobs/{after}").status_code == 200  # a finished job: deleted
        assert client.get(f"/api/jobs/{after}").status_code == 404


def test_cancelling_a_running_job_on_a_community_model_cancels_it(tmp_path, images):
    """The cancel, raised from the job's progress report inside the network's run, was taken for the
    model failing on the image: state failed, "the Compact model failed on this image (Cancelled)"."""
    pytest.importorskip("spandrel")
    from spandrel.architectures.Compact import Compact

    from conftest import save_community_models

    models = tmp_path / "models"
    models.mkdir()
    save_community_models(models, {"compact": lambda: Compact(num_feat=8, num_conv=2, upscale=2)})
    with serving(tmp_path, models) as client:
        gate = Gate(client.app_state.queue)
        running = upload(client, images[0].read_bytes(), model="compact.safetensors").json()["id"]
        assert gate.entered.wait(30)
        assert client.delete(f"/api/jobs/{running}").json()["cancel_requested"] is True
        gate.release.set()
        job = finished(client, running)
        assert job["state"] == "cancelled" and job["message"] == "cancelled", job
        assert job_folders(tmp_path) == []


def test_full_queue_answers_429_with_retry_after(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir, queue_size=2) as client:
        gate = Gate(client.app_state.queue)
        first = upload(client, images[0].read_bytes()).json()["id"]
        assert gate.entered.wait(30)
        accepted = [upload(client, images[i].read_bytes()) for i in (1, 2)]
        assert [r.status_code for r in accepted] == [202, 202]
        refused = upload(client, images[0].read_bytes())
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "queue is full" in refused.json()["detail"]
        gate.release.set()
        for job_id in [first] + [r.json()["id"] for r in accepted]:
            assert finished(client, job_id)["state"] == "done"
        assert upload(client, images[0].read_bytes()).status_code == 202  # room again


def test_a_stalled_upload_is_dropped_and_frees_its_place(tmp_path, models_dir, images, monkeypatch):
    """A client that stops sending its body holds its place in the queue only until the idle timeout:
    then it gets 408, its folder goes, and the next upload is taken. `--queue 1` on an idle server
    has two places: the one that will run at once and the one that waits behind it."""
    import httpx

    from srtrt.engine.serve import uploads

    monkeypatch.setattr(uploads, "IDLE_SECONDS", 1.5)
    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models_dir, work_dir=tmp_path / "work", queue_size=1)
    with live_server(config) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        with stalled_upload(config.port) as stalled, stalled_upload(config.port) as behind:
            receiving(tmp_path, uploads=2)
            assert upload(client, images[0].read_bytes()).status_code == 429  # their places, while bytes may come
            answers = reply(stalled), reply(behind)
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408") and b"no bytes came for 1.5 s" in answer, answer
        assert job_folders(tmp_path) == []
        created = upload(client, images[0].read_bytes())
        assert created.status_code == 202, created.text
        assert finished(client, created.json()["id"])["state"] == "done"


def test_a_trickling_upload_is_dropped_but_a_slow_steady_one_is_taken(tmp_path, models_dir, images, monkeypatch):
    """A client sending a byte just often enough to dodge the idle timeout holds its place only until it
    falls behind the minimum average rate (after a grace): 408, its folder gone, the next upload taken,
    though that one too is slow and takes longer than the grace."""
    import httpx

    from srtrt.engine.serve import uploads

    # the server's own bounds: 50 MB at 1 MB/s is never cut, a byte every 29 s is by its second byte
    assert all(uploads.allowed_seconds(second * 10**6) > second for second in range(51))
    assert uploads.allowed_seconds(2) < 2 * 29
    monkeypatch.setattr(uploads, "GRACE_SECONDS", 1.0)
    monkeypatch.setattr(uploads, "MIN_RATE", 200)  # the trickle sends 10 bytes/s, the steady upload 1000
    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models_dir, work_dir=tmp_path / "work", queue_size=1)
    me = {"X-Srtrt-Client": "trickle-test-client-0001"}
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n\x89PNG'
    with live_server(config) as (url, _), httpx.Client(base_url=url, timeout=30, headers=me) as client:
        with paced_upload(config.port, part, b"\0" * 100_000, 1, me["X-Srtrt-Client"]) as trickle, \
                paced_upload(config.port, part, b"\0" * 100_000, 1, me["X-Srtrt-Client"]) as behind:
            receiving(tmp_path, uploads=2)  # `--queue 1` on an idle server: two places
            assert upload(client, images[0].read_bytes()).status_code == 429  # their places, while bytes come
            replies = whole_reply(trickle), whole_reply(behind)
        for head, answer in replies:
            assert head.startswith(b"HTTP/1.1 408") and b"too slow: under 200 bytes/s" in answer, head + answer
        assert job_folders(tmp_path) == []
        body = form(images[0].read_bytes(), "steady.png", **TINY)
        started = time.monotonic()
        with paced_upload(config.port, b"", body, 100, me["X-Srtrt-Client"]) as steady:
            head, answer = whole_reply(steady)
        assert time.monotonic() - started > uploads.GRACE_SECONDS
        assert head.startswith(b"HTTP/1.1 202"), head + answer
        assert finished(client, json.loads(answer)["id"])["state"] == "done"


def test_shutdown_ends_event_streams_and_uploads_at_once(tmp_path, models_dir, capfd):
    """Ctrl-C with the page open (its event stream) and an upload under way: both end as the server
    starts shutting down, where uvicorn would wait for them, then cancel them with tracebacks."""
    import httpx

    from srtrt.engine.serve.main import GRACEFUL_SECONDS

    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models_dir, work_dir=tmp_path / "work")
    following, ended = threading.Event(), []

    def follow(url):
        try:
            with httpx.stream("GET", url + "/api/events", timeout=30) as events:
                for _ in events.iter_lines():
                    following.set()
            ended.append("cleanly")
        except httpx.HTTPError as e:
            ended.append(type(e).__name__)

    with live_server(config) as (url, stop), stalled_upload(config.port) as stalled:
        follower = threading.Thread(target=follow, args=(url,))
        follower.start()
        assert following.wait(10)
        receiving(tmp_path)
        started = time.monotonic()
        stop()
        took = time.monotonic() - started
        follower.join(10)
        answer = reply(stalled)
    assert ended == ["cleanly"]
    assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer, answer
    assert took < GRACEFUL_SECONDS - 1, took
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err


@pytest.mark.parametrize("signals, code", [(["SIGINT"], 130), (["SIGINT", "SIGINT"], 130), (["SIGTERM"], 143),
                                           (["SIGHUP"], 129)])
def test_serve_stopped_by_a_signal_exits_with_its_code(tmp_path, models_dir, signals, code):
    """`srtrt serve` stopped by Ctrl-C (twice in a row too: uvicorn then skips the app's shutdown, and
    the lifespan asyncio cancels printed a traceback), SIGTERM or SIGHUP: the shell's status for that signal,
    as for srtrt run, no traceback, and its work folder removed."""
    import signal


    (tmp_path / "work").mkdir()
    port = free_port()
    server = srtrt_process("serve", "--port", port, "--models", models_dir, "--work-dir", tmp_path / "work", "--no-warm")
    try:
        answering(f"http://127.0.0.1:{port}")
        for name in signals:
            server.send_signal(getattr(signal, name))
            time.sleep(0.01)
        err = server.communicate(timeout=30)[1]
    finally:
        server.kill()
    assert server.returncode == code, err
    assert err.strip().splitlines()[-1] == f"srtrt: stopped by {signals[0]}"
    assert "Traceback" not in err and "ERROR" not in err, err
    assert list((tmp_path / "work").iterdir()) == []


def test_a_client_gone_mid_body_is_no_traceback(tmp_path, models_dir, capfd):
    """A client that disconnects in the middle of a PUT or a JSON body: its job is discarded and the
    server logs nothing (starlette's ClientDisconnect came out as "Exception in ASGI application")."""
    import httpx

    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models_dir, work_dir=tmp_path / "work")
    with live_server(config) as (url, stop):
        job = httpx.post(url + "/api/jobs", json={**TINY, "filename": "a.png"}).json()["id"]
        for head in (f"PUT /api/jobs/{job}/input HTTP/1.1\r\nContent-Type: application/octet-stream\r\n",
                     "POST /api/jobs HTTP/1.1\r\nContent-Type: application/json\r\n"):
            with socket.create_connection(("127.0.0.1", config.port), timeout=5) as sock:
                sock.sendall(f"{head}Host: 127.0.0.1:{config.port}\r\nContent-Length: 1000\r\n\r\n".encode() + b"{" * 10)
                time.sleep(0.3)  # the server is reading the body when the client goes
        deadline = time.monotonic() + 10
        while httpx.get(url + f"/api/jobs/{job}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + f"/api/jobs/{job}").status_code == 404  # discarded with its upload
        stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err


def test_jobs_awaiting_their_input_keep_no_upload_out(tmp_path, models_dir, images, monkeypatch):
    """A job created by JSON takes a place in the queue only once its input comes: one whose client
    never PUTs it keeps no upload out. Such jobs are bounded on their own, with the time until the
    oldest is dropped as Retry-After, and an overdue one is dropped as soon as its place is asked for."""
    from srtrt.engine.serve import jobs

    with serving(tmp_path, models_dir, queue_size=1) as client:
        awaiting = client.post("/api/jobs", json={**TINY, "filename": "a.png"})
        assert awaiting.status_code == 201
        uploaded = upload(client, images[0].read_bytes())
        assert uploaded.status_code == 202, uploaded.text
        refused = client.post("/api/jobs", json={**TINY, "filename": "b.png"})
        assert refused.status_code == 429 and "too many jobs await their input" in refused.json()["detail"]
        assert jobs.UPLOAD_WAIT - 5 <= int(refused.headers["retry-after"]) <= jobs.UPLOAD_WAIT

        assert client.delete(f"/api/jobs/{awaiting.json()['id']}").status_code == 200
        monkeypatch.setattr(jobs, "UPLOAD_WAIT", 0.2)
        overdue = client.post("/api/jobs", json={**TINY, "filename": "c.png"}).json()["id"]
        time.sleep(0.3)
        assert client.post("/api/jobs", json={**TINY, "filename": "d.png"}).status_code == 201
        assert client.get(f"/api/jobs/{overdue}").status_code == 404
        assert finished(client, uploaded.json()["id"])["state"] == "done"


# --------------------------------------------------------------------------- bad input


def test_oversized_upload_is_413_and_leaves_nothing(tmp_path, models_dir):
    with serving(tmp_path, models_dir, max_upload_bytes=1000) as client:
        declared = upload(client, b"x" * 5000)
        assert declared.status_code == 413 and "over the limit of 1,000 bytes" in declared.json()["detail"]
        boundary = "srtrtboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n".encode()
                + b"x" * 5000 + f"\r\n--{boundary}--\r\n".encode())
        chunked = client.post("/api/jobs", content=iter([body[:100], body[100:]]),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert chunked.status_code == 413  # no Content-Length: counted while streaming
        assert client.get("/api/jobs").json() == []
        assert job_folders(tmp_path) == []


def test_a_chunked_form_of_endless_fields_is_413_not_held_in_memory(tmp_path, models_dir):
    """Fields count towards the upload limit too: a chunked body (no Content-Length) of thousands of
    small fields was kept whole in memory, however large, and answered with a 422 of megabytes."""
    def fields():
        for i in range(2000):  # 8 MB of fields against a 100 kB limit
            yield b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % i + b"v" * 4000 + b"\r\n"
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG\r\n--b--\r\n'

    with serving(tmp_path, models_dir, max_upload_bytes=100_000) as client:
        refused = client.post("/api/jobs", content=fields(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert refused.status_code == 413 and "over the limit of 100,000 bytes" in refused.json()["detail"]
        assert len(refused.content) < 200
        assert client.get("/api/jobs").json() == [] and job_folders(tmp_path) == []


def test_a_forms_fields_are_bounded_in_all_whatever_the_upload_limit(tmp_path, models_dir, images):
    """Fields are held in memory: a form declaring 150 MB of 4000-byte fields under the 1 GiB upload
    limit was read whole into memory (three at once took 450 MB) before its 400 "no file part"."""
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % i + b"v" * 4000 + b"\r\n"
                    for i in range(20))  # 80 kB of fields: 16 take the 64 KiB
    body += b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body += images[0].read_bytes() + b"\r\n--b--\r\n"
    with serving(tmp_path, models_dir) as client:
        refused = client.post("/api/jobs", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
        assert refused.status_code == 413, refused.text
        assert refused.json()["detail"].startswith("the form's fields and part headers are over 65,536 bytes in all")
        assert refused.headers["connection"] == "close"
        assert client.get("/api/jobs").json() == [] and job_folders(tmp_path) == []


def test_a_boundary_the_parser_refuses_is_400_not_500(tmp_path, models_dir):
    with serving(tmp_path, models_dir) as client:
        response = client.post("/api/jobs", content=b"--" + b"x" * 300 + b"--\r\n",
                               headers={"content-type": "multipart/form-data; boundary=" + "x" * 300})
        assert response.status_code == 400 and "malformed multipart form (Boundary length 300" in response.text
        assert job_folders(tmp_path) == []


def test_a_form_cut_before_its_closing_boundary_is_400_and_leaves_nothing(tmp_path, models_dir):
    boundary = "srtrtboundary"
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n".encode()
    png = (Path(write_images(tmp_path, 1, height=8, width=8)[0])).read_bytes()
    with serving(tmp_path, models_dir) as client:
        for body in (head + png[: len(png) // 2], head + png + f"\r\n--{boundary}".encode()):
            response = client.post("/api/jobs", content=body,
                                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            assert response.status_code == 400 and "cut short" in response.json()["detail"], response.text
        assert client.get("/api/jobs").json() == []
        assert job_folders(tmp_path) == []


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_422_before_any_decode(tmp_path, models_dir, monkeypatch):
    from PIL import ImageFile

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with serving(tmp_path, models_dir) as client:
        response = upload(client, bomb_png(30000, 30000), "bomb.png")
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("bomb.png: image is 30000x30000") and "decompression-bomb guard" in detail
        assert "\n" not in detail
        assert decoded == []
        assert client.get("/api/jobs").json() == [] and job_folders(tmp_path) == []


def test_corrupt_file_fails_alone_in_one_line(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir) as client:
        broken = upload(client, b"\x89PNG\r\n\x1a\n this is not a png", "broken.png").json()["id"]
        job = finished(client, broken)
        assert job["state"] == "failed"
        assert job["message"].startswith("broken.png: ") and "\n" not in job["message"]
        assert str(tmp_path) not in job["message"]  # the server's folders stay private
        assert client.get(f"/api/jobs/{broken}/result").json()["detail"] == job["message"]
        good = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, good)["state"] == "done"


def test_a_failing_model_file_is_named_by_its_id_not_its_path(tmp_path, images):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "empty.pth").write_bytes(b"")
    with serving(tmp_path, folder) as client:
        job = finished(client, upload(client, images[0].read_bytes(), model="empty.pth").json()["id"])
        assert job["state"] == "failed" and job["message"].startswith("empty.pth: "), job["message"]
        assert str(tmp_path) not in job["message"]
        assert client.get(f"/api/jobs/{job['id']}/result").json()["detail"] == job["message"]


def test_media_types_match_in_any_case(tmp_path, models_dir):
    body = json.dumps({**TINY, "filename": "a.png"})
    with serving(tmp_path, models_dir) as client:
        for media in ("Application/JSON", "application/json; charset=utf-8", "APPLICATION/JSON ; charset=UTF-8"):
            created = client.post("/api/jobs", content=body, headers={"Content-Type": media})
            assert created.status_code == 201, (media, created.text)


@pytest.mark.parametrize("name", ["../../escape.png", "..\\..\\escape.png", "/etc/escape.png", "sub/../../escape.png",
                                  '"quoted"\r\nX-Injected: 1.png'])
def test_file_names_are_never_paths(tmp_path, models_dir, images, name):
    with serving(tmp_path, models_dir) as client:
        created = upload(client, images[0].read_bytes(), name)
        assert created.status_code == 202, created.text
        job = finished(client, created.json()["id"])
        assert job["state"] == "done" and "/" not in job["name"] and "\\" not in job["name"]
        result = client.get(job["result_url"], params={"download": 1})
        assert result.status_code == 200 and "x-injected" not in result.headers
        files = [p.name for p in (tmp_path / "work").rglob("*") if p.is_file()]
        assert files == ["input_x4.png"]
    assert not list(tmp_path.parent.rglob("escape*"))


def test_models_come_from_the_listing_only(tmp_path, models_dir, images):
    (tmp_path / "outside.safetensors").write_bytes(b"not read")
    with serving(tmp_path, models_dir) as client:
        listed = client.get("/api/server").json()
        assert {"id": "tiny.safetensors", "kind": "checkpoint", "chosen": None} in listed["models"]
        for model in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "tiny.json"):
            refused = upload(client, images[0].read_bytes(), model=model)
            assert refused.status_code == 400 and "unknown model" in refused.json()["detail"]
        assert client.get("/api/jobs").json() == []


def test_the_models_folder_is_read_as_it_is_now(tmp_path):
    """Listed per request: a file dropped in while the server runs is offered, and a sidecar written
    beside one makes it an srtrt checkpoint, with nothing cached to go stale."""
    from srtrt import checkpoint
    from srtrt.engine.serve import models

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"x")

    def offered():
        return [(entry.id, entry.kind) for entry in models.list_models(folder) if entry.kind != "embedded"]

    assert offered() == [("a.safetensors", "community")]
    (folder / "b.pth").write_bytes(b"x")
    (folder / "a.json").write_text(json.dumps({"format": checkpoint.FORMAT}))
    (folder / "b.json").write_text(json.dumps({"format": checkpoint.FORMAT}))  # a pickle is never srtrt's
    assert offered() == [("a.safetensors", "checkpoint"), ("b.pth", "community")]


def test_a_model_file_name_that_is_not_utf8_or_a_vanished_folder_is_no_500(tmp_path):
    """A name no client could send back (bytes that are not UTF-8) is not offered; a folder removed
    while serving offers no files, and the embedded models go on working."""
    folder = tmp_path / "models"
    folder.mkdir()
    save_tiny_model(folder)
    with open(os.fsencode(folder) + b"/bad\xffname.pth", "wb") as f:
        f.write(b"x")
    with serving(tmp_path, folder) as client:
        listed = client.get("/api/server")
        assert listed.status_code == 200, listed.text
        assert [m["id"] for m in listed.json()["models"] if m["kind"] != "embedded"] == ["tiny.safetensors"]
        shutil.rmtree(folder)
        listed = client.get("/api/server")
        assert listed.status_code == 200 and {m["kind"] for m in listed.json()["models"]} == {"embedded"}
        created = client.post("/api/jobs", json={"filename": "a.png"})  # the default model: embedded
        assert created.status_code == 201, created.text


# --------------------------------------------------------------------------- who may call


def test_a_port_out_of_range_or_in_use_is_one_line_before_serving(tmp_path, models_dir):
    import socket

    from srtrt.engine.serve.main import _check_free

    with pytest.raises(SrtrtError, match="--port must be 0-65535, not 80000"):
        ServeConfig(models_dir=models_dir, port=80000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SrtrtError, match="cannot listen on .*in use"):
            _check_free("127.0.0.1", port, f"http://127.0.0.1:{port}/")
    # --port 0: the system picks the port, and "serving on" names that one, not ":0"
    picked = _check_free("127.0.0.1", 0, "http://127.0.0.1:0/")
    assert 0 < picked < 65536


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_a_failed_start_leaves_no_folder_and_names_its_address_once(tmp_path, capsys, host):
    from srtrt.cli import main

    work = tmp_path / "work"
    work.mkdir()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as taken:
        try:
            taken.bind((host.strip("[]"), 0))
        except OSError:
            pytest.skip(f"no {host} here")
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--host", host, "--port", str(port), "--work-dir", str(work), "--no-warm"]) == 2
    assert f"srtrt: cannot listen on http://{host}:{port}/ (" in capsys.readouterr().err
    assert list(work.iterdir()) == []


def test_settings_out_of_bounds_are_one_line(tmp_path, capsys):
    """A work folder that is not one, and retention so short or small that a finished job could be
    gone before its client sees it, are refused at start in one line, like `--queue 0`."""
    from srtrt.cli import main
    from srtrt.engine.serve.settings import MiB

    for settings, refusal in (({"work_dir": tmp_path / "missing"}, "--work-dir: not a folder"),
                              ({"keep_seconds": 0}, "--keep-minutes must be >= 1, not 0"),
                              ({"keep_seconds": -60}, "--keep-minutes must be >= 1, not -1"),
                              ({"keep_bytes": 0}, "--keep-mb must be > 0, not 0"),
                              ({"keep_bytes": -MiB}, "--keep-mb must be > 0, not -1"),
                              ({"queue_size": -1}, "--queue must be >= 1, not -1"),
                              ({"max_upload_bytes": 0}, "--max-upload-mb must be > 0, not 0"),
                              ({"max_pixels": -1}, "--max-pixels must be >= 0, not -1"),
                              # NaN passed (no result would ever expire), and a device no job can run on served
                              ({"keep_seconds": float("nan")}, "--keep-minutes must be >= 1, not nan"),
                              ({"device": "tpu"}, "--device tpu: not a device name")):
        with pytest.raises(SrtrtError, match=refusal):
            ServeConfig(**settings)
    for flags in (["--work-dir", str(tmp_path / "missing")], ["--keep-minutes", "0"], ["--keep-mb", "-1"],
                  ["--queue", "-1"], ["--max-upload-mb", "0"], ["--keep-minutes", "nan"], ["--device", "tpu"]):
        assert main(["serve", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("srtrt: ") and err.count("\n") == 1 and flags[0] in err, err
    # a CPU-only head node in front of a Ray cluster's GPUs: the replicas hold the device
    assert ServeConfig(device="cuda", ray="ray://gpu-cluster:10001").device == "cuda"
    with pytest.raises(SrtrtError, match="--device tpu: not a device name"):
        ServeConfig(device="tpu", ray="auto")


def test_non_local_bind_needs_a_token(tmp_path, models_dir, capsys):
    with pytest.raises(SrtrtError, match="needs --token"):
        ServeConfig(host="0.0.0.0")
    from srtrt.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "needs --token" in capsys.readouterr().err


@pytest.mark.parametrize("token", ["pässwörd", "two words", "tab\there"])
def test_a_token_http_cannot_carry_the_same_everywhere_is_refused_at_start(token):
    """A header or cookie carries bytes the client encodes its own way: a non-ASCII token matched no
    request (401 on every one, or a 500 setting its cookie)."""
    with pytest.raises(SrtrtError, match="--token must be printable ASCII without spaces"):
        ServeConfig(token=token)


def test_token_guards_every_route(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir, base_url="http://srtrt.example:8000", host="0.0.0.0", token="s3cret") as client:
        for path in ("/", "/static/app.js", "/api/server", "/api/jobs", "/openapi.json", "/docs"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
        assert upload(client, images[0].read_bytes()).status_code == 401
        assert client.get("/api/server", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/server", headers=ok).status_code == 200
        login = client.get("/?token=s3cret", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=lax" in login.headers["set-cookie"]
        assert client.get("/").status_code == 200  # the cookie now
        client.cookies.clear()
        assert client.get("/").status_code == 401


def test_the_token_cookie_comes_with_links_from_other_sites_but_changes_nothing(tmp_path, models_dir, images):
    """The token cookie is SameSite=Lax, as the client id's: a link to the page from another site brings
    it (Strict showed the 401 page to a user who had opened /?token=T). Lax lets other sites send it on a
    top-level GET only, and every route that changes anything is POST, PUT or DELETE, refused by its Origin."""
    with serving(tmp_path, models_dir, base_url="http://srtrt.example:8000", host="0.0.0.0", token="s3cret") as client:
        login = client.get("/?token=s3cret", follow_redirects=False)
        assert "SameSite=lax" in login.headers["set-cookie"] and client.cookies.get("srtrt_token") == "s3cret"
        followed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}  # a link: no Origin on a GET
        assert client.get("/", headers=followed).status_code == 200
        mine = client.post("/api/jobs", json={**TINY, "filename": "mine.png"}).json()["id"]
        elsewhere = {"Origin": "http://evil.example"}  # the cookie in the jar goes with each of these
        tried = [client.post("/api/jobs", files={"file": ("a.png", images[0].read_bytes())}, data=TINY, headers=elsewhere),
                 client.post("/api/jobs", json={**TINY, "filename": "b.png"}, headers=elsewhere),
                 client.put(f"/api/jobs/{mine}/input", content=images[0].read_bytes(), headers=elsewhere),
                 client.delete(f"/api/jobs/{mine}", headers=elsewhere)]
        assert [r.status_code for r in tried] == [403] * 4
        assert all("cross-origin requests are refused" in r.json()["detail"] for r in tried)
        assert [(j["id"], j["state"]) for j in client.get("/api/jobs").json()] == [(mine, "awaiting_input")]


def test_other_sites_are_refused(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir) as client:
        cross = client.post("/api/jobs", files={"file": ("a.png", images[0].read_bytes())},
                            headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403 and "access-control-allow-origin" not in cross.headers
        assert client.get("/api/server", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding
        for bad in ({"Host": "["}, {"Origin": "http://["}):  # urlsplit raises on these: 400, not a 500
            assert client.get("/api/server", headers=bad).status_code == 400
        assert client.get("/api/server", headers={"Origin": LOCAL}).status_code == 200


def test_results_are_bounded_in_space(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir, keep_bytes=1) as client:
        first = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, first)["state"] == "done"
        second = upload(client, images[1].read_bytes()).json()["id"]
        assert finished(client, second)["state"] == "done"
        deadline = time.monotonic() + 10
        while client.get(f"/api/jobs/{first}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get(f"/api/jobs/{first}").status_code == 404
        assert client.get(f"/api/jobs/{second}/result").status_code == 200  # the newest is always kept
        assert len(job_folders(tmp_path)) == 1


def test_a_failed_job_does_not_push_out_the_newest_result(tmp_path, models_dir, images):
    """Only results hold bytes: a job that failed or was cancelled is no newer result to make room for
    (the only result was deleted a second after a failed upload with --keep-mb)."""
    with serving(tmp_path, models_dir, keep_bytes=1) as client:
        kept = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, kept)["state"] == "done"
        failed = upload(client, b"", name="empty.png").json()["id"]
        assert finished(client, failed)["state"] == "failed"
        client.app_state.queue._sweep()  # what the server does on its own every few seconds
        assert client.get(f"/api/jobs/{kept}/result").status_code == 200


def test_a_flood_of_failed_jobs_forgets_failures_before_anyones_result(tmp_path, models_dir, images, monkeypatch):
    """Past the cap on finished jobs remembered, the oldest went first whatever they were: another
    client's 1001 empty files took the only result there was, seconds after it was done."""
    from srtrt.engine.serve import jobs

    monkeypatch.setattr(jobs, "MAX_RECORDS", 3)
    with serving(tmp_path, models_dir) as client:
        client.headers["X-Srtrt-Client"] = "a" * 32
        kept = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, kept)["state"] == "done"
        client.headers["X-Srtrt-Client"] = "b" * 32
        for i in range(5):
            assert finished(client, upload(client, b"", name=f"e{i}.png").json()["id"])["state"] == "failed"
        client.app_state.queue._sweep()  # what the server does on its own every few seconds
        assert len(client.get("/api/jobs").json()) == 2  # the oldest failures forgotten
        client.headers["X-Srtrt-Client"] = "a" * 32
        assert client.get(f"/api/jobs/{kept}/result").status_code == 200


def test_a_model_file_replaced_in_the_folder_is_the_one_the_next_job_runs(tmp_path, images, capsys):
    """The warm backend was found by the model's path alone: a file replaced under the same name
    went on running the old weights, without a word."""
    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models, seed=0)
    with serving(tmp_path, models) as client:
        first = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, first)["state"] == "done"
        old = client.get(f"/api/jobs/{first}/result").content
        save_tiny_model(models, seed=1)  # same name, other weights
        second = upload(client, images[0].read_bytes()).json()["id"]
        assert finished(client, second)["state"] == "done"
        new = client.get(f"/api/jobs/{second}/result").content
    assert run_cli(capsys, images[0], "-o", tmp_path / "cli.png", "--model", models / "tiny.safetensors",
                   "--backend", "torch")[0] == 0
    assert new != old and new == (tmp_path / "cli.png").read_bytes()


def test_a_work_folder_removed_under_the_server_is_made_again(tmp_path, models_dir, images):
    """A /tmp cleaner removing an idle server's work folder: every upload was a 500 and a traceback
    until the server was restarted."""
    with serving(tmp_path, models_dir) as client:
        shutil.rmtree(client.app_state.queue.root)
        created = upload(client, images[0].read_bytes())
        assert created.status_code == 202, created.text
        assert finished(client, created.json()["id"])["state"] == "done"
        json_job = client.post("/api/jobs", json={"filename": "b.png", **TINY})
        assert json_job.status_code == 201, json_job.text
        assert client.app_state.queue.root.stat().st_mode & 0o777 == 0o700


def test_a_disk_that_cannot_take_an_upload_is_507_in_one_line(tmp_path, models_dir):
    """A full disk (here a file-size limit, which fails writes as ENOSPC would): a form upload was
    "400 malformed multipart form", a PUT a 500 with a traceback in the log."""
    import resource

    import httpx

    def small_files():
        default_signals()
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    (tmp_path / "work").mkdir()
    port = free_port()
    server = srtrt_process("serve", "--port", port, "--models", models_dir, "--work-dir", tmp_path / "work",
                           "--no-warm", preexec_fn=small_files)
    url = f"http://127.0.0.1:{port}"
    try:
        answering(url)
        big = b"\x89PNG" + b"\0" * (3 << 20)
        with httpx.Client(base_url=url, headers={"X-Srtrt-Client": "c" * 32}, timeout=30) as client:
            form_upload = client.post("/api/jobs", files={"file": ("big.png", big)}, data=TINY)
            created = client.post("/api/jobs", json={"filename": "big.png", **TINY}).json()
            put = client.put(f"/api/jobs/{created['id']}/input", content=big)
    finally:
        server.terminate()
        err = server.communicate(timeout=30)[1]
    for answer in (form_upload, put):
        assert answer.status_code == 507, answer.text
        assert answer.json()["detail"] == "the server cannot store the upload now (File too large)"
    assert "Traceback" not in err, err
    assert [p for p in (tmp_path / "work").rglob("*") if p.is_file()] == []


def test_a_base64_token_opens_the_page_as_printed(tmp_path, models_dir):
    """`/?token=T` read the query as a form, "+" as a space: a token from `openssl rand -base64`
    (which has "+" and "/") got 401 however it was written, unless percent-encoded."""
    token = "ab+cd/ef=="
    with serving(tmp_path, models_dir, token=token) as client:
        for query, status in ((token, 303), ("ab%2Bcd%2Fef%3D%3D", 303), ("ab+cd/ef%3D", 401)):
            client.cookies.clear()  # each login from scratch, without the cookie the last one set
            assert client.get("/?token=" + query, follow_redirects=False).status_code == status, query


def test_openapi_documents_the_api(tmp_path, models_dir):
    with serving(tmp_path, models_dir) as client:
        schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/api/jobs"]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"get", "delete"} <= set(paths["/api/jobs/{job_id}"])
    assert "/api/jobs/{job_id}/result" in paths and "/api/jobs/{job_id}/events" in paths
    assert "429" in paths["/api/jobs"]["post"]["responses"]
    fields = paths["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    from srtrt.engine.batch.options import BACKENDS, PRECISIONS

    assert fields["backend"]["enum"] == list(BACKENDS) and fields["precision"]["enum"] == list(PRECISIONS)
    model = fields["model"]
    listing = re.search(r"GET (/[\w/{}]+)", model["description"]).group(1)
    assert listing in paths and "models" in paths[listing]["get"]["summary"].lower()  # where the ids are listed
    created = paths["/api/jobs"]["post"]["responses"]
    assert {"201", "202", "408", "503"} <= set(created)  # 201: created by JSON; 408/503: an upload cut short
    assert {"408", "503"} <= set(paths["/api/jobs/{job_id}/input"]["put"]["responses"])


def test_the_api_reference_needs_nothing_from_elsewhere(tmp_path, models_dir):
    """/docs was FastAPI's Swagger UI, loaded from a CDN: blank on a machine without internet."""
    with serving(tmp_path, models_dir) as client:
        page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text
    assert "<code>POST /api/jobs</code>" in page.text and "<code>DELETE /api/jobs/{job_id}</code>" in page.text
    assert "<code>429</code>" in page.text and 'href="/openapi.json"' in page.text


def test_a_malformed_form_is_one_answer_not_a_parser_log_line(tmp_path, models_dir, caplog):
    """The multipart parser logged "Expected boundary character 45, got 103 at index 2" on the server's stderr."""
    with serving(tmp_path, models_dir) as client:
        answer = client.post("/api/jobs", content=b"--garbage\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 400 and "malformed multipart form" in answer.json()["detail"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("python_multipart")] == []


def test_head_is_get_without_a_body(tmp_path, models_dir, images):
    """`curl -I` on the page, the server's settings and a result: GET's status and headers, no body."""
    with serving(tmp_path, models_dir) as client:
        job = finished(client, upload(client, images[0].read_bytes()).json()["id"])
        for path in ("/", "/api/server", job["result_url"]):
            got, head = client.get(path), client.head(path)
            assert head.status_code == 200 and head.content == b"", (path, head.status_code)
            for name in ("content-type", "content-length"):
                assert head.headers[name] == got.headers[name], (path, name)


# --------------------------------------------------------------------------- each client its own view


def test_each_client_sees_only_its_own_jobs(tmp_path, models_dir, images):
    with serving(tmp_path, models_dir) as alice:
        created = upload(alice, images[0].read_bytes())
        minted = created.headers["x-srtrt-client"]  # a fresh client gets its id, as header and cookie
        assert f"srtrt_client={minted}" in created.headers["set-cookie"] and "HttpOnly" in created.headers["set-cookie"]
        job_id = created.json()["id"]
        assert len(job_id) == 32 and int(job_id, 16) >= 0  # 128 random bits
        job = finished(alice, job_id)
        assert job["state"] == "done"
        assert "x-srtrt-client" not in alice.get("/api/jobs").headers  # known now: nothing minted

        # another browser: its own cookie jar (no `with`: the app's lifespan is alice's)
        bob = TestClient(alice.app, base_url=LOCAL)
        assert bob.get("/api/jobs").json() == []
        for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/result", f"/api/jobs/{job_id}/events"):
            assert bob.get(path).status_code == 404, path
        assert bob.delete(f"/api/jobs/{job_id}").status_code == 404
        with bob.stream("GET", "/api/events") as stream:  # the queue's events carry no one else's jobs
            first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:]) == []
        bobs = upload(bob, images[1].read_bytes()).json()["id"]
        assert [j["id"] for j in bob.get("/api/jobs").json()] == [bobs]
        finished(bob, bobs)

        assert [j["id"] for j in alice.get("/api/jobs").json()] == [job_id]
        assert alice.get(f"/api/jobs/{job_id}/result").status_code == 200  # bob's tries changed nothing
        program = {"X-Srtrt-Client": minted}  # a program keeps its id as a header, no cookies
        alice.cookies.clear()
        assert alice.get(f"/api/jobs/{job_id}", headers=program).json()["state"] == "done"
        assert alice.get("/api/jobs", headers={"X-Srtrt-Client": "short"}).status_code == 400


# --------------------------------------------------------------------------- videos


def test_a_video_over_the_pixel_limit_is_422_in_srtrt_runs_words(tmp_path, models_dir):
    pytest.importorskip("av")
    from test_video import make_clip

    source = tmp_path / "clip.mp4"
    make_clip(source, frames=2, size=(32, 24), audio=None)
    with serving(tmp_path, models_dir, max_pixels=100) as client:
        response = upload(client, source.read_bytes(), "clip.mp4")
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("clip.mp4: frames are 32x24 = 768 pixels, over the limit of 100 ")
        assert client.get("/api/jobs").json() == [] and job_folders(tmp_path) == []


def test_video_job_progress_in_frames_audio_kept(tmp_path, models_dir, capsys):
    pytest.importorskip("av")
    from test_video import make_clip, packets

    source = tmp_path / "clip.mp4"
    made = make_clip(source, frames=8, size=(32, 24), audio="aac")
    with serving(tmp_path, models_dir) as client:
        job_id = upload(client, source.read_bytes(), "clip.mp4").json()["id"]
        events = []
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        job = events[-1]
        assert job["state"] == "done", job
        assert job["progress"] == {"unit": "frame", "done": 8, "total": 8}
        assert job["result_name"] == "clip_x4.mp4"
        result = client.get(job["result_url"])
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    out = tmp_path / "served.mp4"
    out.write_bytes(result.content)
    import av

    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 96)
        assert sum(1 for _ in c.decode(stream)) == 8
    assert packets(out, "audio") == made["audio"]
    code, err = run_cli(capsys, source, "-o", tmp_path / "cli.mp4", "--model", models_dir / "tiny.safetensors",
                        "--backend", "torch", "-q")
    assert code == 0, err
    assert result.content == (tmp_path / "cli.mp4").read_bytes()
