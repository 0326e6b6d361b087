"""The per-file path of `srtrt run` over a list of files, timed: what bench/test_varied.py measures.

Same steps as engine/batch/cli_run.py without the terminal: plan_jobs names the outputs, a
FileRunner upscales each file (decode, tiles, compute, PNG encode, rename), or a sheet of small
ones (sheet_runs.py), while DecodeAhead decodes the next one and the previous outputs are written.
"""
from __future__ import annotations

import time
from pathlib import Path

from srtrt.engine.batch.files import DONE, DecodeAhead, FileRunner, plan_jobs, shape_class
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.batch.sheet_runs import run_sheet, units, with_next
from srtrt.engine.batch.threads import torch_for_data_only


def run_files(backend, files: list[Path], output: Path) -> dict:
    """Upscale `files` into the folder `output` (overwriting); seconds, output MP and MP/s."""
    output.mkdir(parents=True, exist_ok=True)
    runner = FileRunner(backend, RunOptions(overwrite=True, shape_class=shape_class(files)))
    jobs = plan_jobs(files, str(output) + "/", backend.scale)
    t0 = time.perf_counter()
    outcomes, pending = [], []
    try:
        with DecodeAhead(runner) as ahead, torch_for_data_only(backend):  # as `srtrt run` runs
            for group, following in with_next(units(jobs, runner)):
                decoded = [ahead.take(job) for job in group]
                ahead.start(following[0] if following else None)
                if len(group) > 1:
                    written = run_sheet(runner, group, decoded)
                else:
                    written = [runner.submit(group[0].source, group[0].destination, decoded=decoded[0])]
                outcomes += [future.result() for future in pending]
                pending = written
            outcomes += [future.result() for future in pending]
    finally:
        runner.close()
    seconds = time.perf_counter() - t0
    failed = [o.message for o in outcomes if o.status != DONE]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed: {failed[0]}")
    megapixels = sum(o.pixels for o in outcomes) / 1e6
    return {"seconds": seconds, "output_mp": megapixels, "mp_per_s": megapixels / seconds, "images": len(outcomes),
            "sheets": runner.sheets}
