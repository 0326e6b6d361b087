"""The ONNX cache's graphs fixed at one window shape, kept within a size limit.

A model that exports only at fixed sizes (SwinIR, HAT, GRL: ModelFacts.static_export_only) gets one
graph per window shape, and a folder of small images of many sizes is a new shape per image: each
graph is larger than the model's weights, and none was ever removed (a tiny SwinIR added 0.55 MB
per size). The graphs used least recently go first; a graph's mtime is when srtrt last stored or
used it (its atime is no record of use). A graph without a shape (one per model and precision)
is never pruned here: it is what every window size of other models runs.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

STATIC_GRAPHS_BUDGET_MB = 1024  # a re-export costs a child process and seconds to minutes: kept generously
# the cache's file names end in "-N x C x H x W.onnx" for a graph fixed at one shape (backends._onnx_path)
_STATIC = re.compile(r"-\d+x\d+x\d+x\d+\.onnx$")


def is_static_graph(path: Path) -> bool:
    return bool(_STATIC.search(Path(path).name))


def mark_used(path: Path) -> None:
    """Set a fixed-shape graph's mtime to now: the recency `prune` ranks by."""
    if is_static_graph(path):
        with contextlib.suppress(OSError):
            os.utime(path)


def prune(folder: Path, keep: Path | None = None, budget: int | None = None) -> None:
    """Remove the fixed-shape graphs of `folder` used least recently, with their records (.json) and
    failure notes (.failed), until the rest fit in `budget` bytes (STATIC_GRAPHS_BUDGET_MB); the newest
    and `keep` always stay."""
    budget = STATIC_GRAPHS_BUDGET_MB << 20 if budget is None else budget
    graphs = []
    for path in folder.glob("*.onnx"):
        if is_static_graph(path):
            with contextlib.suppress(OSError):  # another process may have removed it since the listing
                graphs.append((path, path.stat()))
    graphs.sort(key=lambda item: item[1].st_mtime, reverse=True)
    total = 0
    for i, (path, stat) in enumerate(graphs):
        total += stat.st_size
        if i > 0 and total > budget and path != keep:
            for companion in (path, path.with_name(path.name + ".json"), path.with_name(path.name + ".failed")):
                with contextlib.suppress(OSError):
                    companion.unlink()
