"""Jobs: a bounded queue in front of one worker thread that runs them, one at a time, on the engine.

Each job is one file in a folder of its own under the server's work folder, run by the same
`FileRunner` as `srtrt run` (skip/overwrite, size limit, out-of-memory fallback, atomic output),
with the backend kept warm between jobs. Admission is counted before an upload is read, so a full
queue answers 429 without taking the body; a job created by JSON takes its place only when its input
comes (see `admission`); a running job stops at its next tile batch (or frame) when cancelled.
Finished jobs keep their result for `keep_seconds`, and fewer when the results together pass
`keep_bytes` (oldest first, the newest always kept): disk use stays bounded.
"""
from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from srtrt.atomic import remove_partials
from srtrt.engine.batch.files import DONE, output_path
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.serve.settings import ServeConfig
from srtrt.engine.serve.uploads import storage_refused
from srtrt.engine.serve.warm import WarmBackends
from srtrt.errors import SrtrtError, StopWork

AWAITING, QUEUED, RUNNING, FAILED, CANCELLED = "awaiting_input", "queued", "running", "failed", "cancelled"
TERMINAL = frozenset({DONE, FAILED, CANCELLED})
SWEEP_SECONDS = 30.0    # the worker looks for expired results at least this often
UPLOAD_WAIT = 60.0      # a job created by JSON is dropped when its input has not come this long after its last PUT
MAX_RECORDS = 1000      # finished jobs remembered, whatever their size (_past_record_cap)


class QueueFull(Exception):
    def __init__(self, retry_after: int, reason: str = "the queue is full"):
        self.retry_after = retry_after
        super().__init__(f"{reason}; retry in about {retry_after} s")


class Cancelled(StopWork):
    """Raised from the progress callbacks of a job whose cancel was asked for."""


@dataclass
class Job:
    id: str
    name: str                 # the client's file name: shown, never used as a path
    folder: Path
    options: RunOptions
    model: str
    owner: str                # the client that created it: the only one that sees it (clients.py)
    source: Path | None = None
    state: str = AWAITING
    message: str = ""
    unit: str = "tile"        # what progress counts: tiles of an image, frames of a video
    done: int = 0
    total: int = 0
    backend: str = ""         # the backend that ran it and why (what `auto` chose)
    result: Path | None = None
    result_bytes: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    receiving: int = 0        # PUTs of its input under way (a job created by JSON): not dropped for waiting meanwhile
    expires: float = field(default_factory=lambda: time.time() + UPLOAD_WAIT)  # dropped then if still awaiting input

    @property
    def result_name(self) -> str:
        """The download name: the client's stem with the output's own ending (`photo_x4.png`)."""
        assert self.result is not None
        return PurePosixPath(self.name).stem + self.result.name[len("input"):]


