"""Peak resident memory of one `srtrt` command, in a process of its own.

getrusage's ru_maxrss (wait4's too) cannot give it: Linux carries the parent's peak into a child
at fork and exec, so the child of a bench process that holds gigabytes reports the bench's own
peak (a 48-frame video run read 3355 MB that way, 1489 MB on its own). The child reads its own
high-water mark (VmHWM in /proc/self/status) as it exits and leaves it in a file.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import atexit, sys
from pathlib import Path

def report(path=Path(sys.argv[1])):
    peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
    path.write_text(peak.split()[1])  # kB

atexit.register(report)
from srtrt.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_srtrt(args: list[str], log: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS bytes) of `srtrt ARGS` run in a new process, its output into `log`."""
    peak = log.with_suffix(".peak-kb")
    peak.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run([sys.executable, "-c", _CHILD, str(peak), *args], stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if not peak.is_file():
        raise RuntimeError(f"srtrt {' '.join(args)} left no peak memory figure (exit {code}):\n{log.read_text()[-2000:]}")
    return code, wall, int(peak.read_text()) * 1024
