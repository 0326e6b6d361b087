"""`srtrt run`: a batch of inputs (files, directories, globs) through one backend.

A bad input costs that input only: one line naming the file and the cause, the batch goes
on, and the exit code is non-zero at the end. Outputs are written under temporary names and
renamed when complete, so an interrupted run never leaves a half-written image:

- SIGINT and SIGTERM stop the batch between or inside images: the image in progress is
  discarded (its temporary file deleted), finished outputs stay, exit code 128 + signal.
- An image that runs out of memory (device or host) is retried with half the tile batch, then half the
  tile core, and fails with one line only when no smaller setting is left (see `oom`).
- Output names come from the input's file stem only, so no input name places a file outside
  the output folder. Two inputs that would share an output name are refused rather than one
  silently overwriting the other, and a file that is the output of another input of the same
  batch (a re-run over a folder holding earlier `_x4` results) is not upscaled again.

The per-file work (naming, skip/overwrite, OOM fallback, decode ahead) is `files`, shared with
the Ray runner's actors and `srtrt.upscale`; this module is the terminal around it.
"""
from __future__ import annotations

import sys

from srtrt.atomic import remove_partials
from srtrt.engine.batch.files import (
    FAILED,
    BatchReport,
    DecodeAhead,
    FileRunner,
    Outcome,
    check_output_file,
    expand_inputs,
    make_output_folder,
    plan_jobs,
    several_outputs,
    shape_class,
    sweep_killed_runs,
)
from srtrt.engine.batch.options import RunOptions, open_backend, setup_lines, unused_video_flags
from srtrt.engine.batch.sheet_runs import run_sheet, sheet_shape, sheets_line, units, with_next
from srtrt.engine.batch.threads import torch_for_data_only
from srtrt.errors import SrtrtError, shown

# --------------------------------------------------------------------------- the batch

def _progress(quiet: bool):
    from tqdm import tqdm

    enabled = not quiet and sys.stderr is not None and sys.stderr.isatty()  # None: started with stderr closed
    return tqdm(total=0, unit="tile", disable=not enabled, dynamic_ncols=True, leave=False), enabled


def main(args) -> int:
    if args.ray:
        from srtrt.engine.batch.ray_runner import main as ray_main
        return ray_main(args)

    from srtrt.engine.batch.signals import StopOnSignals, Stopped

    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise SrtrtError(f"no input images match {' '.join(args.inputs)}")
    options = RunOptions.from_args(args).replace(shape_class=shape_class(inputs))
    many = several_outputs(args.inputs, inputs)
    make_output_folder(args.output, many, create=False)
    check_output_file(args.output, many, inputs)

    selection = open_backend(options)
    make_output_folder(args.output, many)  # once the model and device are known good
    backend = selection.backend
    if not args.quiet:
        print("\n".join(setup_lines(selection, options)), file=sys.stderr)
        if unused := unused_video_flags(options, inputs):
            print(f"srtrt: {unused}", file=sys.stderr)
    # its notes (an input run apart, an out-of-memory retry) are said unless -q, which leaves failures alone
    runner = FileRunner(backend, options, log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    jobs = plan_jobs(inputs, args.output, backend.scale, options, many)
    swept = sweep_killed_runs(jobs)
    if swept and not args.quiet:
        print(swept, file=sys.stderr)
    sheet = sheet_shape(backend, options)
    if sheet and not args.quiet:
        print(sheets_line(sheet), file=sys.stderr)

    report = BatchReport()
    bar, bar_on = _progress(args.quiet)

    def say(message: str, always: bool = False) -> None:
        if always or not args.quiet:
            (bar.write if bar_on else lambda m: print(m, file=sys.stderr))(message)

    current = None
    pending: list = []  # the last images' outputs, still being written on the runner's writer thread
    try:
        with StopOnSignals() as stop, DecodeAhead(runner) as ahead, torch_for_data_only(backend):
            def on_tile(n):  # runs in the runtime's assembler thread after each batch of tiles
                stop.check()
                bar.update(n)

            def on_plan(n):  # after decoding, before the output file is opened
                stop.check()
                bar.unit = "tile"
                bar.reset(total=n)

            def on_frames(total, done):  # a video: progress in frames (fps and ETA from tqdm)
                stop.check()
                bar.unit = "frame"
                bar.reset(total=total or None)
                bar.update(done)

            def on_frame(n):
                stop.check()
                bar.update(n)

            def collect():  # the previous images' outcomes, once their outputs are written
                while pending:
                    outcome = report.add(pending.pop(0).result())
                    say(f"srtrt: {outcome.message}", always=outcome.status == FAILED)

            started = 0
            for group, following in with_next(units(jobs, runner)):
                stop.check()
                job = group[0]
                started += len(group)
                if len(group) == 1 and job.refusal:
                    collect()
                    report.add(Outcome(job.source, job.destination, job.status, job.refusal))
                    say(f"srtrt: {job.refusal}", always=job.status == FAILED)
                    continue
                if job.note:
                    say(shown(f"srtrt: {job.source}: {job.note}"))
                decoded = [ahead.take(j) for j in group]
                ahead.start(following[0] if following else None)  # the next image decodes while this one runs
                bar.reset(total=0)
                if len(group) > 1:  # small images sharing one window (sheet_runs.py)
                    bar.set_description(f"[{started}/{len(jobs)}] {len(group)} images on one sheet")
                    written = run_sheet(runner, group, decoded, stop_check=stop.check)
                else:
                    current = job.destination
                    bar.set_description(f"[{started}/{len(jobs)}] {job.source.name}")
                    # a small image's output is written while the next one computes (FileRunner.submit)
                    written = [runner.submit(job.source, job.destination, on_tile=on_tile, on_plan=on_plan,
                                             decoded=decoded[0], on_frame=on_frame, on_frames=on_frames,
                                             stop_check=stop.check, asked=job.asked)]
                    current = None
                collect()
                pending = written
            collect()
            stop.check()
    except Stopped as stopped:
        remove_partials(current)
        for written in pending:  # the last images' writes: kept if they finish, discarded if the stop reached them
            try:
                outcome = report.add(written.result())
                say(f"srtrt: {outcome.message}", always=outcome.status == FAILED)  # its line, as any finished image's
            except Stopped:
                pass
        bar.close()
        print(f"srtrt: stopped by {stopped.name}: {len(report.done)} finished outputs kept, "
              "any image in progress discarded (a video's finished segments are kept for --resume)", file=sys.stderr)
        return stopped.exit_code
    finally:
        runner.close_with_backend()
    bar.close()
    if len(jobs) > 1 and not args.quiet:
        print(report.summary(), file=sys.stderr)
    return report.exit_code
