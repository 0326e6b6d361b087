"""The per-file path of `srtrt run` over a list of files, timed: what bench/test_varied.py measures.

Same steps as engine/batch/cli_run.py without the terminal: plan_jobs names the outputs, a
FileRunner upscales each file (decode, tiles, compute, PNG encode, rename) while DecodeAhead
decodes the next one and the previous one's output is written (FileRunner.submit).
"""
from __future__ import annotations

import time
from pathlib import Path

from srtrt.engine.batch.files import DONE, DecodeAhead, FileRunner, plan_jobs
from srtrt.engine.batch.options import RunOptions
from srtrt.engine.batch.threads import torch_for_data_only


def run_files(backend, files: list[Path], output: Path) -> dict:
    """Upscale `files` into the folder `output` (overwriting); seconds, output MP and MP/s."""
    output.mkdir(parents=True, exist_ok=True)
    runner = FileRunner(backend, RunOptions(overwrite=True))
    jobs = plan_jobs(files, str(output) + "/", backend.scale)
    t0 = time.perf_counter()
    outcomes, pending = [], None
    try:
        with DecodeAhead(runner) as ahead, torch_for_data_only(backend):  # as `srtrt run` runs
            for i, job in enumerate(jobs, 1):
                decoded = ahead.take(job)
                ahead.start(jobs[i] if i < len(jobs) else None)
                written = runner.submit(job.source, job.destination, decoded=decoded)
                if pending is not None:
                    outcomes.append(pending.result())
                pending = written
            if pending is not None:
                outcomes.append(pending.result())
    finally:
        runner.close()
    seconds = time.perf_counter() - t0
    failed = [o.message for o in outcomes if o.status != DONE]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed: {failed[0]}")
    megapixels = sum(o.pixels for o in outcomes) / 1e6
    return {"seconds": seconds, "output_mp": megapixels, "mp_per_s": megapixels / seconds, "images": len(outcomes)}
