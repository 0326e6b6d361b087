"""`srtrt run`: a batch of inputs (files, directories, globs) through one backend.

A bad input costs that input only: one line naming the file and the cause, the batch goes
on, and the exit code is non-zero at the end. Outputs are written under temporary names and
renamed when complete, so an interrupted run never leaves a half-written image:

- SIGINT and SIGTERM stop the batch between or inside images: the image in progress is
  discarded (its temporary file deleted), finished outputs stay, exit code 128 + signal.
- An image that runs out of device memory is retried with half the tile batch, then half the
  tile core, and fails with one line only when no smaller setting is left (see `oom`).
- Output names come from the input's file stem only, so no input name places a file outside
  the output folder. Two inputs that would share an output name are refused rather than one
  silently overwriting the other, and a file that is the output of another input of the same
  batch (a re-run over a folder holding earlier `_x4` results) is not upscaled again.

`FileRunner` (one backend, one file at a time) is shared with the Ray runner's actors.
"""
from __future__ import annotations

import glob
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from srtrt.errors import SrtrtError

from srtrt.engine.datapath.imageio import INPUT_SUFFIXES
from srtrt.engine.datapath.writers import OUTPUT_SUFFIXES

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class Outcome:
    """What became of one input: status done/skipped/failed, a one-line message, seconds spent,
    and the output's size in pixels (0 unless done)."""

    source: Path
    destination: Path | None
    status: str
    message: str = ""
    seconds: float = 0.0
    pixels: int = 0


@dataclass
class BatchReport:
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def _of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[Outcome]:
        return self._of(DONE)

    @property
    def skipped(self) -> list[Outcome]:
        return self._of(SKIPPED)

    @property
    def failed(self) -> list[Outcome]:
        return self._of(FAILED)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        wall = max(time.perf_counter() - self.started, 1e-9)
        megapixels = sum(o.pixels for o in self.done) / 1e6
        return (f"srtrt: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
                f"in {wall:.1f} s ({len(self.done) / wall:.2f} images/s, {megapixels / wall:.2f} output MP/s)")


# --------------------------------------------------------------------------- inputs and names

