"""srtrt's cache root: `SRTRT_CACHE` (with `~` expanded) or ~/.cache/srtrt. Not created here."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("SRTRT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "srtrt"


def cache_dir(kind: str) -> Path:
    """A folder of one kind under the root: `engines`, `onnx`, `openvino`, ..."""
    return cache_root() / kind
