"""The one exception type users see as a single line (file + cause), never as a traceback."""
from __future__ import annotations

import warnings


class SrtrtError(Exception):
    """An expected failure: bad input, missing dependency, refused file. `str()` is the whole message."""

    exit_code = 2

    def __init__(self, message: str, path=None):
        self.path, self.cause = path, message
        # shown whole: a name inside the cause (a folder's, with a newline in it) must not break the line
        super().__init__(shown(f"{path}: {message}" if path is not None else message))


class CannotWrite(SrtrtError):
    """A file srtrt could not write (a full disk, a read-only folder): a state of this machine at
    this moment, so a cache entry that could not be stored goes elsewhere (cache.spilled), and no
    measurement remembers it as the model's or the backend's failure. `why`: the system's words."""

    def __init__(self, why: str, path=None):
        super().__init__(f"cannot write ({why})", path)
        self.why = why

    @classmethod
    def of(cls, error: OSError, path=None) -> CannotWrite:
        """The line for `error`, met writing `path`: the system's words ("No space left on device")."""
        return cls(error.strerror or str(error) or type(error).__name__, path)


class StopWork(Exception):
    """Raised by a caller's progress or stop callback (a server's cancel) to stop the work it watches:
    passed through as it is, never taken for the model's or the input's failure."""


def shown(path) -> str:
    """A path for a one-line message: characters that would break the line (a newline in a file
    name) written as escapes, every other character (accents, CJK) as it is."""
    text = str(path)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OutputNote(UserWarning):
    """What a run loses (alpha in JPEG, 16 bits in WebP, 16-bit CMYK through a profile, a cache it
    cannot write): srtrt's commands say it as one `srtrt:` line (hidden by -q); Python callers get
    it as a warning they can filter, every time it happens."""


# Python shows a warning once per line of code by default: the second image that loses its alpha
# would go unsaid. Appended, so a filter the application set before (to ignore them) still wins.
warnings.filterwarnings("always", category=OutputNote, append=True)
