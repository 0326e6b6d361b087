"""JSON sidecars (checkpoint configs, engine descriptions): read, check format and version, or
raise one SrtrtError line that names the file and ends with what to do about it."""
from __future__ import annotations

import json
from pathlib import Path

from .bounded_read import read_regular
from .errors import SrtrtError

MAX_BYTES = 64 << 20  # srtrt's sidecars are a few KB; a longer file is no sidecar of srtrt's


def read_versioned_json(path: Path, fmt: str, version: int, what: str, remedy: str = "") -> dict:
    """The document at `path` if it is a JSON object with format `fmt` and version `version`."""
    tail = f": {remedy}" if remedy else ""
    try:
        doc = json.loads(read_regular(path, MAX_BYTES))  # a FIFO there would block, a link to /dev/zero never end
    except OSError as e:
        raise SrtrtError(f"{what} is not readable ({e.strerror or (e.args[0] if e.args else e)}){tail}", path) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, a 5000-digit integer, nesting past the stack
        raise SrtrtError(f"{what} is not readable JSON ({e.__class__.__name__}){tail}", path) from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise SrtrtError(f"not an srtrt {what} (expected format {fmt!r}){tail}", path)
    if doc.get("version") != version:
        raise SrtrtError(f"{what} version {doc.get('version')!r} is not supported (this srtrt reads {version}){tail}", path)
    return doc
