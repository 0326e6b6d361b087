"""What the decoding libraries say about a file, kept for srtrt's one-line message.

Pillow reports damaged input as Python warnings ("Tag data larger than file", "Corrupt EXIF
data", "Truncated File Read") and a few log records ("More samples per pixel than can be
decoded"), and libtiff prints its errors and warnings on stderr itself ("LZWDecode: Not enough
data at scanline 0"). All are about the file being decoded, so srtrt words them itself or not
at all: when a file fails, its one line ends with what the decoder said ("; decoder said:
..."); when it decodes, a skipped tag or a damaged EXIF block is harmless and nothing is
printed.

`warnings.catch_warnings` cannot collect them: it swaps process-wide state, so while one
thread decodes inside it, other threads' warnings (the writers') land in its record, and two
threads inside it at once can leave the wrong filters behind; and files are decoded ahead on
a worker thread. Instead:

- `quiet_decoding_libraries()`, called once by the CLI entry before any thread starts, sets
  process-wide warning filters, a `showwarning` hook, a handler on Pillow's logger and
  libtiff's message handlers, and nothing changes them afterwards. Pillow's and libtiff's
  messages go to the notes of the thread that caused them, or nowhere when it keeps none (they
  are about a file, whoever opened it). numpy's warnings count as the decoder's only inside a
  decode; elsewhere they show as Python's defaults say.
- `kept()` gives the calling thread its own list of notes (thread-local) for one decode.

Without `quiet_decoding_libraries()` (srtrt used as a library) warnings, logging and libtiff
behave as their defaults say.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
import threading
import warnings

import numpy as np
from PIL import Image

PILLOW_FOLDER = os.path.dirname(Image.__file__) + os.sep
NUMPY_FOLDER = os.path.dirname(np.__file__) + os.sep
DECODE_MODULE = "srtrt.engine.datapath.imageio"  # numpy's floating-point warnings name the code calling it
MAX_NOTES, MAX_NOTE_CHARS = 2, 120

_this_thread = threading.local()  # .notes: list[str] while this thread decodes a file
_show_other_warnings = warnings.showwarning
_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_libtiff_handler = None  # kept alive here: libtiff holds only the pointer


def quiet_decoding_libraries() -> None:
    """Process-wide and idempotent; call before threads start."""
    global _show_other_warnings
    # "always", not Python's once per place: every file's decode gets its own notes
    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    warnings.filterwarnings("always", category=RuntimeWarning, module=re.escape(DECODE_MODULE) + "$")
    # srtrt's size limit is --max-pixels; Pillow's note about its own limit does not apply
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if warnings.showwarning is not _route_warning:
        _show_other_warnings, warnings.showwarning = warnings.showwarning, _route_warning
    pillow_log = logging.getLogger("PIL")
    if not any(isinstance(handler, _KeepLogRecords) for handler in pillow_log.handlers):
        pillow_log.addHandler(_KeepLogRecords())
        pillow_log.propagate = False  # else, with no handler of its own, logging prints it on stderr
    _route_libtiff_messages()


@contextlib.contextmanager
def kept():
    """The notes the decoding libraries leave for this thread until the block ends."""
    outer = getattr(_this_thread, "notes", None)
    _this_thread.notes = notes = []
    try:
        yield notes
    finally:
        _this_thread.notes = outer


def as_suffix(notes: list[str]) -> str:
    """"; decoder said: ..." with the first distinct notes, or "" when there were none."""
    distinct = list(dict.fromkeys(note for note in notes if note))
    return f"; decoder said: {'; '.join(distinct[:MAX_NOTES])}" if distinct else ""


def _keep(text: str) -> None:
    notes = getattr(_this_thread, "notes", None)
    if notes is not None:
        notes.append(" ".join(text.split())[:MAX_NOTE_CHARS])


# --------------------------------------------------------------------------- warnings and logging

def _route_warning(message, category, filename, lineno, file=None, line=None):
    decoding = getattr(_this_thread, "notes", None) is not None
    if filename.startswith(PILLOW_FOLDER) or (decoding and _from_numpy(category, filename)):
        _keep(str(message))
    else:
        _show_other_warnings(message, category, filename, lineno, file, line)


def _from_numpy(category, filename: str) -> bool:
    decode_module = sys.modules.get(DECODE_MODULE)
    return filename.startswith(NUMPY_FOLDER) or (issubclass(category, RuntimeWarning) and decode_module is not None
                                                 and filename == decode_module.__file__)


class _KeepLogRecords(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _keep(record.getMessage())


# --------------------------------------------------------------------------- libtiff

def _route_libtiff_messages() -> None:
    global _libtiff_handler
    if _libtiff_handler is not None:
        return
    try:
        from PIL import _imaging

        library = ctypes.CDLL(_imaging.__file__)  # finds libtiff's symbols through Pillow's own module
        setters = (library.TIFFSetErrorHandler, library.TIFFSetWarningHandler)
    except (ImportError, OSError, AttributeError):
        return  # Pillow without libtiff, or a platform that hides its symbols: libtiff keeps printing
    handler = _LIBTIFF_HANDLER(_note_libtiff_message)
    for setter in setters:
        setter.argtypes, setter.restype = [_LIBTIFF_HANDLER], ctypes.c_void_p
        setter(handler)
    _libtiff_handler = handler


_PRINTF_CONVERSION = re.compile(rb"%[-+ #0-9.*]*[hljztL]*[a-zA-Z%]")


def _note_libtiff_message(module: bytes | None, fmt: bytes | None, _arguments) -> None:
    """libtiff's (module, printf format, va_list). The values are not formatted: a va_list cannot be
    read safely from Python, and the format alone says what went wrong."""
    try:
        text = _PRINTF_CONVERSION.sub(b"...", fmt or b"").decode("utf-8", "replace")
        _keep(f"{(module or b'libtiff').decode('utf-8', 'replace')}: {text}")
    except Exception:  # an exception must not unwind into C
        pass