class JobQueue:
    def __init__(self, config: ServeConfig, root: Path, log=None, backends=None, workers: int = 1):
        self.config, self.root = config, root
        self.log = log or (lambda message: None)
        self.warm = backends or WarmBackends(log=self.log)  # or replicas.RayBackends: the same three methods
        self.workers = workers  # jobs run at once: one per device (a Ray replica each)
        self.version = 0  # bumped on every change: event streams send when it moves
        self._jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._uploading = 0
        self._running = 0  # jobs on a worker now: an idle worker is a place too (N wait behind the running job)
        self._durations: deque[float] = deque(maxlen=20)
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- life

    def start(self, warm: RunOptions | None = None) -> None:
        for i in range(self.workers):  # only the first opens the default model: one backend is enough to show
            thread = threading.Thread(target=self._work, args=(warm if i == 0 else None,), daemon=True,
                                      name=f"srtrt-serve-worker-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        self.warm.close()

    # ---------------------------------------------------------------- admission

    @contextlib.contextmanager
    def admission(self):
        """A place in the queue, held while an upload streams in; QueueFull (-> 429) when there is none:
        `queue_size` places behind the running jobs, and one more for each idle worker.

        A job created by JSON takes no place while it awaits its input, only while its PUT streams in:
        a client that never sends the bytes would otherwise keep everyone else out. Those jobs have a
        bound of their own (`create`), and a stalled or trickling upload ends at uploads.py's idle
        timeout or minimum rate."""
        with self._cond:
            if self._uploading + len(self._pending) >= self.config.queue_size + self.workers - self._running:
                raise QueueFull(self._retry_after())
            self._uploading += 1
        try:
            yield
        finally:
            with self._cond:
                self._uploading -= 1

    def create(self, name: str, options: RunOptions, model: str, owner: str, listed: bool = False) -> Job:
        """A job awaiting its input, with a fresh folder; the id is 128 random bits, so ids cannot be guessed.

        `listed`: shown from now on, as a job created by JSON whose input comes later (at most
        `queue_size` such jobs at once, else QueueFull); otherwise from `submit`, as an upload's job is
        once its file is in."""
        job_id = secrets.token_hex(16)
        job = Job(job_id, name, self.root / job_id, options, model, owner)
        if listed:
            with self._cond:
                self._make_room_to_await()
                self._make_folder(job.folder)
                self._jobs[job_id] = job
                self._changed()
        else:
            self._make_folder(job.folder)
        return job

    def _make_folder(self, folder: Path) -> None:
        """A job's folder; the work folder made again if something removed it (a /tmp cleaner on an idle server)."""
        try:
            try:
                folder.mkdir()
            except FileNotFoundError:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                folder.mkdir()
        except OSError as e:
            raise storage_refused(e) from None

    def _make_room_to_await(self) -> None:  # under the lock
        """Drop the jobs whose input is overdue now (not at the next sweep); QueueFull, with the time
        until the next one is due, when `queue_size` jobs still await their input."""
        now = time.time()
        for job in self._drop_overdue(now):
            _remove(job.folder)  # empty: a PUT that failed took its files with it
        awaiting = [j for j in self._jobs.values() if j.state == AWAITING]
        if len(awaiting) >= self.config.queue_size:
            due = [j.expires for j in awaiting if not j.receiving]
            retry = max(1, math.ceil(min(due) - now)) if due else self._retry_after()
            raise QueueFull(retry, f"too many jobs await their input ({len(awaiting)})")

    @contextlib.contextmanager
    def receiving(self, job: Job):
        """A PUT of a job's input: the job is not dropped for waiting while one streams in, and waits
        afresh from its end (a client told to retry later by a 429 keeps its job)."""
        with self._cond:
            job.receiving += 1
        try:
            yield
        finally:
            with self._cond:
                job.receiving -= 1
                job.expires = time.time() + UPLOAD_WAIT

    def submit(self, job: Job, source: Path) -> bool:
        """Queue a job whose input is in; False when it was cancelled (or expired) meanwhile."""
        with self._cond:
            if job.state != AWAITING or self._jobs.get(job.id, job) is not job:
                return False
            job.source, job.state = source, QUEUED
            self._jobs[job.id] = job
            self._pending.append(job)
            self._changed()
            self._cond.notify_all()
            return True

    def discard(self, job: Job) -> None:
        """Forget a job whose upload was refused, with its files."""
        with self._cond:
            self._jobs.pop(job.id, None)
            self._changed()
        _remove(job.folder)

    # ---------------------------------------------------------------- reading

    def get(self, job_id: str, owner: str) -> Job | None:
        """The job, if `owner` created it: another client's job is as absent as one that never was."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def position(self, job: Job) -> int | None:
        """1 = next to run."""
        with self._cond:
            return next((i for i, j in enumerate(self._pending, 1) if j is job), None)

    def jobs(self, owner: str) -> list[Job]:
        with self._cond:
            return [job for job in self._jobs.values() if job.owner == owner]

    # ---------------------------------------------------------------- cancel and delete

    def cancel(self, job_id: str, owner: str) -> Job | None:
        """Stop a job (a running one at its next tile batch); a finished job's files are deleted and it is forgotten."""
        with self._cond:
            job = self.get(job_id, owner)
            if job is None:
                return None
            if job.state in (AWAITING, QUEUED):
                if job in self._pending:
                    self._pending.remove(job)
                self._finish(job, CANCELLED, "cancelled")
            elif job.state == RUNNING:
                job.cancel_requested = True
                self._changed()
                return job
            else:
                del self._jobs[job_id]
                self._changed()
        _remove(job.folder)
        return job

    # ---------------------------------------------------------------- the worker

    def _work(self, warm: RunOptions | None) -> None:
        if warm is not None:
            try:
                self.warm.runner(warm)
                self._changed_locked()
            except SrtrtError as e:
                self.log(f"srtrt serve: the default model did not open: {e}")
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    if not self._cond.wait(timeout=SWEEP_SECONDS):
                        break
                if self._stopping:
                    return
                job = self._pending.popleft() if self._pending else None
                if job is not None:
                    job.state, job.started = RUNNING, time.time()
                    self._running += 1
                    self._changed()
            if job is not None:
                try:
                    self._run(job)
                finally:
                    with self._cond:
                        self._running -= 1
            self._sweep()

    def _run(self, job: Job) -> None:
        destination = None

        def check():
            if job.cancel_requested or self._stopping:
                raise Cancelled

        def on_plan(total):
            check()
            self._progress(job, "tile", 0, total, runner.last_apart)

        def on_frames(total, done):
            check()
            self._progress(job, "frame", done, total or 0, runner.last_apart)

        def on_step(n):  # a tile batch or a frame
            check()
            self._progress(job, job.unit, job.done + n, job.total)

        try:
            check()
            runner = self.warm.runner(job.options)
            with self._cond:
                job.backend = self.warm.reason(job.options) or ""
                self._changed()
            destination = output_path(job.source, None, False, runner.backend.scale)
            outcome = runner.run(job.source, destination, on_tile=on_step, on_plan=on_plan, on_frame=on_step,
                                 on_frames=on_frames, stop_check=check)
        except Cancelled:
            remove_partials(destination)
            self._end(job, CANCELLED, "cancelled")
            return
        except SrtrtError as e:  # the model or backend could not open
            self._end(job, FAILED, self._public(job, str(e)))
            return
        except Exception as e:  # a bug or an unexpected library error: this job fails, the server goes on
            self.log(f"srtrt serve: job {job.id} ({job.name}):\n{traceback.format_exc()}")
            self._end(job, FAILED, self._public(job, f"{job.name}: internal error ({type(e).__name__}: {e})"))
            return
        if outcome.status == DONE:
            job.result = outcome.destination
            job.result_bytes = outcome.destination.stat().st_size
            with contextlib.suppress(OSError):
                job.source.unlink()  # the result stays; the input is no longer needed
            self._end(job, DONE, f"{job.name} -> {job.result_name}", keep_files=True)
        else:
            self._end(job, FAILED, self._public(job, outcome.message))

    def _progress(self, job: Job, unit: str, done: int, total: int, apart: str | None = None) -> None:
        """`apart`: the input runs on the runner's fp32 backend (FileRunner.last_apart), which the job
        then names as the backend that ran it."""
        with self._cond:
            job.unit, job.done, job.total = unit, done, total
            if apart:
                job.backend = apart
            self._changed()

    def _end(self, job: Job, state: str, message: str, keep_files: bool = False) -> None:
        with self._cond:
            if job.started is not None:
                self._durations.append(time.time() - job.started)
            self._finish(job, state, message)
        if not keep_files:
            _remove(job.folder)

    def _finish(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()
        self._changed()

    def _public(self, job: Job, message: str) -> str:
        """A pipeline message in the client's words: its file name and model id, not the server's folders."""
        text = message.replace(str(job.source), job.name).replace(str(job.folder) + os.sep, "")
        if self.config.models_dir is not None:  # a model file's path (models.list_models resolves the folder)
            text = text.replace(str(Path(self.config.models_dir).resolve()) + os.sep, "")
        return _one_line(text)

    # ---------------------------------------------------------------- bounds

    def _retry_after(self) -> int:
        per_job = sum(self._durations) / len(self._durations) if self._durations else 2.0
        return max(1, math.ceil(per_job * (len(self._pending) + 1) / self.workers))

    def _sweep(self) -> None:
        now = time.time()
        with self._cond:
            finished = sorted((j for j in self._jobs.values() if j.state in TERMINAL), key=lambda j: j.finished)
            gone = [j for j in finished if now - j.finished > self.config.keep_seconds]
            kept = [j for j in finished if j not in gone]
            for job in _past_record_cap(kept):
                kept.remove(job)
                gone.append(job)
            # only results hold bytes: a failed or cancelled job is no newer result to make room for
            results = [j for j in kept if j.result_bytes]
            total = sum(j.result_bytes for j in results)
            while len(results) > 1 and total > self.config.keep_bytes:
                oldest = results.pop(0)
                total -= oldest.result_bytes
                gone.append(oldest)
            for job in gone:
                self._jobs.pop(job.id, None)
            gone += self._drop_overdue(now)
            if gone:
                self._changed()
        for job in gone:
            _remove(job.folder)

    def _drop_overdue(self, now: float) -> list[Job]:  # under the lock; the caller removes their folders
        """Forget the jobs created by JSON whose input did not come in time."""
        overdue = [j for j in self._jobs.values() if j.state == AWAITING and not j.receiving and now > j.expires]
        for job in overdue:
            self._jobs.pop(job.id, None)
            self._finish(job, CANCELLED, "its input never came")
        return overdue

    # ---------------------------------------------------------------- change notes

    def _changed(self) -> None:  # under the lock
        self.version += 1

    def _changed_locked(self) -> None:
        with self._cond:
            self._changed()


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _past_record_cap(finished: list[Job]) -> list[Job]:
    """Which of the finished jobs (oldest first) to forget beyond MAX_RECORDS: those without a result
    (failed, cancelled) first, then the oldest results; never the newest result, whoever's it is (a
    folder of a thousand bad files must not take another client's only result with it)."""
    over = len(finished) - MAX_RECORDS
    if over <= 0:
        return []
    results = [j for j in finished if j.result_bytes]
    return ([j for j in finished if not j.result_bytes] + results[:-1])[:over]
