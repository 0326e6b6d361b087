"""torch's threads while another library runs the network.

With OpenVINO or ONNX Runtime on the CPU, torch does only the runtime's data work (conversions,
padding, quantising) on the runtime's own stage threads. Each torch op large enough to go
parallel wakes an OpenMP team, which then spins waiting for more work beside the backend's
threads: 6 % of the CPU samples of a run over 120 small images (perf, OpenVINO int8, 2 cores),
and those images ran 4-8 % faster with torch single-threaded (alternating runs, 1.88-2.03 against
1.97-2.01 output MP/s averages; the 2K-output image unchanged). The stages already overlap
with the network, so one thread each is what they need.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_for_data_only(backend):
    """torch single-threaded for this block when `backend` runs the network on its own threads
    (Backend.own_threads); the previous count restored after. For a process's run loop (the CLI):
    a library call must not change its host's threads under other work."""
    if not getattr(backend, "own_threads", False):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
