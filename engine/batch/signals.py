"""SIGINT and SIGTERM stop a batch cleanly: the image in progress is discarded, finished ones kept.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be, and lets
SIGTERM (what `kill`, systemd, container runtimes and batch schedulers send) end the process
on the spot, skipping every cleanup. Neither is safe for a pipeline of threads: an exception
raised between taking and releasing a queue's lock leaves that lock held, and the runtime's
shutdown then waits on it forever with the temporary file still on disk.

So inside `StopOnSignals` the first SIGINT or SIGTERM only records itself. The batch asks at
safe points -- between images, after decoding, after each batch of tiles (`check()`, which
may be called from the runtime's assembler thread: the runtime hands the exception to the
main thread and joins its workers) -- and `Stopped` then unwinds normally through the
writer, which deletes its temporary file. A stop therefore waits for the tile batch (or the
decode) in progress. A second signal raises `Stopped` at once, for a run that must end now;
a third gets the default action (the process ends immediately).
"""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A batch stopped by SIGINT or SIGTERM; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignals:
    """Context manager: record SIGINT/SIGTERM, raise `Stopped` from `check()`; handlers restored on exit.

    `at_once`: the first signal raises `Stopped` where the main thread is, for a loop that only
    waits on others' work (the Ray driver, whose actors a shutdown ends) and has no safe point
    while it waits. Outside the main thread (where Python delivers signals) it installs nothing
    and `check()` never raises.
    """

    def __init__(self, at_once: bool = False):
        self.at_once = at_once
        self.signum: int | None = None
        self._count = 0
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    def _handler(self, signum, frame):
        self._count += 1
        if self.signum is None:
            self.signum = signum
        if self._count == 2 or self.at_once:
            for s in STOP_SIGNALS:  # one more signal ends the process outright
                signal.signal(s, signal.SIG_DFL)
            raise Stopped(self.signum)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False
