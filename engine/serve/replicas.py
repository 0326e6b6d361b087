"""`srtrt serve --ray [ADDRESS]`: the engine as a Ray Serve deployment, behind the same API.

The web app, its queue and its files stay on this machine; each job's input bytes go to a replica
(one per GPU, CPU replicas where the cluster has none), which runs it with the same `FileRunner`
and a warm backend, streams its progress back and last the result's bytes. A replica takes one
job at a time, and the queue runs as many jobs at once as there are replicas. Model files are
read by the replica from the same `--models DIR` path: on a cluster that path must be shared.
"""
from __future__ import annotations

import logging
import queue as queues
import signal
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from srtrt.atomic import write_bytes
from srtrt.engine.batch.files import DONE, Outcome
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.batch.ray_runner import connect, threads_as_assigned
from srtrt.errors import SrtrtError, StopWork

APP_NAME = "srtrt-serve"
CPUS_PER_REPLICA = 4       # threads a CPU replica's backend gets; fewer where the cluster has fewer
PROGRESS_EVERY = 0.1       # seconds: tile and frame counts are summed between progress messages
INSTALL = 'srtrt serve --ray needs Ray Serve: pip install "srtrt[serve-ray]"'


class Cancelled(StopWork):
    """Raised inside a replica's job when its caller went away (cancel or a closed stream)."""


class Replica:
    """The deployment's class: a warm backend per model configuration, one job at a time."""

    def __init__(self):
        from srtrt.engine.datapath.decoder_messages import quiet_decoding_libraries
        from srtrt.engine.serve.warm import WarmBackends

        quiet_decoding_libraries()
        threads_as_assigned()
        self.warm = WarmBackends(log=lambda message: logging.getLogger("srtrt").warning(message))
        # Ray Serve may start the next request while a cancelled one's worker is still stopping (its
        # generator is closed after the slot is freed): the warm runner's buffers take one job at a time.
        self._engine = threading.Lock()

    def describe(self, options: RunOptions) -> dict:
        """Open (or find warm) the backend: what `auto` chose, and the model's scale."""
        runner = self.warm.runner(options)
        return {"reason": self.warm.reason(options) or "", "scale": runner.backend.scale}

    def run(self, suffix: str, data: bytes, options: RunOptions, label: str):
        """Upscale one file: yields ("plan", n), ("tile", n), ("frames", total, done), ("frame", n) as it
        goes (each plan or frames event after ("apart", line) where the input runs on the fp32 backend
        for deep inputs: FileRunner.last_apart), then ("end", status, message, seconds, pixels, result
        bytes or None, the result's suffix: a video may change container, .avi -> .mkv). `label`
        replaces this replica's temporary path in messages, so they read as on the server."""
        events: queues.Queue = queues.Queue()
        stop = threading.Event()
        with tempfile.TemporaryDirectory(prefix="srtrt-replica-") as folder:
            source, destination = Path(folder) / f"input{suffix}", Path(folder) / f"output{suffix}"
            source.write_bytes(data)
            del data
            worker = threading.Thread(target=self._run, args=(source, options, events, stop), daemon=True)
            worker.start()
            try:
                yield from _batched(events)
                outcome = events.get_nowait()
            finally:
                stop.set()  # a closed stream (the job was cancelled) stops the job at its next step
                worker.join()
            result = outcome.destination.read_bytes() if outcome.status == DONE else None
            message = outcome.message.replace(str(source), label).replace(str(outcome.destination or destination), label)
            suffix = outcome.destination.suffix if outcome.destination else ""
            yield ("end", outcome.status, message, outcome.seconds, outcome.pixels, result, suffix)

    def _run(self, source: Path, options: RunOptions, events: queues.Queue, stop: threading.Event) -> None:
        from srtrt.engine.batch.files import output_path

        def check():
            if stop.is_set():
                raise Cancelled

        def say(*event):
            check()
            events.put(event)

        try:
            with self._engine:
                check()  # cancelled while waiting for the engine
                runner = self.warm.runner(options)
                destination = output_path(source, None, False, runner.backend.scale)

                def planned(*event):  # which backend runs it is known once it is planned
                    if runner.last_apart:
                        say("apart", runner.last_apart)
                    say(*event)

                outcome = runner.run(source, destination, on_plan=lambda n: planned("plan", n),
                                     on_tile=lambda n: say("tile", n),
                                     on_frames=lambda total, done: planned("frames", total, done),
                                     on_frame=lambda n: say("frame", n), stop_check=check)
        except Cancelled:
            outcome = Outcome(source, None, "cancelled", "cancelled")
        except SrtrtError as e:
            outcome = Outcome(source, None, "failed", str(e))
        except Exception as e:  # this job fails; the replica goes on
            outcome = Outcome(source, None, "failed", f"{source}: internal error ({type(e).__name__}: {e})")
        events.put(None)
        events.put(outcome)


