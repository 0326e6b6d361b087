"""Request bodies into a job's folder: streamed to disk, limited in size, checked in pixels before decode.

A client's file name is only ever shown and offered back as a download name: the file on disk is
`input<suffix>` in the job's own folder, the suffix one of the known image and video suffixes.
Refusals are `Refused(status, one line)`: 413 too large, 415 not a kind srtrt reads, 422 over the
pixel limit (read from the header: nothing is decoded), 400 a malformed form, 408 a body that stalls
or trickles, 503 a body still coming when the server shuts down, 507 a body the server's disk cannot
take (full, or its work folder gone).
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from srtrt.engine.datapath.imageio import INPUT_SUFFIXES, check_size, open_lazily
from srtrt.engine.video import VIDEO_SUFFIXES, is_video
from srtrt.errors import SrtrtError

ACCEPTED_SUFFIXES = frozenset(INPUT_SUFFIXES | VIDEO_SUFFIXES)
FIELD_LIMIT = 4096          # bytes in one form field (options are short)
FORM_OVERHEAD = 64 * 1024   # part headers and fields besides the file, in all: they are held in memory
NAME_LIMIT = 120            # characters of a file name kept for display
IDLE_SECONDS = 30.0         # a body that sends nothing for this long is dropped (uvicorn times out no body)
# A body must also come at MIN_RATE on average once GRACE_SECONDS have passed: each byte buys 1/MIN_RATE s.
# A deadline scaled by Content-Length would trust the client's number (a trickler declares the limit and
# gets hours; a chunked body declares none); a minimum rate needs nothing from the client, cuts a byte
# every 29 s soon after the grace, and never cuts a steady upload of any size above it (1 MB/s is 122x).
GRACE_SECONDS = 30.0        # a slow start (a phone's radio waking, a proxy buffering) is not held against it
MIN_RATE = 8 * 1024         # bytes/s (64 kbit/s), below any uplink that can usefully send an image
SHUTDOWN_POLL = 0.2         # seconds between looks for the server's shutdown while a body is awaited
CLOSE = {"Connection": "close"}  # the rest of a body cut off is never read: the connection cannot serve another


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers
        super().__init__(message)


@dataclass
class Upload:
    name: str                 # the client's file name, for display only
    path: Path | None = None  # where its bytes are: <job folder>/input<suffix>
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def display_name(name: str | None) -> str:
    """The last component of a client's file name, printable, without quotes; never used as a path."""
    last = PurePosixPath((name or "").replace("\\", "/")).name
    clean = "".join(c for c in last if c.isprintable() and c not in '"<>').strip().lstrip(".")
    if len(clean) > NAME_LIMIT:
        suffix = PurePosixPath(clean).suffix[:10]
        clean = clean[:NAME_LIMIT - len(suffix)] + suffix
    return clean or "upload"


# A browser escapes these three in a multipart file name (WHATWG's multipart/form-data encoding) and
# nothing else, not even "%": a file really named "100%25.png" arrives as it is, so only these are undone.
FORM_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}


def form_filename(raw: bytes) -> str:
    """A multipart part's filename parameter as the browser's user named it (display_name then cleans it)."""
    return re.sub("%22|%0D|%0A", lambda m: FORM_ESCAPES[m.group()], raw.decode("utf-8", "replace"))


def accepted_suffix(name: str) -> str:
    """The input's kind, from its name's suffix; 415 for one srtrt does not read."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise Refused(415, f"{name}: not an image or video srtrt reads ({', '.join(sorted(ACCEPTED_SUFFIXES))})")
    return suffix


def input_path(folder: Path, name: str) -> Path:
    return folder / f"input{accepted_suffix(name)}"


def media_type(headers) -> bytes:
    """The Content-Type without its parameters, lower case (media types are case-insensitive)."""
    return parse_options_header(headers.get("content-type", ""))[0]


async def body_chunks(request, closing):
    """The request body's chunks as they come. A client that stops sending holds its queue place and
    folder only until IDLE_SECONDS pass without a byte, one that trickles only until it falls behind
    MIN_RATE (408); the server shutting down (`closing`, a threading.Event, set) ends the body at once
    (503), where uvicorn would wait, then cancel the request."""
    chunks = request.stream()
    started, received = time.monotonic(), 0
    while True:
        try:
            chunk = await _next_chunk(chunks, closing, started + allowed_seconds(received))
        except ClientDisconnect:  # nobody to answer; the request's job is discarded by its caller
            raise Refused(400, "the client disconnected before the body was complete", CLOSE) from None
        if chunk is None:
            return
        received += len(chunk)
        yield chunk


def allowed_seconds(received: int) -> float:
    """How long a body may have taken once `received` bytes are in: the grace, then 1/MIN_RATE s a byte."""
    return GRACE_SECONDS + received / MIN_RATE


async def _next_chunk(chunks, closing, deadline: float) -> bytes | None:
    """The next chunk (None at the end), waited for in slices so that a shutdown is seen within one;
    408 once the body is past `deadline` (too slow on average) or IDLE_SECONDS pass without a byte."""
    step = asyncio.ensure_future(anext(chunks, None))
    waited_since = time.monotonic()
    while not closing.is_set():
        refusal = _too_slow(waited_since, deadline)
        if refusal is not None:
            step.cancel()
            raise refusal
        done, _ = await asyncio.wait({step}, timeout=SHUTDOWN_POLL)
        if done:
            return step.result()
    step.cancel()
    raise Refused(503, "the server is shutting down: send it again once it is back", CLOSE)


def _too_slow(waited_since: float, deadline: float) -> Refused | None:
    now = time.monotonic()
    if now - waited_since >= IDLE_SECONDS:
        return Refused(408, f"the upload stalled: no bytes came for {IDLE_SECONDS:g} s", CLOSE)
    if now >= deadline:
        return Refused(408, f"the upload is too slow: under {MIN_RATE:,} bytes/s on average after its first "
                            f"{GRACE_SECONDS:g} s", CLOSE)
    return None


def check_declared_length(headers, limit: int, overhead: int = 0) -> None:
    """413 before reading a byte when the client says the body is too large."""
    try:
        declared = int(headers.get("content-length", "-1"))
    except ValueError:
        raise Refused(400, "Content-Length is not a number") from None
    if declared > limit + overhead:
        raise Refused(413, f"upload of {declared:,} bytes is over the limit of {limit:,} bytes")


async def receive_form(request, folder: Path, limit: int, closing) -> Upload:
    """A multipart form with one file part (any field name) and short option fields, the file streamed to disk."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise Refused(415, "send the file as multipart/form-data (or create the job with JSON, then PUT its input)")
    check_declared_length(request.headers, limit, FORM_OVERHEAD)
    form = _FormReader(folder, limit)
    received = 0
    try:
        parser = MultipartParser(params[b"boundary"], form.callbacks())  # refuses a boundary over 256 bytes
        async for chunk in body_chunks(request, closing):
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:  # a chunked body (no Content-Length) of endless fields
                raise Refused(413, f"upload is over the limit of {limit:,} bytes", CLOSE)
            parser.write(chunk)
        parser.finalize()
    except Refused:
        raise
    except OSError as e:  # writing the file: not the form's fault
        raise storage_refused(e) from None
    except Exception as e:  # python-multipart's own parse errors
        raise Refused(400, f"malformed multipart form ({' '.join(str(e).split())[:120]})") from None
    finally:
        form.close()
    if not form.complete:  # python-multipart's finalize() does not check this itself
        raise Refused(400, "malformed multipart form (it ends before its closing boundary: cut short?)")
    if form.upload.path is None:
        raise Refused(400, "the form has no file part")
    return form.upload


