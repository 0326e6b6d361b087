"""srtrt's cache root: `SRTRT_CACHE`, else `$XDG_CACHE_HOME/srtrt`, else ~/.cache/srtrt (`~` expanded
in both variables; an empty or relative XDG_CACHE_HOME is ignored, as the XDG spec says).

A cache only saves time, so one srtrt cannot write (a read-only or full disk, a file where the
folder should be) must not stop a run: the process then caches in a temporary folder of its own,
removed at exit, and says so once."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

from srtrt.errors import OutputNote

_checked: dict[Path, Path] = {}  # configured root -> the root this process uses
_lock = threading.Lock()


def configured_root() -> Path:
    root = os.environ.get("SRTRT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", "")).expanduser()
    base = xdg if xdg.is_absolute() else Path.home() / ".cache"
    return base / "srtrt"


def cache_root() -> Path:
    """The configured root (created if missing) when srtrt can write there, else this process's stand-in."""
    configured = configured_root()
    with _lock:
        if configured not in _checked:
            _checked[configured] = _writable_or_stand_in(configured)
        return _checked[configured]


def cache_dir(kind: str) -> Path:
    """A folder of one kind under the root: `engines`, `onnx`, `openvino`, ... (not created here)."""
    return cache_root() / kind


def _writable_or_stand_in(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".srtrt-probe-") as probe:
            probe.write(b"srtrt")
            probe.flush()  # a full disk refuses the bytes, not the name
        return root
    except OSError as e:
        cause = "not a folder" if root.exists() and not root.is_dir() else e.strerror or str(e)
        stand_in = Path(tempfile.mkdtemp(prefix="srtrt-cache-"))
        atexit.register(shutil.rmtree, stand_in, True)
        warnings.warn(f"{root}: cannot keep srtrt's cache there ({cause}); this run caches in a "
                      "temporary folder, removed when it ends (SRTRT_CACHE chooses another)", OutputNote, stacklevel=3)
        return stand_in
