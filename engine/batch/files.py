"""One file at a time, the same way for `srtrt run`, its `--ray` actors and `srtrt.upscale`.

- Inputs: files as given, folders' images, globs; each paired with `<stem>_x4.png` (or `-o`),
  names that would collide or loop refused before any work (`plan_jobs`).
- `FileRunner` holds one backend and the options: it skips existing outputs unless asked to
  overwrite, decodes within the size limit, streams the upscaled rows to a temporary file
  renamed when complete, and retries an image that runs out of memory (device or host) with half the
  tile batch, then half the tile (see `oom`), failing with one line only when nothing smaller
  is left. Every file ends as an `Outcome`: done, skipped or failed with a one-line message.
  `submit` leaves a small image's encoding and write to a writer thread while the caller
  computes the next image (a small image's own stages run one after another).
- `DecodeAhead` decodes the next input on a worker thread while the current one computes:
  one image ahead, so host memory holds at most two decoded inputs.
"""
from __future__ import annotations

import contextlib
import glob
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from srtrt.atomic import remove_partials, sweep_abandoned
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.datapath.imageio import INPUT_SUFFIXES, DecodedImage, read_image
from srtrt.engine.datapath.writers import OUTPUT_SUFFIXES, check_output_folder
from srtrt.engine.video import VIDEO_SUFFIXES, WRITTEN_SUFFIXES, is_video
from srtrt.errors import SrtrtError, StopWork, shown

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
# An output up to this size is held in memory and written while the next image computes
# (FileRunner.submit): a small image's stages run one after another, so on a GPU its encoding
# was a third of its time. Larger outputs stream into their file as they are computed.
WRITE_BEHIND_BYTES = 32 * 2**20
INPUT_ITSELF = "output path is the input itself"


def done_future(value) -> Future:
    """A Future already holding `value` (an Outcome, or an image decoded already)."""
    future: Future = Future()
    future.set_result(value)
    return future


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
        kind = "files" if any(is_video(o.source) for o in self.done) else "images"  # a video is one file of many frames
        return (f"srtrt: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
                f"in {wall:.1f} s ({len(self.done) / wall:.2f} {kind}/s, {megapixels / wall:.2f} output MP/s)")


# --------------------------------------------------------------------------- inputs and names

