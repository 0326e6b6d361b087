"""srtrt's cache root: `SRTRT_CACHE`, else `$XDG_CACHE_HOME/srtrt`, else ~/.cache/srtrt (`~` expanded
in both variables; an empty or relative XDG_CACHE_HOME is ignored, as the XDG spec says). Not created here."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("SRTRT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", "")).expanduser()
    base = xdg if xdg.is_absolute() else Path.home() / ".cache"
    return base / "srtrt"


def cache_dir(kind: str) -> Path:
    """A folder of one kind under the root: `engines`, `onnx`, `openvino`, ..."""
    return cache_root() / kind
