"""How much to measure: `full` (the committed report), `quick` (a few minutes on a 2-core CPU)
or `smoke` (tiny inputs, seconds per case: checks that every code path runs, measures nothing).

The mode comes from the environment so that modules can read it while pytest collects them;
bench/conftest.py turns `--quick` / `--smoke` into these variables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

QUICK_ENV = "SRTRT_BENCH_QUICK"
SMOKE_ENV = "SRTRT_BENCH_SMOKE"


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int          # timed rounds per case on the small workloads
    big_rounds: int      # timed rounds per case on the 2K-input workload

    @property
    def full(self) -> bool:
        return self.name == "full"


def _on(var: str) -> bool:
    return os.environ.get(var, "") not in ("", "0")


def current(cuda: bool) -> Mode:
    if _on(SMOKE_ENV):
        return Mode("smoke", rounds=1, big_rounds=1)
    if _on(QUICK_ENV):
        return Mode("quick", rounds=3 if cuda else 1, big_rounds=2 if cuda else 1)
    # A GPU case takes milliseconds, so more rounds cost nothing; a CPU 2K-input pass takes a minute.
    return Mode("full", rounds=5 if cuda else 3, big_rounds=3 if cuda else 1)