def _batched(events: queues.Queue):
    """The job's progress events, tile and frame counts summed over PROGRESS_EVERY; ends at None."""
    pending, last = 0, None
    since = time.monotonic()
    while True:
        event = events.get()
        if event is None:
            break
        if event[0] in ("tile", "frame"):
            pending, last = pending + event[1], event[0]
            if time.monotonic() - since < PROGRESS_EVERY:
                continue
            event, pending = (last, pending), 0
        elif pending:
            yield (last, pending)
            pending = 0
        since = time.monotonic()
        yield event
    if pending:
        yield (last, pending)


# --------------------------------------------------------------------------- the server's side


class RayBackends:
    """What the job queue asks of `WarmBackends` (runner, reason, close), over the deployment."""

    def __init__(self, address: str, device: str | None, log=None):
        try:
            import ray
            from ray import serve
        except ImportError:
            raise SrtrtError(INSTALL) from None
        self.log = log or (lambda message: None)
        on_term = signal.getsignal(signal.SIGTERM)
        self._started_ray = connect(ray, address)  # no CPU count: `--ray` alone joins RAY_ADDRESS if set
        if threading.current_thread() is threading.main_thread():
            # ray.init swaps in a SIGTERM handler of its own, sys.exit(15): the server stops as without --ray
            signal.signal(signal.SIGTERM, on_term)
        replicas, actor = _replicas(ray, device)
        self.replicas = replicas
        # a GPU replica sees its one GPU as cuda:0 (Ray sets CUDA_VISIBLE_DEVICES); None lets it pick the best
        self._device = None if device is None else ("cuda" if "num_gpus" in actor else "cpu")
        serve.start(proxy_location="Disabled")  # the FastAPI app is the only HTTP server
        deployment = serve.deployment(Replica, name="Replica", max_ongoing_requests=1, num_replicas=replicas,
                                      ray_actor_options=actor)
        self.handle = serve.run(deployment.bind(), name=APP_NAME, route_prefix=None)
        self.reasons: dict[tuple, str] = {}
        self._scales: dict[tuple, int] = {}
        self.log(f"srtrt serve: {replicas} Ray Serve replica(s), each with {actor}")

    def runner(self, options: RunOptions) -> RemoteRunner:
        key, remote = options.backend_key, replace(options, device=self._device)
        if key not in self._scales:
            try:
                info = self.handle.describe.remote(remote).result()
            except Exception as e:
                raise SrtrtError(_cause(e)) from None
            self.reasons[key], self._scales[key] = info["reason"], info["scale"]
        return RemoteRunner(self.handle, remote, self._scales[key])

    def reason(self, options: RunOptions) -> str | None:
        return self.reasons.get(options.backend_key)

    def close(self) -> None:
        import ray
        from ray import serve

        serve.delete(APP_NAME)
        if self._started_ray:
            serve.shutdown()
            ray.shutdown()


class RemoteRunner:
    """`FileRunner.run` with the work done on a replica: same callbacks, same Outcome."""

    def __init__(self, handle, options: RunOptions, scale: int):
        self.handle, self.options = handle, options
        self.backend = _Scale(scale)
        self.last_apart: str | None = None  # as FileRunner's: the replica's input ran on its fp32 backend, and why

    def run(self, source: Path, destination: Path, on_tile=None, on_plan=None, on_frame=None, on_frames=None,
            stop_check=None) -> Outcome:
        calls = {"plan": on_plan, "tile": on_tile, "frames": on_frames, "frame": on_frame}
        self.last_apart = None
        stream = self.handle.options(stream=True).run.remote(source.suffix, source.read_bytes(), self.options, str(source))
        try:
            for kind, *values in stream:
                if stop_check:
                    stop_check()
                if kind == "end":
                    status, message, seconds, pixels, result, suffix = values
                    destination = destination.with_suffix(suffix or destination.suffix)  # as the replica named it
                    if result is not None:
                        write_bytes(destination, result)  # atomic, as the local runner writes
                    return Outcome(source, destination if status == DONE else None, status, message, seconds, pixels)
                if kind == "apart":
                    self.last_apart = values[0]
                elif calls.get(kind):
                    calls[kind](*values)
        except BaseException:
            stream.cancel()  # the replica stops at its next step
            raise
        raise SrtrtError(f"{source}: the replica ended without a result")


class _Scale:
    def __init__(self, scale: int):
        self.scale = scale


def _replicas(ray, device: str | None) -> tuple[int, dict]:
    """One replica per GPU; where there is none (or --device cpu), CPU replicas of up to CPUS_PER_REPLICA cores."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device is None or str(device).startswith("cuda") else 0
    if gpus:
        return gpus, {"num_gpus": 1}
    cpus = max(1, int(resources.get("CPU", 1)))
    per = min(CPUS_PER_REPLICA, cpus)
    return max(1, cpus // per), {"num_cpus": per}


def _cause(e: Exception) -> str:
    """A replica's SrtrtError, as its own line rather than Ray's wrapped traceback."""
    cause = getattr(e, "cause", None) or e
    return " ".join(str(cause).split())[:300]