def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, directories' image files (sorted, not recursive), globs expanded. A name
    given twice (a folder and a glob in it) counts once; a symlink to a file also given counts as
    a file of its own, as its name asks for an output of its own. Unmatched names and globs are
    kept so they are reported as missing rather than silently dropped, unless nothing matched at
    all (the caller says so in one line); so are a folder's entries with an image's or a video's
    suffix that are not files (a broken link, a link loop, a FIFO): each run says why in its line."""
    found: list[Path] = []
    unmatched: list[Path] = []
    # os.path's tests, not Path's: on Python 3.11 those raise for a name too long or a folder not entered
    for pattern in patterns:
        p = Path(pattern)
        if os.path.isdir(p):
            try:
                found += sorted(f for f in p.iterdir()
                                if not os.path.isdir(f) and f.suffix.lower() in INPUT_SUFFIXES | VIDEO_SUFFIXES)
            except OSError:  # a folder it may not list: kept, so plan_jobs says why in its line
                found.append(p)
        elif _is_glob(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern) if not os.path.isdir(m))
            found += matches
            unmatched += [] if matches else [p]
        else:
            found.append(p)
    unique, seen = [], set()
    for f in found + (unmatched if found else []):
        key = os.path.abspath(f)  # never raises: a symlink loop is reported as an unreadable input, not a traceback
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[") and not os.path.exists(pattern)


def several_outputs(patterns: list[str], inputs: list[Path]) -> bool:
    """Whether `-o` names a folder: several inputs, or a folder or glob given, however many files
    it holds today (a folder of one image must not turn `-o` into a file name)."""
    return len(inputs) > 1 or any(os.path.isdir(p) or _is_glob(p) for p in patterns)


SHAPE_SAMPLE = 64  # inputs whose headers are read to tell a folder of many small sizes from big images


def shape_class(inputs: list[Path]) -> str:
    """What `auto` should time for this batch (backends.measured.shape_class_of): read from the
    image headers of up to SHAPE_SAMPLE inputs spread over the batch; videos and unreadable files
    are left out (they fail later with their own line)."""
    from srtrt.engine.backends.measured import shape_class_of
    from srtrt.engine.datapath.imageio import open_lazily

    step = max(1, len(inputs) // SHAPE_SAMPLE)
    sizes = []
    for path in inputs[::step][:SHAPE_SAMPLE]:
        if is_video(path) or not os.path.isfile(path):  # a FIFO would wait for a writer here
            continue
        try:
            with open_lazily(path) as img:
                sizes.append(img.size)
        except Exception:  # noqa: BLE001 - any unreadable input is simply not counted
            continue
    return shape_class_of(sizes)


def output_path(source: Path, output: str | None, many: bool, scale: int) -> Path:
    """`<stem>_x4.png` beside the input by default; `-o` is a file for one input, a directory for many.

    Names come from the input's stem only, so no input name can place a file outside the output folder.
    A video keeps its container (`clip_x4.mkv`); `-o` for one video names a video file.
    """
    video = is_video(source)
    name = f"{Path(source.name).stem}_x{scale}{Path(source.name).suffix.lower() if video else '.png'}"
    if output is None:
        return source.parent / name
    out = Path(output)
    if many or os.path.isdir(out) or output.endswith(("/", "\\")):
        return out / name
    if video:
        if out.suffix.lower() not in VIDEO_SUFFIXES:
            raise SrtrtError(f"a video's output needs a video container ({', '.join(sorted(WRITTEN_SUFFIXES))})", out)
        return out
    if not out.suffix:  # a new folder meant, or a file with its format left out: either is one line away
        raise SrtrtError(f"no output format: name a file ({', '.join(sorted(OUTPUT_SUFFIXES))}) or end the "
                         "name with / for a new folder", out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise SrtrtError(f"unknown output format {out.suffix!r} (use one of {', '.join(sorted(OUTPUT_SUFFIXES))})", out)
    return out


def skipped_existing(source: Path, destination: Path) -> Outcome:
    """An input whose output is already there, left alone without --overwrite."""
    return Outcome(source, destination, SKIPPED, f"{shown(destination)}: exists, skipped (--overwrite to replace)")


@dataclass
class Job:
    source: Path
    destination: Path | None = None
    refusal: str | None = None  # set when the input is refused before any work
    status: str = FAILED        # what a refusal counts as
    note: str = ""              # why the destination is not the name asked for (a video's container)
    asked: Path | None = None   # that name, where a video's container moved it (its codec is the one chosen for it)


def plan_jobs(inputs: list[Path], output: str | None, scale: int, options=None, many: bool | None = None) -> list[Job]:
    """Pair every input with its destination; refuse names that would collide or loop.

    With the run's `options`, a video's destination is the file it will really be written to (its
    .mkv twin when the container asked for cannot hold its streams), so the checks below see it.

    - a destination equal to its own input: refused (the input would be destroyed);
    - two inputs with the same destination (a.png and a.jpg, or dir1/a.png and dir2/a.png into
      one folder): the later ones are refused, none overwrites another's result;
    - an input that is the destination of another input, or the name another input's output gets
      beside it (`a_x4.png` beside `a.png`, also when -o now names another folder): skipped, as it
      is this batch's own output from an earlier run, not a source (given alone, it is upscaled);
    - one file named twice through a linked folder, to one destination: upscaled once;
    - a folder under a destination's name: refused (it cannot be replaced, --overwrite or not).

    Destinations are compared by the name a write replaces (written_name: a link there is replaced,
    not followed), and an input that cannot be read at all (missing, empty, not a file) takes no
    destination from another: it fails in its own line.
    """
    many = len(inputs) > 1 if many is None else many  # several_outputs: whether -o is a folder
    named = output is not None and not many and not os.path.isdir(output) and not output.endswith(("/", "\\"))
    jobs = []
    for source in inputs:
        if os.path.isdir(source):  # a folder expand_inputs could not list, or one handed to the API
            cause = _listing_error(source)
            jobs.append(Job(source, refusal=f"{shown(source)}: " + (f"cannot list this folder ({cause})" if cause
                                                                     else "is a directory, not an image")))
            continue
        try:
            jobs.append(_settled(Job(source, output_path(source, output, many, scale)), options, scale))
        except SrtrtError as e:
            jobs.append(Job(source, refusal=str(e)))
            continue
        job = jobs[-1]
        if (named and job.note and getattr(options, "overwrite", False) and os.path.lexists(job.destination)
                and not writes_over(job.destination, source)):  # the input itself: refused below
            # --overwrite is for the file -o names: a file under the name a video falls back to is the user's
            job.refusal = (f"{shown(job.destination)}: exists, and is not the file -o names ({job.note}); "
                           "--overwrite replaces only that one: remove it, or name it with -o")
    earlier: dict[Path, Path] = {}  # outputs of earlier runs: where this run writes, and beside the inputs
    for job in jobs:
        if job.destination is not None:
            earlier.setdefault(written_name(job.destination), job.source)
    for job in jobs:
        with contextlib.suppress(SrtrtError):
            beside = output_path(job.source, None, False, scale)
            earlier.setdefault(written_name(beside), job.source)
            if output is not None and is_video(job.source):  # beside it as written: an AVI's .mkv twin
                earlier.setdefault(written_name(_settled(Job(job.source, beside), options, scale).destination),
                                   job.source)
    for job in jobs:
        if job.destination is None:
            continue
        # an earlier output by its name (a link under it is one too), or by the file it is: skipped, whatever
        # its own plan would refuse (an earlier video output's frames are over a --max-pixels its input is not)
        origin = earlier.get(written_name(job.source)) or earlier.get(real_path(job.source)) or job.source
        if real_path(origin) != real_path(job.source):
            job.refusal, job.status = (f"{shown(job.source)}: is the output of {shown(origin)} from an earlier run, "
                                       "not upscaled again"), SKIPPED
        elif job.refusal:
            continue
        elif writes_over(job.destination, job.source):
            job.refusal = f"{shown(job.destination)}: {INPUT_ITSELF}" + (f" ({job.note})" if job.note else "")
        elif os.path.isdir(job.destination) and not os.path.islink(job.destination):
            job.refusal = f"{shown(job.destination)}: output path is a directory"
    owner: dict[Path, Job] = {}  # the first input that will write each name
    for job in jobs:
        if job.refusal or job.destination is None or not _readable(job.source):
            continue
        name = written_name(job.destination)
        first = owner.setdefault(name, job)
        if first is job:
            continue
        if _refused_as_undecodable(first):  # it fails on its own line, writing nothing: this one takes the name
            owner[name] = job
            continue
        if _refused_as_undecodable(job):
            continue
        if real_path(first.source) == real_path(job.source):
            job.refusal, job.status = (f"{shown(job.source)}: the same file as {shown(first.source)}, upscaled once",
                                       SKIPPED)
        else:
            job.refusal = (f"{shown(job.source)}: same output name {shown(job.destination.name)} as "
                           f"{shown(first.source)}; rename one of them")
    return jobs


def written_name(path: Path) -> Path:
    """The name a write to `path` replaces: its folder after links, its own name as it is (a write
    renames over a link there; it never follows it)."""
    path = Path(path)
    return real_path(path.parent) / path.name


def _readable(source: Path) -> bool:
    """Whether `source` may be an image or a video: a regular file with bytes in it (one that is
    not fails in its own line, and writes nothing)."""
    try:
        return os.path.isfile(source) and os.path.getsize(source) > 0
    except OSError:
        return False


def _refused_as_undecodable(job: Job) -> bool:
    """Whether `job`'s input cannot decode (a video by its name may; an image by its first bytes),
    asked only of inputs whose outputs share a name: one that cannot (a GIF beside a PNG of its stem)
    fails now in its own line, and takes neither the name nor the file the other writes there."""
    from srtrt.engine.datapath.imageio import why_not_an_input

    cause = None if is_video(job.source) else why_not_an_input(job.source)
    if cause is not None:
        job.refusal = str(SrtrtError(cause, job.source))
    return cause is not None


def _listing_error(folder: Path) -> str | None:
    """Why `folder` cannot be listed, or None."""
    try:
        os.listdir(folder)
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    return None


def sweep_killed_runs(jobs: list[Job]) -> str | None:
    """Delete the unfinished outputs a killed run (SIGKILL, the out-of-memory killer) left hidden beside
    these outputs, where nothing else would ever remove them; the line to say, if any were."""
    removed = sweep_abandoned({job.destination.parent for job in jobs if job.destination is not None})
    if removed:
        return f"srtrt: deleted {removed} unfinished output file{'s' * (removed > 1)} of an earlier run that was killed"
    return None


def _settled(job: Job, options, scale: int) -> Job:
    """`job` with a video's real destination; one that cannot be planned (not a video it can open, a
    codec or size refused) is refused now, in its line, and takes no name from a file that can."""
    if options is None or not is_video(job.source):
        return job
    try:
        from srtrt.engine.video.run import settled_destination

        settled, job.note = settled_destination(job.source, job.destination, options, scale)
        if settled != job.destination:
            job.asked, job.destination = job.destination, settled
    except ImportError:  # no PyAV: its run says so
        pass
    except SrtrtError as e:
        job.refusal = str(e if e.path is not None else SrtrtError(e.cause, job.source))
    return job


def real_path(path: Path) -> Path:
    return Path(os.path.realpath(path))


def writes_over(a, b) -> bool:
    """Whether writing name `a` replaces file `b`: one name after links and `..`, or one name in a
    folder mounted twice (a bind mount, a container's two volumes of one path), which only the
    folder's device and inode tell. (A hard link is another name: writing it, by rename, leaves `b`
    as it was; outputs.same_file counts it as `b`.)"""
    a, b = real_path(a), real_path(b)
    if a == b:
        return True
    try:
        return a.name == b.name and os.path.samefile(a.parent, b.parent)
    except OSError:
        return False


def check_output_file(output: str | None, many: bool, inputs: list[Path]) -> None:
    """`-o` naming one file: its format and folder, refused in one line before the backend is
    opened (a model loaded and timed for nothing, then exit 1 as if the image had failed)."""
    if output is None or many or os.path.isdir(output) or output.endswith(("/", "\\")):
        return
    output_path(inputs[0], output, many, scale=1)  # its format (one line for an unknown one); no scale in -o itself
    if writes_over(output, inputs[0]):
        raise SrtrtError(INPUT_ITSELF, output)
    check_output_folder(output)


def make_output_folder(output: str | None, many: bool, create: bool = True) -> None:
    """Create `-o` when it names a folder; one line if that is impossible. create=False: only the
    checks, for a command that may still be refused (nothing is made for a run that never starts)."""
    if output == "":  # Path("") is the current folder: `-o "$OUT"` with OUT unset would write there
        raise SrtrtError("-o is empty (an unset variable?): name a file or a folder")
    if output is None or not (many or output.endswith(("/", "\\"))):
        return
    out = Path(output)
    if os.path.isfile(out):
        raise SrtrtError("is a file, but a folder or several inputs need an output directory", output)
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SrtrtError(f"cannot create the output folder ({e.strerror or e})", output) from None


# --------------------------------------------------------------------------- one file at a time

class FileRunner:
    """One backend, one file at a time: skip/overwrite, size limit, out-of-memory fallback, an Outcome per file."""

    def __init__(self, backend, options: RunOptions | None = None, log=None):
        from srtrt.engine.datapath.runtime import TiledUpscaler

        options = options or RunOptions()
        self.backend, self.options = backend, options
        self.upscaler = TiledUpscaler(backend, core=options.tile, margin=options.margin, batch=options.batch)
        self.fallback_upscaler = None  # for images the backend's engine cannot take (backend.fallback), made on need
        self._writer_pool: ThreadPoolExecutor | None = None  # submit's write-behind thread, made on need
        self.log = log or (lambda message: None)
        self.sheets = 0  # sheets of small images computed (sheet_runs.py)
        self.sheets_failed: str | None = None  # why this backend could not run a sheet: images go one by one
        self.deep: FileRunner | None = None  # fp32, for inputs deeper than `auto`'s precision keeps; made on need
        self.last_apart: str | None = None  # the last upscaler_for's input ran on `deep`: why (its line), else None

    def computes_apart(self, bits: int) -> bool:
        """Whether an input of `bits` bits a sample runs on an fp32 backend of its own: `--precision
        auto` picked a precision that keeps fewer (bf16 or int8 for a 16-bit PNG or a 10-bit video),
        here or on a Ray driver (`picked_by_auto`). A precision asked for by name is used as asked."""
        from srtrt.engine.backends.precision import keeps_bits

        by_auto = self.options.precision == "auto" or self.options.picked_by_auto
        return by_auto and not keeps_bits(self.backend.precision, bits)

    def upscaler_for(self, height: int, width: int, bits: int = 8):
        """The upscaler an image of this size and depth runs on: the backend's; the fp32 runner's for
        an input deeper than the backend's precision keeps (`computes_apart`); or the fallback `auto`
        named where the backend's engine cannot take the image's windows (a plan fixed at one window)."""
        from srtrt.engine.datapath.runtime import TiledUpscaler, WindowsOutsideEngine

        self.last_apart = None
        if self.computes_apart(bits):
            deep = self._deep_runner(bits)
            self.last_apart = self._apart_line(bits)
            return deep.upscaler_for(height, width)
        if self.backend.fallback is None:
            return self.upscaler
        try:
            self.upscaler.plan(height, width)
            return self.upscaler
        except WindowsOutsideEngine as e:
            if self.fallback_upscaler is None:
                backend, options = self.backend.fallback(), self.options
                self.fallback_upscaler = TiledUpscaler(backend, core=options.tile, margin=options.margin,
                                                       batch=options.batch)
                self.log(f"srtrt: {e}; such images run on {backend.describe()}")
            return self.fallback_upscaler

    def _deep_runner(self, bits: int) -> FileRunner:
        if self.deep is None:
            from srtrt.engine.batch.options import open_backend

            self.deep = FileRunner(open_backend(self._deep_options()).backend, self._deep_options(), log=self.log)
            self.log(f"srtrt: {self._apart_line(bits)}")
        return self.deep

    def _apart_line(self, bits: int) -> str:
        from srtrt.engine.backends.precision import SIGNIFICANT_BITS

        picked = self.backend.precision
        return (f"inputs of {bits} bits a sample run on {self.deep.backend.describe()}: {picked} keeps about "
                f"{SIGNIFICANT_BITS[picked]} bits of a sample (--precision {picked} to use it anyway)")

    def keep_deep(self, earlier: FileRunner | None) -> None:
        """Take over the fp32 runner an earlier runner of this backend made (`srtrt.upscale`'s calls,
        `srtrt serve`'s jobs), so its backend is opened once."""
        if earlier is None:
            return
        if earlier.options.tiles == self.options.tiles:
            self.deep = earlier
        else:  # its upscalers are for the earlier tiles
            self.deep = FileRunner(earlier.backend, self._deep_options(), log=self.log)

    def _deep_options(self) -> RunOptions:
        return self.options.replace(precision="fp32", picked_by_auto=False)

    def decode(self, source: str | Path) -> DecodedImage:
        return read_image(source, **self.options.decode_limit)

    def run(self, source: Path, destination: Path, on_tile=None, on_plan=None,
            decoded: Future | None = None, on_frame=None, on_frames=None, stop_check=None,
            asked: Path | None = None) -> Outcome:
        """Upscale `source` into `destination`; `decoded` is the image already being decoded (DecodeAhead).

        A video reports `on_frames(total, done)` once and `on_frame(1)` per frame; `stop_check` is
        called between its tile batches (it may raise to stop). The file is written as `submit`
        writes it (an image of up to WRITE_BEHIND_BYTES encoded whole, a larger one streamed), so
        `srtrt.upscale` and a Ray actor write the bytes `srtrt run` writes. `asked`: the name a video's
        `destination` was settled from (Job.asked), whose container its codec was chosen for."""
        return self.submit(source, destination, on_tile, on_plan, decoded, on_frame, on_frames,
                           stop_check, asked=asked).result()

    def skipped_or_refused(self, source: Path, destination: Path, existed: bool) -> Outcome | None:
        """The Outcome of an output already there (skipped without --overwrite), or None to go on;
        SrtrtError for an output that would replace its own input."""
        if writes_over(destination, source):
            raise SrtrtError(INPUT_ITSELF, destination)
        if existed and not self.options.overwrite:
            return skipped_existing(source, destination)
        return None

    def submit(self, source: Path, destination: Path, on_tile=None, on_plan=None,
               decoded: Future | None = None, on_frame=None, on_frames=None, stop_check=None,
               write_behind: bool = True, asked: Path | None = None) -> Future:
        """`run`, returning once the image is computed: an output of up to WRITE_BEHIND_BYTES is
        encoded and written on the runner's writer thread while the caller starts the next image.
        The Future's Outcome is ready when the file is in place; take it before submitting the
        image after next (so at most two such outputs are held). `stop_check` is also called
        while writing; a stop there removes the temporary file and the Future raises it. Large
        images, which stream their rows into the file as they are computed, and videos come
        back finished."""
        start = time.perf_counter()
        overwrite = self.options.overwrite
        existed = os.path.lexists(destination)
        try:
            if (skipped := self.skipped_or_refused(source, destination, existed)) is not None:
                return done_future(skipped)
            if is_video(source):
                return done_future(self._video(source, destination, on_frame, on_frames, stop_check, start, asked))
            image = decoded.result() if decoded is not None else self.decode(source)
            if on_plan:
                upscaler = self.upscaler_for(image.height, image.width, image.bit_depth)
                on_plan(len(upscaler.plan(image.height, image.width)))
            if write_behind and self._output_bytes(image) <= WRITE_BEHIND_BYTES:
                from srtrt.engine.datapath.pipeline import check_destination

                check_destination(image, destination, self.backend.scale, overwrite)  # before, not after, the compute
                colour, alpha = self.upscale_arrays(image, source, on_tile)
                return self.write_later(source, destination, image, colour, alpha, start, existed, stop_check)
            self._retrying(image, source, destination,
                           lambda upscaler: self._write(upscaler, image, destination, on_tile))
        except SrtrtError as e:
            return done_future(self.failed(e, source, destination, existed, start))
        return done_future(self._done(source, destination, image, start))

    def close(self) -> None:
        """Wait for the output being written, then stop the writer thread (and close the fp32
        runner's backend, which this runner opened; its own backend is its opener's to close)."""
        if self._writer_pool is not None:
            self._writer_pool.shutdown(wait=True)
            self._writer_pool = None
        if self.deep is not None:
            self.deep.close_with_backend()
            self.deep = None

    def close_with_backend(self) -> None:
        """`close`, then the backend: for the runner's owner, where the runner holds the only use of it."""
        self.close()
        self.backend.close()

    def _writer(self) -> ThreadPoolExecutor:
        if self._writer_pool is None:
            self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srtrt-write")
        return self._writer_pool

    def _output_bytes(self, image: DecodedImage) -> int:
        s = self.backend.scale
        return image.height * image.width * s * s * image.file_channels * image.pixels.dtype.itemsize

    def write_later(self, source: Path, destination: Path, image: DecodedImage, colour, alpha, start: float,
                    existed: bool, stop_check) -> Future:
        """Encode and write an upscaled result on the writer thread; its Outcome as a Future."""
        return self._writer().submit(self._write_behind, source, destination, image, colour, alpha,
                                     start, existed, stop_check)

    def _write_behind(self, source: Path, destination: Path, image: DecodedImage, colour, alpha,
                      start: float, existed: bool, stop_check) -> Outcome:
        from srtrt.engine.datapath.pipeline import write_upscaled

        try:
            write_upscaled(image, colour, alpha, destination, scale=self.backend.scale,
                           overwrite=self.options.overwrite, png_level=self.options.png_level, stop_check=stop_check)
        except SrtrtError as e:
            return self.failed(e, source, destination, existed, start)
        return self._done(source, destination, image, start)

    def _done(self, source: Path, destination: Path, image: DecodedImage, start: float) -> Outcome:
        pixels = image.height * image.width * self.backend.scale ** 2
        return Outcome(source, destination, DONE, f"{shown(source)} -> {shown(destination)}",
                       time.perf_counter() - start, pixels)

    def failed(self, e: SrtrtError, source: Path, destination: Path, existed: bool, start: float) -> Outcome:
        """The Outcome of an image that failed with `e` (or that another run wrote meanwhile)."""
        if not existed and not self.options.overwrite and os.path.lexists(destination):
            # another run wrote it while this one was encoding; its output is complete
            return Outcome(source, destination, SKIPPED, f"{shown(destination)}: written meanwhile by another run, skipped",
                           time.perf_counter() - start)
        message = str(e) if e.path is not None else f"{shown(source)}: {e}"  # every failure names its file
        return Outcome(source, destination, FAILED, message, time.perf_counter() - start)

    def _video(self, source: Path, destination: Path, on_frame, on_frames, stop_check, start: float,
               asked: Path | None = None) -> Outcome:
        try:
            from srtrt.engine.video.run import upscale_video
        except ImportError as e:
            raise SrtrtError(f"videos need PyAV: pip install av ({e})", source) from None
        result = upscale_video(self, source, destination, on_frame, on_frames, stop_check, asked)
        s = self.backend.scale
        pixels = (result.frames - result.resumed) * result.width * result.height * s * s  # this run's work
        return Outcome(source, result.destination, DONE, result.summary(source), time.perf_counter() - start, pixels)

    def upscale_frame(self, rgb: np.ndarray, on_tile=None) -> np.ndarray:
        """One video frame (H x W x 3) through the runtime, with the same out-of-memory fallback as an image."""
        return self.upscale_frames([rgb], on_tile)[0]

    def upscale_frames(self, rgbs: list[np.ndarray], on_tile=None) -> list[np.ndarray]:
        """Video frames of one shape through the runtime together; the upscaled frames in order."""
        outs: list[np.ndarray] = []
        self.stream_frames(rgbs, outs.append, on_tile)
        return outs

    def stream_frames(self, rgbs: list[np.ndarray], deliver, on_tile=None, bits: int = 8) -> None:
        """Video frames of one shape through one runtime call (their windows share the tile
        batches and the runtime's stages overlap across them); `deliver(rgb)` gets each upscaled
        frame in order as soon as it is done, on the runtime's encoder thread. With the same
        out-of-memory fallback as an image, which goes on from the first frame not yet delivered."""
        from srtrt.engine.video.run import frames_through

        delivered = 0

        def counted(rgb: np.ndarray) -> None:
            nonlocal delivered
            deliver(rgb)
            delivered += 1

        self._retrying(_Shape(*rgbs[0].shape[:2], bits), "frame", None,
                       lambda upscaler: frames_through(upscaler, rgbs[delivered:], counted, on_tile), images=len(rgbs))

    def upscale_arrays(self, image: DecodedImage, label: str | Path = "image",
                       on_tile=None) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole result in memory (colour, alpha), with the same out-of-memory fallback."""
        from srtrt.engine.datapath.pipeline import upscale_decoded

        return self._retrying(image, label, None,
                              lambda upscaler: upscale_decoded(upscaler, image, self.options.alpha, on_tile))

    def _write(self, upscaler, image: DecodedImage, destination: Path, on_tile) -> None:
        from srtrt.engine.datapath.pipeline import upscale_file

        upscale_file(upscaler, image, destination, overwrite=self.options.overwrite, alpha_mode=self.options.alpha,
                     on_tile=on_tile, png_level=self.options.png_level)

    def _retrying(self, image: DecodedImage, source, destination: Path | None, work, images: int = 1):
        """`work(upscaler)`, stepping down after running out of device or host memory; `images` of the
        image's shape go through together (video frames)."""
        from srtrt import registry
        from srtrt.engine.batch import oom

        before = self.upscaler_for(image.height, image.width, image.bit_depth)
        while True:
            try:
                return work(before)
            except Exception as e:
                if not oom.is_out_of_memory(e):
                    if (isinstance(e, (SrtrtError, OSError, StopWork))
                            or before.backend.architecture in registry.ARCHITECTURES):
                        # said already, an I/O error, a caller's stop, or srtrt's own network failing: a bug,
                        # its traceback the report
                        raise
                    # a community network's own code refusing this input: one line, the batch goes on
                    cause = " ".join(str(e).split())[:200] or type(e).__name__
                    raise SrtrtError(f"the {before.backend.architecture} model failed on this image "
                                     f"({type(e).__name__}: {cause})", source) from None
                remove_partials(destination)
                oom.free_device_memory(before)
                after = oom.smaller(before, image.height, image.width, images=images)
                cause = " ".join(str(e).split())[:160] or type(e).__name__
                memory, advice = ("memory", "free some memory") if oom.is_host_memory(e) else ("device memory",
                                                                                             "--device cpu")
                if after is None:
                    raise SrtrtError(f"out of {memory} even with batch {before.batch} and tile {before.core} "
                                     f"({cause}); try a smaller --tile or {advice}", source) from None
                self.log(f"srtrt: {source}: out of {memory} with batch {before.batch}, tile {before.core}; "
                         f"retrying with batch {after.batch}, tile {after.core}")
                self._stepped_down(before, after)
                before = after

    def _stepped_down(self, before, after) -> None:
        """Later images start from the setting that fits."""
        if before is self.upscaler:
            self.upscaler = after
        elif before is self.fallback_upscaler:
            self.fallback_upscaler = after
        elif self.deep is not None:
            self.deep._stepped_down(before, after)


@dataclass
class _Shape:
    """What the out-of-memory fallback needs to know of a video frame."""

    height: int
    width: int
    bit_depth: int = 8


class DecodeAhead:
    """Decode the next input on one worker thread while the current image computes."""

    def __init__(self, runner: FileRunner):
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srtrt-decode")
        self._pending: dict[Path, Future] = {}

    def take(self, job: Job) -> Future | None:
        """The decode of `job` (started now if it was not yet); None when the job will not decode."""
        if not self._wanted(job):
            return None
        return self._pending.pop(job.source, None) or self._pool.submit(self._runner.decode, job.source)

    def start(self, job: Job | None) -> None:
        """Begin decoding `job` in the background (at most one image ahead)."""
        if job is not None and self._wanted(job) and job.source not in self._pending:
            self._pending[job.source] = self._pool.submit(self._runner.decode, job.source)

    def _wanted(self, job: Job) -> bool:
        return (job.refusal is None and job.destination is not None and not is_video(job.source)
                and (self._runner.options.overwrite or not os.path.lexists(job.destination)))

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
