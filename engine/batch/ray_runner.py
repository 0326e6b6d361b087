"""`srtrt run DIR -o OUTDIR --ray [ADDRESS]`: one batch spread over a Ray cluster with Ray Data.

    paths (driver) --from_items--> Dataset of {source, destination}
        --map_batches(ImageActor, actor pool)--> one status row per image --> summary (driver)

Only paths travel through the object store: each actor decodes its own inputs, streams their
tiles through the same runtime as a local run and writes its own outputs (temporary name, then
rename), returning a small status row (path, output, status, message, seconds). One actor per
GPU (`num_gpus=1`) where the cluster has GPUs, otherwise one single-threaded CPU actor per CPU;
each builds its backend once. Inputs and the output folder must be visible to every node at
the same paths (a shared file system); a single machine always qualifies.

Small images of many sizes go in batches, which each actor lays on sheets (sheet_runs), as a local
run does. Videos go the same way, one per actor (`FileRunner` decodes, upscales and encodes it there).
A bad image fails that image only. Outputs already present are skipped (on the driver, before
any work is scheduled), so running the same command again after a crash or preemption resumes
where it stopped. `--ray` with no address starts a local Ray on this machine; with an address
(`ray://host:10001`, `host:6379`, `auto`) it connects to that cluster.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from srtrt.atomic import sweep_abandoned
from srtrt.cache import sweep_stand_ins
from srtrt.engine.batch.files import (
    FAILED,
    BatchReport,
    FileRunner,
    Job,
    Outcome,
    check_output_file,
    expand_inputs,
    make_output_folder,
    plan_jobs,
    several_outputs,
    shape_class,
    skipped_existing,
    sweep_killed_runs,
)
from srtrt.engine.batch.options import RunOptions, open_backend, setup_lines
from srtrt.engine.batch.sheet_runs import LOOKAHEAD, run_sheet, sheet_shape, sheets_line, units
from srtrt.errors import SrtrtError, shown
from srtrt.hardware import usable_cpus

INSTALL = 'srtrt --ray needs Ray: pip install "srtrt[ray]"'
LOCAL = "auto"  # what `--ray` without an address passes (to `srtrt run` and `srtrt serve`)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError:
        raise SrtrtError(INSTALL) from None
    return ray


class ImageActor:
    """A Ray Data actor: builds the backend once, then upscales the files of each batch of paths
    (`_batch_size`), each video from its first frame to its last and small images of many sizes
    on sheets (sheet_runs), as a local run does."""

    def __init__(self, options: RunOptions, says_setup: bool = False):
        from srtrt.engine.datapath.decoder_messages import quiet_decoding_libraries

        quiet_decoding_libraries()  # an actor is a process of its own: decoders' messages are srtrt's here too
        threads_as_assigned()
        selection = open_backend(options)
        self.describe = selection.backend.describe()
        # on a cluster the driver opened no backend: the backend and tiles lines come from the nodes
        self.setup = setup_lines(selection, options) if says_setup else []
        if says_setup and (sheet := sheet_shape(selection.backend, options)):
            self.setup.append(sheets_line(sheet))
        # the runner's notes (an out-of-memory retry) and what a format loses (OutputNote: alpha in a JPEG) travel
        # in the rows, apart: an actor's stderr is not the driver's, and -q hides both, as in a local run
        self.notes: list[str] = []
        self.losses: list[str] = []
        self.runner = FileRunner(selection.backend, options, log=self.notes.append)
        _output_notes_to(self.losses)

    def __call__(self, batch: dict) -> dict:
        rows = {k: [] for k in ("path", "output", "status", "message", "seconds", "pixels", "notes", "losses", "setup")}
        jobs = [Job(Path(str(source)), Path(str(destination)))
                for source, destination in zip(batch["source"], batch["destination"])]
        for group in units(jobs, self.runner):  # small images of many sizes share sheets, as in a local run
            for job, outcome in zip(group, self._outcomes(group)):
                rows["path"].append(str(job.source))
                rows["output"].append(str(outcome.destination or job.destination))  # a video may change container
                rows["status"].append(outcome.status)
                rows["message"].append(outcome.message)
                rows["seconds"].append(float(outcome.seconds))
                rows["pixels"].append(int(outcome.pixels))
                rows["notes"].append("\n".join(self.notes))
                rows["losses"].append("\n".join(self.losses))
                rows["setup"].append("\n".join(self.setup))
                self.notes.clear()
                self.losses.clear()
        return rows

    def _outcomes(self, group: list[Job]) -> list[Outcome]:
        """The Outcome of each job of a group from `units`; anything unexpected fails its files, not the job."""
        try:
            if len(group) == 1:
                return [self.runner.run(group[0].source, group[0].destination, asked=group[0].asked)]
            written = run_sheet(self.runner, group, [None] * len(group))
        except Exception as e:
            return [_unexpected(job, e) for job in group]
        outcomes = []
        for job, future in zip(group, written):
            try:
                outcomes.append(future.result())
            except Exception as e:
                outcomes.append(_unexpected(job, e))
        return outcomes


def _unexpected(job: Job, error: Exception) -> Outcome:
    return Outcome(job.source, job.destination, FAILED,
                   f"{job.source}: {type(error).__name__}: {' '.join(str(error).split())}")


def threads_as_assigned() -> None:
    """Torch threads = the CPUs Ray assigned this actor (or Serve replica), not every core of the node."""
    import torch

    try:
        import ray
    except ImportError:
        return
    if not ray.is_initialized():  # outside Ray (tests call the classes directly): asking would start a Ray
        return
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # not inside a task or actor
        return
    torch.set_num_threads(max(1, int(cpus)))


def connect(ray, address: str, quiet: bool = True, local_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Start a local Ray or connect to `address`; returns True when this call started it (and so stops it).
    `local_cpus` sizes a Ray started here; None leaves it to Ray, so a RAY_ADDRESS in the environment
    is joined instead (Ray refuses a CPU count when it joins a cluster). `log_to_driver=False` keeps
    the workers' and raylet's output (their tracebacks, Ray's notices) in the session's log files."""
    if ray.is_initialized():
        return False
    level = logging.ERROR if quiet else logging.WARNING
    try:
        if address == LOCAL:
            cpus = {} if local_cpus is None else {"num_cpus": local_cpus}
            ray.init(include_dashboard=False, logging_level=level, log_to_driver=log_to_driver, **cpus)
        else:
            ray.init(address=address, logging_level=level, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SrtrtError(f"cannot connect to the Ray cluster at {address} ({' '.join(str(e).split())[:200]})") from None
    return True


def _pool(ray, jobs: int, device: str | None) -> tuple[int, dict]:
    """Pool size and map_batches arguments: one actor per GPU, else one per CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device in (None, "cuda") or str(device).startswith("cuda") else 0
    if gpus:
        size, per_actor = min(gpus, jobs), {"num_gpus": 1}
    else:
        size, per_actor = max(1, min(int(resources.get("CPU", 1)), jobs)), {"num_cpus": 1}
    from ray.data import ActorPoolStrategy

    if _ray_version(ray) >= (2, 51):  # `concurrency` is deprecated from 2.51 on
        return size, {"compute": ActorPoolStrategy(size=size), **per_actor}
    return size, {"concurrency": size, **per_actor}


def _no_restarts(ray) -> dict:
    """Ray Data restarts a dead actor forever by default, so an image that kills its process (a crash,
    the OOM killer) was retried without end; with no restarts the run stops with one line and a re-run
    resumes. No restarts also keeps Ray from printing its error about restarting an actor whose
    constructor arguments (Ray Data's own) are in the object store. Ray 2.64 drops such arguments."""
    return {"max_restarts": 0} if _ray_version(ray) < (2, 64) else {}


def _ray_version(ray) -> tuple[int, int]:
    major, minor, *_ = (ray.__version__.split(".") + ["0", "0"])
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _output_notes_to(notes: list[str]) -> None:
    """In an actor's process: each OutputNote (every time, not once per place) as the `srtrt:` line
    a local run prints; other warnings as before."""
    from srtrt.errors import OutputNote

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OutputNote):
            notes.append(f"srtrt: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", OutputNote)
    warnings.showwarning = show


def _actor_device(device: str | None, pool: dict) -> str | None:
    # each GPU actor sees its one GPU as cuda:0 (Ray sets CUDA_VISIBLE_DEVICES)
    if pool.get("num_gpus"):
        return "cuda"
    return device or "cpu"


def main(args) -> int:
    ray = _import_ray()
    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise SrtrtError(f"no input images match {' '.join(args.inputs)}")
    options = RunOptions.from_args(args).replace(shape_class=shape_class(inputs))
    many = several_outputs(args.inputs, inputs)
    make_output_folder(args.output, many, create=False)
    check_output_file(args.output, many, inputs)
    scale, options = _checked_scale(args, options)
    make_output_folder(args.output, many)  # once the model is known good

    def say(message: str, always: bool = False) -> None:
        if always or not args.quiet:
            print(message, file=sys.stderr)

    report = BatchReport()
    todo = []
    jobs = plan_jobs(inputs, args.output, scale, options, many)
    swept = sweep_killed_runs(jobs)
    if swept:
        say(swept)
    for job in jobs:
        if job.note and not job.refusal:
            say(shown(f"srtrt: {job.source}: {job.note}"))
        if job.refusal:
            report.add(Outcome(job.source, job.destination, job.status, job.refusal))
            say(f"srtrt: {job.refusal}", always=job.status == FAILED)
        elif os.path.lexists(job.destination) and not args.overwrite:
            say(f"srtrt: {report.add(skipped_existing(job.source, job.destination)).message}")  # as a local run
        else:
            todo.append(job)

    started = _start_ray(ray, args.ray) if todo else False
    try:
        with _without_ray_notices():
            return _run_started(ray, args, options, jobs, todo, report, say, started)
    finally:
        if started and args.ray == LOCAL:  # the actors are killed at shutdown, before their own clean-up
            sweep_stand_ins()


def _run_started(ray, args, options: RunOptions, jobs: list, todo: list, report: BatchReport, say, started: bool) -> int:
    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    try:
        # after ray.init, which installs a SIGTERM handler of its own; at once: the driver waits on rows while
        # the actors work, with no safe point to ask at before the files in progress (a whole video) are done
        with StopOnSignals(at_once=True) as stop:
            if todo:
                _run_dataset(ray, args, options, todo, report, say, stop)
            stop.check()
    except Stopped as stopped:
        if started and args.ray == LOCAL:
            ray.shutdown()
            started = False
            sweep_abandoned({job.destination.parent for job in todo})  # the actors' temporary files
        say(f"srtrt: stopped by {stopped.name}: finished outputs kept ({len(report.done)} reported before the stop), "
            "images in progress discarded", always=True)
        return stopped.exit_code
    finally:
        if started:
            ray.shutdown()
    if len(jobs) > 1 and not args.quiet:  # as a local run: no summary for one input, none with -q
        print(report.summary(), file=sys.stderr)
    return report.exit_code


def _checked_scale(args, options: RunOptions) -> tuple[int, RunOptions]:
    """The model's scale, with the options checked before any Ray starts, as a local run checks them,
    and the options the actors get.

    On a local Ray the actors build the backend on this machine, so it is opened here once first:
    a bad --backend, --precision or --device is the local run's one line and exit code, the local
    run's backend and tiles lines are printed, and `auto` measures its paths once. The actors then
    get the backend and precision it picked (`_as_picked`): an actor has one CPU, so its own
    measurement could pick another path than the line printed here says, with other bytes than a
    local run's. A cluster's nodes may differ from this machine (GPUs there, none here), so for one
    only the model is checked here and each node picks for itself; an actor's own setup error
    comes back as its line (`_one_line`)."""
    if not _actors_run_here(args.ray):
        import srtrt

        return srtrt.load_model(options.model, options.allow_noncommercial).scale, options
    selection = open_backend(options)
    try:
        if not args.quiet:
            print("\n".join(setup_lines(selection, options)), file=sys.stderr)
            if sheet := sheet_shape(selection.backend, options):
                print(sheets_line(sheet), file=sys.stderr)
        return selection.backend.scale, _as_picked(options, selection.backend)
    finally:
        selection.backend.close()


def _as_picked(options: RunOptions, backend) -> RunOptions:
    """`options` naming the CPU backend and precision that were picked (what `auto` measured) instead
    of `auto`, and saying so (deep inputs still run in fp32); GPU picks are left to the actors (each
    sees its own GPU, and its cached engines)."""
    if backend.name not in ("torch", "openvino", "onnxruntime") or str(backend.device) != "cpu":
        return options
    by_auto = options.precision == "auto" or options.picked_by_auto
    return options.replace(backend=backend.name, precision=backend.precision, picked_by_auto=by_auto)


def _actors_run_here(address: str) -> bool:
    # `--ray` alone starts a Ray on this machine, unless RAY_ADDRESS names a cluster to join
    return address == LOCAL and not os.environ.get("RAY_ADDRESS")


RAY_NOTICES_THREAD = "ray_listen_error_messages"  # the driver thread Ray prints raylet notices from


@contextlib.contextmanager
def _without_ray_notices():
    """Ray's driver prints the raylet's notices (a worker that died, coloured) on stdout, into pipes
    too, whatever log_to_driver says: srtrt says such a failure in its own line on stderr, and stdout
    stays the command's."""
    class Filtered:
        def __init__(self, stream):
            self._stream = stream

        def write(self, text: str) -> int:
            if threading.current_thread().name == RAY_NOTICES_THREAD:
                return len(text)
            return self._stream.write(text)

        def __getattr__(self, name):
            return getattr(self._stream, name)

    before = sys.stdout
    sys.stdout = Filtered(before)
    try:
        yield
    finally:
        sys.stdout = before


def _start_ray(ray, address: str) -> bool:
    """`connect`, with Ray's own output kept out of srtrt's (the batch reports per image) and
    SIGINT/SIGTERM held until it returns: a Ctrl-C inside ray.init left the processes it had
    already started running (its agents for a minute more). A stop during start-up therefore
    waits for it, shuts down what it started and then ends the run as a local one would then:
    `srtrt: interrupted` (or stopped by SIGTERM), no traceback."""
    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    with StopOnSignals() as starting:
        try:
            started = connect(ray, address, quiet=True, local_cpus=usable_cpus(), log_to_driver=False)
        except BaseException as error:  # a failed start (or a second signal) may have left processes of its own
            ray.shutdown()
            if isinstance(error, SystemExit) and error.code == signal.SIGTERM and not starting.requested:
                starting.signum = signal.SIGTERM  # ray.init's first act swaps in a handler of its own: sys.exit(15)
            if not starting.requested:
                raise
            started = False
    _quiet_ray_data()
    if starting.requested:
        if started:
            ray.shutdown()
        raise KeyboardInterrupt if starting.signum == signal.SIGINT else Stopped(starting.signum)
    return started


def _quiet_ray_data() -> None:
    """Ray Data's console lines (the progress-bar notice, per-dataset INFO, its copy of a failure's
    traceback) are not srtrt's to print; they still go to ray-data.log in the Ray session folder."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL + 1)


def _one_line(ray, error: Exception) -> SrtrtError:
    """A failed Ray job as one line: the SrtrtError an actor raised (a backend it cannot open) as
    the local run says it, else Ray's own first line (an actor's process died)."""
    found = _srtrt_error_in(ray, error)
    if found is not None:
        return found
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    failure = SrtrtError(f"the Ray job failed ({' '.join(first.split())[:200]}); finished outputs are kept: "
                         "run the same command again to go on")
    failure.exit_code = 1  # a failed run, not a bad option
    return failure


def _srtrt_error_in(ray, error: BaseException) -> SrtrtError | None:
    """The SrtrtError among a Ray exception's causes: an actor's death wraps the RayTaskError of
    its constructor (in `args`), which holds the original exception (`cause`)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SrtrtError) and not isinstance(current, ray.exceptions.RayError):
            return current  # (a RayTaskError posing as its cause says the whole traceback)
        linked = (getattr(current, "cause", None), current.__cause__, current.__context__, *current.args)
        pending += [e for e in linked if isinstance(e, BaseException)]
    return None


