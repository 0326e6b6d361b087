"""Reading files a user hands in without trusting what they claim: only regular files are opened
(a FIFO would block the open forever, a link to /dev/zero never ends), at most a bound of bytes is
read, and a zip's directory is read as a zip reader sees it, sizes and all, before anything inflates it.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """The path names a folder, FIFO, device or socket; `kind` says which ("a FIFO (named pipe)")."""

    def __init__(self, kind: str, path):
        super().__init__(f"{kind}, not a regular file")
        self.kind, self.filename = kind, str(path)


class TooLarge(OSError):
    """A regular file longer than the bound it was read with; `head` holds its first `limit` bytes."""

    def __init__(self, limit: int, head: bytes, path):
        super().__init__(f"larger than {limit} bytes")
        self.limit, self.head, self.filename = limit, head, str(path)


def kind_of(mode: int) -> str | None:
    """What a stat mode names when it is not a regular file ("a folder", "a FIFO (named pipe)", ...)."""
    return next((kind for test, kind in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "a special file")


def open_regular(path: str | os.PathLike):
    """A binary reader of the regular file at `path`. The path is stat'ed first, so a FIFO is never
    opened; O_NONBLOCK covers one swapped in between (its open returns at once) and fstat refuses it.
    Raises OSError as the system says (FileNotFoundError, PermissionError, ELOOP) or NotRegularFile."""
    kind = kind_of(os.stat(path).st_mode)
    if kind is not None:
        raise NotRegularFile(kind, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFile(kind, path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at `path`, refusing (TooLarge) one longer than `limit`."""
    chunks, length = [], 0
    with open_regular(path) as f:
        while length <= limit:  # in pieces: read(n) allocates all n bytes first, for a file of a few
            chunk = f.read(min(1 << 20, limit + 1 - length))
            if not chunk:
                break
            chunks.append(chunk)
            length += len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise TooLarge(limit, data[:limit], path)
    return data


@dataclass(frozen=True)
class ZipEntry:
    name: str
    method: int       # 0: stored, as torch.save writes every record; 8: deflate
    compressed: int   # bytes in the file
    size: int         # bytes a reader allocates and inflates it to


_EOCD = struct.Struct("<4s4H2LH")              # end of central directory
_LOCATOR = struct.Struct("<4sLQL")             # zip64 end-of-directory locator
_EOCD64 = struct.Struct("<4sQ2H2L4Q")          # zip64 end of central directory
_CENTRAL = struct.Struct("<4s6H3L5H2L")        # one central directory entry
_MAX_COMMENT = 0xFFFF


def zip_entries(path: str | os.PathLike) -> list[ZipEntry]:
    """The entries of the zip at `path` as its central directory declares them (what torch's zip
    reader trusts to size each record), read without inflating anything and whatever "version
    needed to extract" it claims. ValueError when there is no readable directory."""
    with open_regular(path) as f:
        end = f.seek(0, os.SEEK_END)
        tail_at = max(0, end - _EOCD.size - _MAX_COMMENT)
        f.seek(tail_at)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")  # the last one, as zip readers search from the end
        if at < 0 or len(tail) - at < _EOCD.size:
            raise ValueError("no zip end-of-directory record")
        _, _, _, _, count, size, offset, _ = _EOCD.unpack_from(tail, at)
        if count == 0xFFFF or size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            count, size, offset = _zip64_directory(f, tail_at + at)
        if offset + size > end:
            raise ValueError("zip directory past the end of the file")
        f.seek(offset)
        directory = f.read(size)
    return _central_entries(directory, count)


def _zip64_directory(f, eocd_at: int) -> tuple[int, int, int]:
    if eocd_at < _LOCATOR.size:
        raise ValueError("no zip64 end-of-directory locator")
    f.seek(eocd_at - _LOCATOR.size)
    signature, _, record_at, _ = _LOCATOR.unpack(f.read(_LOCATOR.size))
    f.seek(record_at)
    record = f.read(_EOCD64.size)
    if signature != b"PK\x06\x07" or len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
        raise ValueError("no zip64 end-of-directory record")
    *_, count, size, offset = _EOCD64.unpack(record)
    return count, size, offset


def _central_entries(directory: bytes, count: int) -> list[ZipEntry]:
    entries, at = [], 0
    for _ in range(count):
        if len(directory) - at < _CENTRAL.size or directory[at:at + 4] != b"PK\x01\x02":
            raise ValueError("zip directory entry cut short or damaged")
        fields = _CENTRAL.unpack_from(directory, at)
        method, compressed, size, name_len, extra_len, comment_len = fields[4], *fields[8:13]
        name_at = at + _CENTRAL.size
        extra_at = name_at + name_len
        at = extra_at + extra_len + comment_len
        if at > len(directory):
            raise ValueError("zip directory entry cut short")
        size, compressed = _zip64_sizes(directory[extra_at:extra_at + extra_len], size, compressed)
        name = directory[name_at:extra_at].decode("utf-8", errors="replace")
        entries.append(ZipEntry(name, method, compressed, size))
    return entries


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int]:
    """A zip64 entry keeps its real sizes in extra field 1, the one whose 32-bit field is all ones first."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, at)
        body = extra[at + 4:at + 4 + length]
        at += 4 + length
        if tag != 1:
            continue
        values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        if size == 0xFFFFFFFF and values:
            size = values.pop(0)
        if compressed == 0xFFFFFFFF and values:
            compressed = values.pop(0)
        break
    return size, compressed

