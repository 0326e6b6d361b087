"""`srtrt serve --ray`'s replica class, called in this process (no Ray needed): one job at a time
on its warm backend, even when Ray Serve starts the next request before a cancelled one stops."""
from __future__ import annotations

import threading
import time

import pytest

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.batch.files import DONE
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.serve.replicas import Replica

from run_helpers import save_tiny_model, write_images

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")


def test_the_next_job_waits_for_the_one_still_running(tmp_path, monkeypatch):
    model = save_tiny_model(tmp_path)
    data = write_images(tmp_path / "in", 1, height=48, width=64)[0].read_bytes()
    options = RunOptions(model=str(model), backend="torch", tile=16)  # several windows per image
    running, most, count = [0], [0], threading.Lock()
    real_infer = TorchBackend.infer

    def infer(self, x):  # the real network, counting the calls in flight
        with count:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.01)  # widen the window in which two jobs' windows would overlap
            return real_infer(self, x)
        finally:
            with count:
                running[0] -= 1

    monkeypatch.setattr(TorchBackend, "infer", infer)
    replica = Replica()
    try:
        import ray

        assert not ray.is_initialized()  # a replica made outside Ray starts none
    except ImportError:
        pass
    first = replica.run(".png", data, options, "a.png")
    assert next(first)[0] == "plan"  # its worker is mid-job; the stream is left open, as Ray Serve may leave it
    second: list = []
    later = threading.Thread(target=lambda: second.extend(replica.run(".png", data, options, "b.png")))
    later.start()
    rest = list(first)
    later.join(timeout=60)
    assert not later.is_alive()
    ends = [rest[-1], second[-1]]
    assert [end[:2] for end in ends] == [("end", DONE), ("end", DONE)], ends
    assert most[0] == 1  # never two jobs' windows at once on the one warm backend
    assert ends[0][-1] == ends[1][-1] and ends[0][-1]  # the same bytes for the same input