def _run_dataset(ray, args, options: RunOptions, todo, report: BatchReport, say, stop) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not args.quiet and sys.stderr is not None and sys.stderr.isatty()
    size, pool = _pool(ray, len(todo), args.device)
    options = options.replace(device=_actor_device(args.device, pool))
    items = [{"source": str(job.source), "destination": str(job.destination)} for job in todo]
    with warnings.catch_warnings():  # max_restarts has no named parameter yet: Ray warns of **ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = ray.data.from_items(items).map_batches(
            ImageActor, fn_constructor_args=(options, not _actors_run_here(args.ray)),
            batch_size=_batch_size(options, len(todo), size),
            batch_format="numpy", **_no_restarts(ray), **pool)
    files = f"{len(todo)} file{'s' if len(todo) > 1 else ''}"
    say(f"srtrt: {files} over {size} Ray actor{'s' if size > 1 else ''} ({'1 GPU' if pool.get('num_gpus') else '1 CPU'} each)")
    report.started = time.perf_counter()  # throughput of the work, not of starting the cluster
    said_setup: set[str] = set()  # each node's backend and tiles lines, once
    try:
        for row in dataset.iter_rows():
            for line in filter(None, str(row.get("setup", "")).split("\n")):
                if line not in said_setup:
                    said_setup.add(line)
                    say(line)
            _report_row(row, report, say)
            stop.check()
    except ray.exceptions.RayError as e:
        raise _one_line(ray, e) from None


def _batch_size(options: RunOptions, files: int, actors: int) -> int:
    """Files per actor call: one, so the pool balances file by file; for small images of many sizes
    enough for an actor to fill sheets from (the local run packs from LOOKAHEAD), two calls per
    actor at least so the pool still balances."""
    from srtrt.engine.backends.measured import MANY_SIZES

    if options.shape_class != MANY_SIZES:
        return 1
    return max(1, min(LOOKAHEAD, files // (2 * actors)))


def _report_row(row: dict, report: BatchReport, say) -> None:
    for note in filter(None, str(row["notes"]).split("\n")):
        say(note)  # as a local run prints its runner's notes, unless -q
    for loss in filter(None, str(row.get("losses", "")).split("\n")):
        say(loss)  # as a local run says what a format loses, unless -q
    outcome = report.add(Outcome(Path(row["path"]), Path(row["output"]), str(row["status"]), str(row["message"]),
                                 float(row["seconds"]), int(row["pixels"])))
    say(f"srtrt: {outcome.message}", always=outcome.status == FAILED)  # done and skipped as a local run says them
