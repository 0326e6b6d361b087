"""The one exception type users see as a single line (file + cause), never as a traceback."""


class SrtrtError(Exception):
    """An expected failure: bad input, missing dependency, refused file. `str()` is the whole message."""

    exit_code = 2

    def __init__(self, message: str, path=None):
        self.path, self.cause = path, message
        super().__init__(f"{path}: {message}" if path is not None else message)