async def receive_body(request, path: Path, limit: int, closing) -> int:
    """A raw request body (PUT) streamed into `path`; its size."""
    check_declared_length(request.headers, limit)
    size = 0
    try:
        with open(path, "xb") as f:
            async for chunk in body_chunks(request, closing):
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"upload is over the limit of {limit:,} bytes")
                f.write(chunk)
    except FileExistsError:  # another request is writing this input (the caller's 409)
        raise
    except OSError as e:
        raise storage_refused(e) from None
    return size


def storage_refused(e: OSError) -> Refused:
    """507: the server cannot keep the bytes (a full disk, a quota); its cause, never its paths."""
    return Refused(507, f"the server cannot store the upload now ({e.strerror or type(e).__name__})", CLOSE)


class _FormReader:
    """python-multipart callbacks: part headers, then the file's bytes to disk or a field's bytes to memory."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.upload = Upload(name="upload")
        self._headers: dict[bytes, bytes] = {}
        self._header, self._value = b"", b""
        self._file = None
        self._field: str | None = None
        self._data = bytearray()
        self._held = 0  # bytes of part headers and fields so far: kept in memory, so bounded in all
        self.complete = False  # the closing boundary was read: the upload was not cut short

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._headers, self._field, self._data = {}, None, bytearray()

    def _hold(self, length: int) -> None:
        self._held += length
        if self._held > FORM_OVERHEAD:
            raise Refused(413, f"the form's fields and part headers are over {FORM_OVERHEAD:,} bytes in all "
                          "(options are short; the file is its own part)", CLOSE)

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" not in params:
            self._field = params.get(b"name", b"").decode("utf-8", "replace")
            return
        if self.upload.path is not None:
            raise Refused(400, "one file per job: send each file in a request of its own")
        self.upload.name = display_name(form_filename(params[b"filename"]))
        self.upload.path = input_path(self.folder, self.upload.name)
        self._file = open(self.upload.path, "xb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.upload.size += end - start
            if self.upload.size > self.limit:
                raise Refused(413, f"{self.upload.name}: upload is over the limit of {self.limit:,} bytes")
            self._file.write(data[start:end])
        else:
            self._hold(end - start)
            self._data += data[start:end]
            if len(self._data) > FIELD_LIMIT:
                raise Refused(400, f"form field {self._field!r} is over {FIELD_LIMIT} bytes")

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._field:
            self.upload.fields[self._field] = self._data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.complete = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# --------------------------------------------------------------------------- pixel limit

def check_pixels(path: Path, name: str, max_pixels: int) -> None:
    """422 when the header says the image (or a video frame) is over `max_pixels`; nothing is decoded.

    A header that cannot be read passes: the job then fails with the pipeline's own one line."""
    if not max_pixels:
        return
    if is_video(path):
        size, frames = _video_size(path), True
    else:
        size, frames = _image_size(path), False
    if size is not None:
        try:
            check_size(size, max_pixels, name, frames)  # the rule and words of `srtrt run --max-pixels`
        except SrtrtError as e:
            raise Refused(422, str(e)) from None


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with open_lazily(path) as img:  # reads the header only; Pillow's own bomb check lifted as read_image does
            return img.size
    except Exception:
        return None


def _video_size(path: Path) -> tuple[int, int] | None:
    try:  # the video stream run would take (never a cover picture)
        from srtrt.engine.video.source import open_input, video_stream

        with open_input(path) as container:
            context = video_stream(container, path).codec_context
            return context.width, context.height
    except Exception:
        return None
