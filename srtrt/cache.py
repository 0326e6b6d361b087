"""srtrt's cache root: `SRTRT_CACHE`, else `$XDG_CACHE_HOME/srtrt`, else ~/.cache/srtrt (`~` expanded
in both variables; an empty or relative XDG_CACHE_HOME is ignored, as the XDG spec says).

A cache only saves time, so one srtrt cannot write (a read-only or full disk, a file where the
folder should be) must not stop a run: the process then caches in a temporary folder of its own,
removed at exit, and says so once. What the unwritable root already holds (a cache baked into a
read-only image) is still used: the stand-in starts as links to its entries."""
from __future__ import annotations

import atexit
import contextlib
import os
import re
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
            _sweep_killed_writes(_checked[configured])
        return _checked[configured]


def cache_dir(kind: str) -> Path:
    """A folder of one kind under the root: `engines`, `onnx`, `openvino`, ... (not created here)."""
    return cache_root() / kind


def _writable_or_stand_in(root: Path) -> Path:
    try:
        if not _utf8_name(root):
            raise OSError("its name is not UTF-8, as OpenVINO and onnxruntime read file names")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".srtrt-probe-") as probe:
            probe.write(b"srtrt")
            probe.flush()  # a full disk refuses the bytes, not the name
        return root
    except OSError as e:
        # os.path's tests, which say False where a folder above may not be entered (pathlib's raise)
        cause = "not a folder" if os.path.exists(root) and not os.path.isdir(root) else e.strerror or str(e)
        stand_in = _temporary_folder()
        kept = ""
        if os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK):
            _link_entries(root, stand_in)
            kept = ", and reads what is cached there"
        warnings.warn(f"{root}: cannot keep srtrt's cache there ({cause}); this run caches in a "
                      f"temporary folder, removed when it ends{kept} (SRTRT_CACHE chooses another)", OutputNote,
                      stacklevel=3)
        return stand_in


def _utf8_name(root: Path) -> bool:
    """Whether the file system's bytes for `root` are its UTF-8 text: OpenVINO and onnxruntime take
    names as UTF-8, so bytes the locale could not decode, or a Latin-1 locale's accents, reach them
    as another name (a file "not found", a cache written to a stray folder)."""
    text = os.fspath(root)
    try:
        return os.fsencode(text) == text.encode("utf-8")
    except UnicodeEncodeError:
        return False


_spill: dict[Path, Path] = {}  # cache root -> this process's folder for entries it could not take (made on need)


def spilled(path: Path, cause: str | None = None) -> Path | None:
    """Where an entry that could not be written at `path` under the cache root (a disk that filled
    after the start-up check, `cause`) is kept for this process instead: the same place in a
    temporary folder, made on first need, removed at exit, said once. Without a cause, only where
    an earlier spill of this process would be. None when `path` is not under the root, or nothing spilled."""
    root = cache_root()
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return None
    with _lock:
        if root not in _spill:  # one per root: SRTRT_CACHE may name another root later in this process
            if cause is None:
                return None
            _spill[root] = _temporary_folder()
            warnings.warn(f"{root}: cannot keep srtrt's cache there ({cause}); this run keeps what it cannot store "
                          "there in a temporary folder, removed when it ends", OutputNote, stacklevel=3)
    return _spill[root] / relative


def outlives_this_process(path: Path) -> bool:
    """Whether an entry at `path` stays after this process: under the configured root, not in a
    stand-in or spill folder removed at exit."""
    return Path(path).resolve().is_relative_to(configured_root().resolve())


# Entries are written under temporary names and renamed (srtrt.atomic): a process killed mid-write
# (SIGKILL, the out-of-memory killer) leaves its temporary file, a whole graph for an export. The
# first use of the cache in each process deletes those of dead processes of this machine in these
# folders (OpenVINO's own compile folders are swept by openvino_backend, after an hour).
SWEPT_FOLDERS = ("", "onnx", "receptive_field", "engines", "int8-calibration")


def _sweep_killed_writes(root: Path) -> None:
    from srtrt import atomic

    atomic.sweep_abandoned([root / folder for folder in SWEPT_FOLDERS])


def _temporary_folder() -> Path:
    """A cache folder of this process alone, removed at exit; named for its host and process, so
    that one a killed process could not remove is removed by the next srtrt that makes one."""
    from srtrt import atomic

    sweep_stand_ins()
    folder = Path(tempfile.mkdtemp(prefix=f"srtrt-cache-{atomic.HOST}-{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def sweep_stand_ins() -> None:
    """Remove the temporary cache folders of dead processes of this machine."""
    from srtrt import atomic

    pattern = re.compile(rf"srtrt-cache-{atomic.HOST}-([0-9]{{1,7}})-")
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            found = pattern.match(entry.name)
            if found and entry.is_dir(follow_symlinks=False) and not atomic.process_alive(int(found[1])):
                shutil.rmtree(entry.path, ignore_errors=True)


def _link_entries(root: Path, stand_in: Path) -> None:
    """Mirror `root`'s folders in `stand_in`, each file as a symlink to the original: entries are
    read where they lie, while a write (a rename over the link, an unlink) changes the stand-in
    only. Lock files are left out: a lock is opened for appending, which would follow the link."""
    for folder, _, files in os.walk(root, onerror=lambda error: None):
        here = stand_in / Path(folder).relative_to(root)
        try:
            here.mkdir(exist_ok=True)
            for name in files:
                if not name.endswith(".lock") and not name.startswith(".srtrt-probe-"):
                    (here / name).symlink_to(Path(folder) / name)
        except OSError:
            continue  # an entry not linked is computed again, as with no root at all
