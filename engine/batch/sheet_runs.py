"""A folder of small images of many sizes, run as sheets (engine/datapath/sheets.py).

`srtrt run` on such a folder (measured.MANY_SIZES) groups the small RGB images into sheets of one
static shape, so a backend that compiles per shape compiles once, and every image still equals
its whole-image pass. `units` turns the batch's jobs into what runs together: a sheet's jobs, or
one job alone (a large image, grey, alpha run through the network, a video, a file that does not open). `run_sheet`
computes one sheet and returns each image's Outcome as a Future, its output written on the
runner's writer thread, as FileRunner.submit does for one small image.

Measured with bench/test_varied.py on the AMX Xeon (OpenVINO int8, 2 cores): 120 photos of 64-320
px a side ran at 0.80 of the single 2K-output image's output MP/s, against 0.64 one at a time.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np

from srtrt.engine.batch.files import FileRunner, Job, done_future
from srtrt.engine.datapath import sheets
from srtrt.engine.video import is_video
from srtrt.errors import SrtrtError

SHEET_SIDE = 512  # LR pixels: the varied folder's 64-320 px photos covered 87 % of 512x512 sheets, 82 % of 384x512
LOOKAHEAD = 64    # jobs whose sizes one sheet is chosen from (only the sheet's images are decoded)


def sheet_shape(backend, options) -> tuple[int, int] | None:
    """The sheet a run of many small sizes uses on this backend, or None where images run one at a
    time: a backend that gains nothing from sheets (Backend.shares_sheets), a model whose images
    cannot share one (registry sheet_gap 0) or that is not RGB (a grey model takes each channel as
    an image), another shape class, tiles asked for (`--tile`, `--margin`: a sheet is one window),
    or a window budget below a useful sheet."""
    from srtrt.engine.backends.measured import MANY_SIZES

    if (options.shape_class != MANY_SIZES or not backend.shares_sheets or not backend.sheet_gap
            or backend.channels != 3 or options.tile is not None or options.margin is not None):
        return None
    side = min(SHEET_SIDE, int(backend.defaults.whole_image_pixels ** 0.5) // 64 * 64)
    return (side, side) if side >= 128 else None


def sheets_line(sheet: tuple[int, int]) -> str:
    return (f"srtrt: small images of many sizes share {sheet[0]}x{sheet[1]} windows (sheets), masked so each "
            "equals its whole-image pass")


def _header_size(job: Job, runner: FileRunner, sheet: tuple[int, int]) -> tuple[int, int] | None:
    """(height, width) of a job that may go on a sheet, from its header; None: it runs alone."""
    from srtrt.engine.datapath.imageio import open_lazily

    if job.refusal or job.destination is None or is_video(job.source) or not job.source.is_file():
        return None
    if not runner.options.overwrite and os.path.lexists(job.destination):
        return None  # skipped by submit, with its line
    try:
        with open_lazily(job.source) as img:
            alpha = img.mode == "RGBA" or "transparency" in img.info
            if img.mode not in ("RGB", "RGBA") or alpha and runner.options.alpha != "bicubic":
                return None
            size = (img.height, img.width)
    except Exception:  # noqa: BLE001 - any unreadable input runs alone and fails there with its own line
        return None
    return size if _sheet_size(size, sheet, runner.backend) else None


def _sheet_size(size: tuple[int, int], sheet: tuple[int, int], backend) -> bool:
    """Whether an image of this (height, width) may go on the sheet: it fits, and it is a size the
    network takes whole (at least its minimum side, a multiple of what it needs); others run alone,
    where the runtime meets those needs or says why not."""
    step = backend.multiple_of
    return (sheets.fits(size, sheet) and min(size) >= backend.minimum
            and size[0] % step == 0 and size[1] % step == 0)


def units(jobs: list[Job], runner: FileRunner) -> Iterator[list[Job]]:
    """The jobs in groups that run together: a sheet's (two or more), or one job alone. A job runs
    alone where its image would not share a sheet; the others are packed LOOKAHEAD at a time."""
    sheet = sheet_shape(runner.backend, runner.options)
    if sheet is None:
        yield from ([job] for job in jobs)
        return
    gap = runner.backend.sheet_gap
    waiting: list[tuple[Job, tuple[int, int]]] = []

    def next_sheet() -> list[Job]:
        placed = sheets.pack([size for _, size in waiting], sheet, gap, runner.backend.multiple_of)
        chosen = {p.index for p in placed}
        group = [waiting[i][0] for i in sorted(chosen)]
        waiting[:] = [w for i, w in enumerate(waiting) if i not in chosen]
        return group

    for job in jobs:
        size = _header_size(job, runner, sheet)
        if size is None:
            yield [job]
            continue
        waiting.append((job, size))
        if len(waiting) >= LOOKAHEAD:
            yield next_sheet()
    while waiting:
        yield next_sheet()


def with_next(groups: Iterator[list[Job]]) -> Iterator[tuple[list[Job], list[Job] | None]]:
    """Each group of `units` with the one after it (None at the end): the loop starts decoding the
    next group's first image while this one computes."""
    group = next(groups, None)
    while group is not None:
        following = next(groups, None)
        yield group, following
        group = following


