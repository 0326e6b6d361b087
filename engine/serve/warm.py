"""One backend per model configuration, opened on first use and kept warm for the next job.

Only the job worker calls `runner`, so no lock guards the pool; `reasons` (what `auto` chose and
why, per model) is read by the routes as plain dict lookups.
"""
from __future__ import annotations

from collections import OrderedDict

from srtrt.engine.batch.files import FileRunner
from srtrt.engine.batch.options import RunOptions, open_backend


class WarmBackends:
    def __init__(self, keep: int = 2, log=None):
        self.keep = keep  # backends held at once: each may hold device memory or a compiled engine
        self._runners: OrderedDict[tuple, FileRunner] = OrderedDict()
        self.reasons: dict[tuple, str] = {}
        self.log = log

    def runner(self, options: RunOptions) -> FileRunner:
        """The FileRunner for these options' backend (opened now if it is not warm); SrtrtError if it cannot open."""
        key = options.backend_key
        if key in self._runners:
            self._runners.move_to_end(key)
            runner = self._runners[key]
            if runner.options != options:  # same backend, other per-file options (alpha, png level, limits)
                runner = self._runners[key] = _rebind(runner, options)
            return runner
        while len(self._runners) >= self.keep:
            _, oldest = self._runners.popitem(last=False)
            oldest.close_with_backend()
        selection = open_backend(options)
        self.reasons[key] = selection.reason
        runner = self._runners[key] = FileRunner(selection.backend, options, log=self.log)
        return runner

    def reason(self, options: RunOptions) -> str | None:
        return self.reasons.get(options.backend_key)

    def close(self) -> None:
        while self._runners:
            _, runner = self._runners.popitem()
            runner.close_with_backend()


def _rebind(runner: FileRunner, options: RunOptions) -> FileRunner:
    """A runner for the same warm backend with other options, keeping the tile setting that fit the device."""
    fresh = FileRunner(runner.backend, options, log=runner.log)
    fresh.keep_deep(runner.deep)  # the fp32 backend for deep inputs stays warm too
    runner.deep = None
    if options.tiles == runner.options.tiles:
        fresh.upscaler = runner.upscaler
    return fresh
