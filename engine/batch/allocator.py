"""The C allocator's policy for an srtrt process: large buffers reused, not handed back and faulted in again.

glibc gives a freed block above its mmap threshold back to the kernel, and a heap's free top
above its trim threshold; the next buffer of that size then comes back as fresh pages, each
zeroed by the kernel on first touch. At 4x sizes every video frame and row band needs buffers of
6-25 MB (network output, quantised band, YUV planes), so a 1080p frame took 500-1200 page faults
and 6-10 ms of kernel time of its ~50 ms of CPU on two cores (measured with `perf`, bench
video run with a free network). Blocks up to glibc's largest mmap threshold now come from the
heap and are reused, up to TRIM_BYTES of free heap is kept, and two arenas serve the runtime's
threads (each thread's arena would hold its own freed buffers). Measured on that run: 2-3 ms of
kernel time a frame instead of 6-10, about 11 % more frames per second in alternating runs.

Set once at the start of the CLI (a library does not change its host process's allocator), and
not where the user set glibc's own variables for it.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest on 64-bit: blocks below it are heap, reused
TRIM_BYTES = 256 << 20           # free heap kept for reuse before it goes back to the kernel
ARENAS = 2
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_TOP_PAD_", "LD_PRELOAD")  # LD_PRELOAD: another allocator (jemalloc, tcmalloc)


def keep_freed_buffers() -> bool:
    """Apply the policy above; False (nothing changed) off glibc or where the user chose their own."""
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library; musl has no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_BYTES), (M_ARENA_MAX, ARENAS))
    return all([mallopt(parameter, value) == 1 for parameter, value in settings])
