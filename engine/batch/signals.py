"""SIGINT, SIGTERM and SIGHUP stop a batch cleanly: the image in progress is discarded, finished ones kept.

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

SIGHUP (the terminal closed, the SSH session gone) is taken as SIGTERM is. A signal the parent
set to be ignored (`trap '' INT`, a shell's background job) stays ignored, as Python leaves it.
Outside a batch, `end_commands_on_signals` makes SIGTERM and SIGHUP end any command as Ctrl-C
does, through its cleanup (temporary files, child processes), with exit code 128 + the signal.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A command stopped by SIGINT, SIGTERM or SIGHUP; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def end_commands_on_signals():
    """Within: SIGTERM and SIGHUP raise `Stopped` where the main thread is, as SIGINT raises
    KeyboardInterrupt, where they would end the process on the spot; an ignored one stays ignored.
    Outside the main thread it changes nothing."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)
                    if signal.getsignal(s) == signal.SIG_DFL}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _taken(s: int) -> bool:
    """Whether a batch takes signal `s` over: not where it is ignored (set so by the parent)."""
    return signal.getsignal(s) != signal.SIG_IGN


class StopOnSignals:
    """Context manager: record SIGINT/SIGTERM/SIGHUP, raise `Stopped` from `check()`; handlers restored on exit.

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
            for s in self._previous:  # one more signal ends the process outright
                signal.signal(s, signal.SIG_DFL)
            raise Stopped(self.signum)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS if _taken(s)}
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False