def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, directories' image files (sorted, not recursive), globs expanded; unmatched names kept
    so they are reported as missing rather than silently dropped."""
    found: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES)
        elif any(c in pattern for c in "*?[") and not p.exists():
            found += sorted(Path(m) for m in glob.glob(pattern) if Path(m).is_file())
        else:
            found.append(p)
    unique, seen = [], set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_path(source: Path, output: str | None, many: bool, scale: int) -> Path:
    """`<stem>_x4.png` beside the input by default; `-o` is a file for one input, a directory for many.

    Names come from the input's stem only, so no input name can place a file outside the output folder.
    """
    name = f"{Path(source.name).stem}_x{scale}.png"
    if output is None:
        return source.parent / name
    out = Path(output)
    if many or out.is_dir() or output.endswith(("/", "\\")):
        return out / name
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise SrtrtError(f"unknown output format {out.suffix!r} (use one of {', '.join(sorted(OUTPUT_SUFFIXES))})", out)
    return out


@dataclass
class Job:
    source: Path
    destination: Path | None = None
    refusal: str | None = None  # set when the input is refused before any work
    status: str = FAILED        # what a refusal counts as


def plan_jobs(inputs: list[Path], output: str | None, scale: int) -> list[Job]:
    """Pair every input with its destination; refuse names that would collide or loop.

    - a destination equal to its own input: refused (the input would be destroyed);
    - two inputs with the same destination (a.png and a.jpg, or dir1/a.png and dir2/a.png into
      one folder): the later ones are refused, none overwrites another's result;
    - an input that is the destination of another input (`a_x4.png` beside `a.png`): skipped,
      as it is this batch's own output from an earlier run, not a source.
    """
    many = len(inputs) > 1
    jobs = []
    for source in inputs:
        try:
            jobs.append(Job(source, output_path(source, output, many, scale)))
        except SrtrtError as e:
            jobs.append(Job(source, refusal=str(e)))
    owner: dict[Path, Path] = {}
    for job in jobs:
        if job.destination is not None:
            owner.setdefault(_key(job.destination), job.source)
    for job in jobs:
        if job.refusal or job.destination is None:
            continue
        key, first = _key(job.destination), owner.get(_key(job.destination))
        if key == _key(job.source):
            job.refusal = f"{job.destination}: output path is the input itself"
        elif first is not None and _key(first) != _key(job.source):
            job.refusal = f"{job.source}: same output name {job.destination.name} as {first}; rename one of them"
        elif _key(job.source) in owner and _key(owner[_key(job.source)]) != _key(job.source):
            job.refusal, job.status = (f"{job.source}: is the output of {owner[_key(job.source)]} in this batch, "
                                       "not upscaled again"), SKIPPED
    return jobs


def _key(path: Path) -> Path:
    return Path(os.path.realpath(path))


def make_output_folder(output: str | None, many: bool) -> None:
    """Create `-o` when it names a folder; one line if that is impossible."""
    if output is None or not (many or output.endswith(("/", "\\"))):
        return
    out = Path(output)
    if out.is_file():
        raise SrtrtError("is a file, but several inputs need an output directory", output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SrtrtError(f"cannot create the output folder ({e.strerror or e})", output) from None


def remove_own_partials(destination: Path | None, pid: int | None = None) -> None:
    """Delete this process's temporary files for `destination` (see writers: `.NAME.partial-PID-TOKEN`).

    The writer deletes its temporary file when it aborts; this also covers a signal that lands
    between creating the file and entering the writer's block.
    """
    if destination is None:
        return
    pattern = f".{glob.escape(destination.name)}.partial-{os.getpid() if pid is None else pid}-*"
    for leftover in glob.glob(os.path.join(glob.escape(str(destination.parent)), pattern)):
        try:
            os.unlink(leftover)
        except OSError:
            pass


# --------------------------------------------------------------------------- one file at a time

class FileRunner:
    """One backend, one file at a time: skip/overwrite, out-of-memory fallback, an Outcome per file."""

    def __init__(self, backend, *, tile=None, margin=None, batch=None, max_pixels=None, alpha="bicubic",
                 overwrite=False, log=None):
        from srtrt.engine.datapath.runtime import TiledUpscaler

        self.backend = backend
        self.upscaler = TiledUpscaler(backend, core=tile, margin=margin, batch=batch)
        self.max_pixels, self.alpha, self.overwrite = max_pixels, alpha, overwrite
        self.log = log or (lambda message: None)

    def run(self, source: Path, destination: Path, on_tile=None, on_plan=None) -> Outcome:
        start = time.perf_counter()
        existed = os.path.lexists(destination)
        try:
            if _key(destination) == _key(source):
                raise SrtrtError("output path is the input itself", destination)
            if existed and not self.overwrite:
                return Outcome(source, destination, SKIPPED, f"{destination}: exists, skipped (--overwrite to replace)")
            self._upscale(source, destination, on_tile, on_plan)
        except SrtrtError as e:
            if not existed and not self.overwrite and os.path.lexists(destination):
                # another run wrote it while this one was encoding; its output is complete
                return Outcome(source, destination, SKIPPED, f"{destination}: written meanwhile by another run, skipped",
                               time.perf_counter() - start)
            return Outcome(source, destination, FAILED, str(e), time.perf_counter() - start)
        seconds = time.perf_counter() - start
        height, width = _lr_size(source)
        pixels = height * width * self.upscaler.backend.scale ** 2
        return Outcome(source, destination, DONE, f"{source} -> {destination}", seconds, pixels)

    def _upscale(self, source: Path, destination: Path, on_tile, on_plan) -> None:
        from srtrt.engine.batch import oom
        from srtrt.engine.datapath.pipeline import upscale_file

        while True:
            try:
                upscale_file(self.upscaler, source, destination, overwrite=self.overwrite, max_pixels=self.max_pixels,
                             alpha_mode=self.alpha, on_tile=on_tile, on_plan=on_plan)
                return
            except Exception as e:
                if not oom.is_out_of_memory(e):
                    raise
                remove_own_partials(destination)
                oom.free_device_memory(self.upscaler)
                height, width = _lr_size(source)
                before = self.upscaler
                after = oom.smaller(before, height, width)
                cause = " ".join(str(e).split())[:160]
                if after is None:
                    raise SrtrtError(f"out of device memory even with batch {before.batch} and tile {before.core} "
                                     f"({cause}); try a smaller --tile or --device cpu", source) from None
                self.log(f"srtrt: {source}: out of device memory with batch {before.batch}, tile {before.core}; "
                         f"retrying with batch {after.batch}, tile {after.core}")
                self.upscaler = after  # later images start from the setting that fits


def _lr_size(source: Path) -> tuple[int, int]:
    from PIL import Image

    with warnings.catch_warnings():  # the size check proper is read_image's (--max-pixels)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as img:  # header only
            width, height = img.size
    return height, width


# --------------------------------------------------------------------------- the batch

def _progress(quiet: bool):
    from tqdm import tqdm

    enabled = not quiet and sys.stderr.isatty()
    return tqdm(total=0, unit="tile", disable=not enabled, dynamic_ncols=True, leave=False), enabled


def main(args) -> int:
    if args.ray:
        from srtrt.engine.batch.ray_runner import main as ray_main
        return ray_main(args)

    from srtrt.engine.backends import create_backend

    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise SrtrtError(f"no input images match {' '.join(args.inputs)}")
    make_output_folder(args.output, len(inputs) > 1)

    selection = create_backend(args.backend, args.model, args.precision, args.device)
    backend = selection.backend
    if not args.quiet:
        print(f"srtrt: backend {selection.reason}", file=sys.stderr)
    runner = FileRunner(backend, tile=args.tile, margin=args.margin, batch=args.batch, max_pixels=args.max_pixels,
                        alpha=args.alpha, overwrite=args.overwrite,
                        log=lambda m: print(m, file=sys.stderr))
    jobs = plan_jobs(inputs, args.output, backend.scale)

    report = BatchReport()
    bar, bar_on = _progress(args.quiet)

    def say(message: str, always: bool = False) -> None:
        if always or not args.quiet:
            (bar.write if bar_on else lambda m: print(m, file=sys.stderr))(message)

    current = None
    try:
        with StopOnSignals() as stop:
            def on_tile(n):  # runs in the runtime's assembler thread after each batch of tiles
                stop.check()
                bar.update(n)

            def on_plan(n):  # after decoding, before the output file is opened
                stop.check()
                bar.reset(total=n)

            for i, job in enumerate(jobs, 1):
                stop.check()
                if job.refusal:
                    report.add(Outcome(job.source, job.destination, job.status, job.refusal))
                    say(f"srtrt: {job.refusal}", always=job.status == FAILED)
                    continue
                current = job.destination
                bar.reset(total=0)
                bar.set_description(f"[{i}/{len(jobs)}] {job.source.name}")
                outcome = report.add(runner.run(job.source, job.destination, on_tile=on_tile, on_plan=on_plan))
                current = None
                say(f"srtrt: {outcome.message}", always=outcome.status == FAILED)
            stop.check()
    except Stopped as stopped:
        remove_own_partials(current)
        bar.close()
        print(f"srtrt: stopped by {stopped.name}: {len(report.done)} finished outputs kept, "
              "any image in progress discarded", file=sys.stderr)
        return stopped.exit_code
    finally:
        backend.close()
    bar.close()
    if len(jobs) > 1 and not args.quiet:
        print(report.summary(), file=sys.stderr)
    return report.exit_code