def _on_sheet(image, sheet: tuple[int, int], runner: FileRunner) -> bool:
    """Whether a decoded image can share a sheet (its header said so; EXIF may have turned it): RGB,
    with an alpha plane only where alpha is upscaled bicubic beside the network (the default), and
    no deeper than the backend's precision keeps (a 16-bit PNG runs alone, in fp32: FileRunner.computes_apart)."""
    pixels = image.pixels
    return ((image.alpha is None or runner.options.alpha == "bicubic") and pixels.ndim == 3 and pixels.shape[2] == 3
            and np.issubdtype(pixels.dtype, np.integer) and _sheet_size(pixels.shape[:2], sheet, runner.backend)
            and not runner.computes_apart(image.bit_depth))


def run_sheet(runner: FileRunner, jobs: list[Job], decoded: list[Future | None], stop_check=None) -> list[Future]:
    """Upscale `jobs` (from `units`) on one sheet; their Outcomes as Futures, in the jobs' order.
    A job that fails to decode fails alone; one that no longer fits (turned by EXIF) or whose
    sheet runs out of memory runs on its own through FileRunner.submit."""
    from srtrt.engine.datapath.pipeline import bicubic_rows, check_destination
    from srtrt.engine.datapath.transparency import fill_hidden_colour

    start = time.perf_counter()
    sheet, backend = sheet_shape(runner.backend, runner.options), runner.backend
    results: list[Future | None] = [None] * len(jobs)
    ready: list[int] = []  # jobs whose images go on the sheet
    images: dict[int, object] = {}
    existed = {}
    for k, (job, future) in enumerate(zip(jobs, decoded)):
        existed[k] = os.path.lexists(job.destination)
        try:
            if (skipped := runner.skipped_or_refused(job.source, job.destination, existed[k])) is not None:
                results[k] = done_future(skipped)
                continue
            images[k] = image = future.result() if future is not None else runner.decode(job.source)
            check_destination(image, job.destination, backend.scale, runner.options.overwrite)
        except SrtrtError as e:
            results[k] = done_future(runner.failed(e, job.source, job.destination, existed[k], start))
            continue
        if _on_sheet(image, sheet, runner):
            ready.append(k)
    placements = sheets.pack([images[k].pixels.shape[:2] for k in ready], sheet, backend.sheet_gap,
                             backend.multiple_of) if ready else []
    if stop_check:
        stop_check()
    output = None
    if len(placements) > 1 and runner.sheets_failed is None:
        from srtrt.engine.batch import oom

        # the colour under transparent pixels filled from the visible ones, as for an image alone (pipeline._planes)
        colours = [fill_hidden_colour(images[k].pixels, images[k].alpha) for k in ready]
        x, mask = sheets.compose(colours, placements, sheet)
        try:
            output = backend.infer_masked(x, mask)
        except SrtrtError as e:  # the graph with masks cannot be made here: this run's images go one by one
            runner.sheets_failed = str(e)
            runner.log(f"srtrt: small images run one at a time: {e}")
        except Exception as e:
            if not oom.is_out_of_memory(e):
                raise
            oom.free_device_memory(runner.upscaler)  # each image then runs alone, stepping down as it does
    on_sheet = {ready[p.index]: p for p in placements} if output is not None else {}
    for k, job in enumerate(jobs):
        if results[k] is not None:
            continue
        if k in on_sheet:
            image = images[k]
            try:
                colour = sheets.cut(output, on_sheet[k], backend.scale, image.pixels.dtype)
            except SrtrtError as e:  # NaN in this image's part: it fails alone, as it would in tiles
                results[k] = done_future(runner.failed(e, job.source, job.destination, existed[k], start))
                continue
            alpha = None if image.alpha is None else bicubic_rows(image.alpha, 0, image.height, backend.scale)
            results[k] = runner.write_later(job.source, job.destination, image, colour, alpha, start,
                                            existed[k], stop_check)
        else:
            results[k] = runner.submit(job.source, job.destination, decoded=done_future(images[k]),
                                       stop_check=stop_check)
    runner.sheets += output is not None
    return results
