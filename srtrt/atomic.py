"""Atomic file writes: a unique temporary name in the destination's folder, fsync, rename.

The one place srtrt writes a file that must never be seen half-written (outputs, plans,
sidecars, ONNX, checkpoints, JSON). A crash or signal leaves at most a `.NAME.partial-PID-*`
file behind, which its own process removes when it can (`remove_partials`).
"""
from __future__ import annotations

import contextlib
import glob
import os
import secrets
from pathlib import Path

from srtrt.errors import SrtrtError

NAME_MAX = 255  # bytes in one file name (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)
_PID_AND_TOKEN = 7 + 1 + 6  # "PID-TOKEN": PIDs reach 7 digits (pid_max 4194304), the token 6 hex


def temp_name(path: str | os.PathLike) -> str:
    """`.NAME.partial-PID-TOKEN` beside `path`: unique per process and call, hidden from listings."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f"{partial_prefix(name)}{os.getpid()}-{secrets.token_hex(3)}")


def partial_prefix(name: str) -> str:
    """`.NAME.partial-`, NAME cut so that a temporary name fits where `name` itself fits."""
    return hidden_name(name, ".partial-", _PID_AND_TOKEN)


def hidden_name(name: str, tail: str, appended: int = 0) -> str:
    """`.NAME<tail>` for a file or folder of srtrt's own beside `name`, NAME cut (in bytes) so that
    the whole, and `appended` bytes more, fit NAME_MAX."""
    room = NAME_MAX - 1 - len(os.fsencode(tail)) - appended
    encoded = os.fsencode(name)
    return f".{os.fsdecode(encoded[:room]) if len(encoded) > room else name}{tail}"


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename durable; not every platform can open a folder, so best effort."""
    try:
        descriptor = os.open(os.fspath(folder) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def commit(temp: str, path: str | os.PathLike, fsync: bool = True) -> None:
    """Rename a finished temporary file onto `path` (replacing it) and make that durable."""
    os.replace(temp, path)
    if fsync:
        fsync_folder(os.path.dirname(os.fspath(path)) or ".")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True, **kwargs):
    """A file to write `path` through: it appears under its name, whole, only if the block succeeds."""
    temp = temp_name(path)
    f = open(temp, mode.replace("w", "x"), **kwargs)
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        commit(temp, path, fsync)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), fsync)


def write_or_refuse(path: str | os.PathLike, data: bytes | str, what: str) -> None:
    """write_bytes, or write_text for a str; a full disk or an unwritable folder is one SrtrtError
    line naming `path` ("cannot write the <what>: No space left on device"), not a traceback."""
    try:
        (write_text if isinstance(data, str) else write_bytes)(path, data)
    except OSError as e:
        raise SrtrtError(f"cannot write the {what}: {e.strerror or e}", path) from None


def remove_partials(path: str | os.PathLike | None, pid: int | None = None) -> None:
    """Delete this process's temporary files for `path` (e.g. after a signal between open and commit)."""
    if path is None:
        return
    path = Path(path)
    pattern = f"{glob.escape(partial_prefix(path.name))}{os.getpid() if pid is None else pid}-*"
    for leftover in glob.glob(os.path.join(glob.escape(str(path.parent)), pattern)):
        with contextlib.suppress(OSError):
            os.unlink(leftover)
