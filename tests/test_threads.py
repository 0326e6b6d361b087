"""torch single-threaded while OpenVINO or ONNX Runtime runs the network (engine/batch/threads.py)."""
from __future__ import annotations

import threading

import pytest
import torch

from srtrt.engine.batch.threads import torch_for_data_only

from conftest import random_view


def _threads_seen_by_a_new_thread() -> int:
    """What a runtime stage thread started now gets: torch sets each thread's count on its first op."""
    seen = []
    worker = threading.Thread(target=lambda: (torch.ones(4).add_(1), seen.append(torch.get_num_threads())))
    worker.start()
    worker.join()
    return seen[0]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def onnxruntime_backend(tmp_path):
    """A real backend with its own CPU pool (ONNX Runtime needs no compile, so it is the quick one)."""
    pytest.importorskip("onnxruntime")
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=1, channels=8)
    return OnnxRuntimeBackend(export_onnx(view, tmp_path / "m.onnx"), view.scale, view.radius)


def test_a_backend_on_its_own_pool_leaves_torch_one_thread_then_restores(onnxruntime_backend, two_threads):
    backend = onnxruntime_backend
    assert backend.own_threads
    with torch_for_data_only(backend):
        assert torch.get_num_threads() == 1
        assert _threads_seen_by_a_new_thread() == 1
    assert torch.get_num_threads() == 2


def test_the_torch_backend_keeps_its_threads(two_threads):
    from srtrt.engine.backends import create_backend

    backend = create_backend("torch", view=random_view(blocks=1, channels=8)).backend
    assert not backend.own_threads
    with torch_for_data_only(backend):
        assert torch.get_num_threads() == 2


def test_threads_are_restored_when_the_run_fails(onnxruntime_backend, two_threads):
    with pytest.raises(RuntimeError), torch_for_data_only(onnxruntime_backend):
        raise RuntimeError("a run that failed")
    assert torch.get_num_threads() == 2
