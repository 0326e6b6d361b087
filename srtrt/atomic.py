"""Atomic file writes: a unique temporary name in the destination's folder, fsync, rename.

The one place srtrt writes a file that must never be seen half-written (outputs, plans,
sidecars, ONNX, checkpoints, JSON). A crash or signal leaves at most a `.NAME.partial-HOST-PID-*`
file behind, which its own process removes when it can (`remove_partials`); one whose process was
killed (SIGKILL, the out-of-memory killer) is removed by the next run (`sweep_abandoned`).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import secrets
import socket
from pathlib import Path

from srtrt.errors import SrtrtError

NAME_MAX = 255  # bytes in one file name (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)
# which machine wrote a temporary file: on a shared folder, a PID says nothing about another host's processes
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_HOST_PID_AND_TOKEN = 6 + 1 + 7 + 1 + 6  # "HOST-PID-TOKEN": PIDs reach 7 digits (pid_max 4194304)
_TAIL = re.compile(r"\.partial-([0-9a-f]{6})-([0-9]{1,7})-[0-9a-f]{6}$")


def temp_name(path: str | os.PathLike) -> str:
    """`.NAME.partial-HOST-PID-TOKEN` beside `path`: unique per process and call, hidden from listings."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f"{partial_prefix(name)}{HOST}-{os.getpid()}-{secrets.token_hex(3)}")


def partials_of(name: str, pid: int | None = None) -> str:
    """The glob pattern of the temporary files process `pid` (this one by default) writes for `name`."""
    return f"{glob.escape(partial_prefix(name))}{HOST}-{os.getpid() if pid is None else pid}-*"


def partial_prefix(name: str) -> str:
    """`.NAME.partial-`, NAME cut so that a temporary name fits where `name` itself fits."""
    return hidden_name(name, ".partial-", _HOST_PID_AND_TOKEN)


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
    for leftover in glob.glob(os.path.join(glob.escape(str(path.parent)), partials_of(path.name, pid))):
        with contextlib.suppress(OSError):
            os.unlink(leftover)


def sweep_abandoned(folders) -> int:
    """Delete the temporary files in `folders` that a process of this machine wrote and that no
    longer has a writer (killed before it could clean up). Files of other hosts, of live processes
    and of other programs are left alone. Returns how many were deleted."""
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder or "."))
        except OSError:
            continue
        for entry in entries:
            found = _TAIL.search(entry.name) if entry.name.startswith(".") else None
            if not found or found[1] != HOST or process_alive(int(found[2])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with this id runs (a pid reused since counts as alive: kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or a number no PID can be
        return True
    return True
