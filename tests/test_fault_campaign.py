"""The fault campaign: mutated inputs (see fault_campaign.py) through ONE `srtrt run` process.

Every input ends either done (its output exists and decodes to 4x its size) or named on
exactly one `srtrt: ` line; nothing else reaches stderr (no traceback, no Python warning),
no temporary file is left, and the exit code says whether anything failed. 1,000 inputs by
default; `SRTRT_FAULT_CAMPAIGN=10000` for the long run (`SRTRT_FAULT_CAMPAIGN_SEED` picks other
files). Counts go to engine/FAULTS.md.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from fault_campaign import KINDS, kind_of, mutations
from run_helpers import partials, save_tiny_model, srtrt_process

COUNT = int(os.environ.get("SRTRT_FAULT_CAMPAIGN", "1000"))
SEED = int(os.environ.get("SRTRT_FAULT_CAMPAIGN_SEED", "2024"))  # another seed, other files
SCALE = 4
# Inputs are 16-64 px; lies about a bigger size are refused from the header, so the campaign
# stays about decoding and I/O rather than compute.
MAX_PIXELS = 256 * 256
ORIENTATION_TAG = 0x0112


def expected_size(source: Path) -> tuple[int, int]:
    """The output size the file's header promises: 4x the input, sides swapped by an EXIF rotation
    (read by tifffile for a TIFF Pillow has no mode for, as srtrt then reads it)."""
    with warnings.catch_warnings():  # the test's own look at damaged files
        warnings.simplefilter("ignore")
        try:
            with Image.open(source) as img:
                # stored sides (Pillow 13 reports a turned TIFF's size turned already)
                width, height = (img.tag_v2[256], img.tag_v2[257]) if img.format == "TIFF" else img.size
                try:
                    orientation = int(img.getexif().get(ORIENTATION_TAG, 1))
                except Exception:
                    orientation = 1
        except UnidentifiedImageError:
            import tifffile

            with tifffile.TiffFile(source) as tiff:
                page = tiff.pages[0]
                width, height = page.imagewidth, page.imagelength
                orientation = int(page.tags[ORIENTATION_TAG].value) if ORIENTATION_TAG in page.tags else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width * SCALE, height * SCALE


def decodes_to(path: Path, size: tuple[int, int]) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
            return img.size == size
    except Exception:
        return False


def cause_of(message: str) -> str:
    """The kind of failure a one-line message names, without the file's own numbers and details."""
    cause = re.sub(r"\d+x\d+", "WxH", re.split(r" \(|; ", message)[0])
    return re.sub(r"\d{1,3}(,\d{3})+|\d{3,}", "N", cause)


def summary(outcomes: dict[str, str], messages: dict[str, str]) -> str:
    """Markdown tables: outcomes by mutation kind, then failures by cause."""
    by_kind = collections.Counter((kind_of(name), status) for name, status in outcomes.items())
    rows = ["| mutation | inputs | done | failed (one line) |", "|---|---|---|---|"]
    for kind in (*KINDS, "all"):
        done = sum(n for (k, s), n in by_kind.items() if s == "done" and kind in (k, "all"))
        failed = sum(n for (k, s), n in by_kind.items() if s == "failed" and kind in (k, "all"))
        rows.append(f"| {kind} | {done + failed} | {done} | {failed} |")
    rows += ["", "| failed: cause | inputs |", "|---|---|"]
    causes = collections.Counter(cause_of(message) for message in messages.values())
    rows += [f"| {cause} | {n} |" for cause, n in causes.most_common()]
    return "\n".join(rows)


@pytest.mark.slow
def test_every_mutated_input_is_done_or_named_on_one_line(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    sources = []
    for name, data in itertools.islice(mutations(SEED), COUNT):
        (folder / name).write_bytes(data)
        sources.append(folder / name)
    model = save_tiny_model(tmp_path, channels=8)

    process = srtrt_process("run", folder, "-o", out, "--model", model, "--backend", "torch", "--precision", "fp32",
                            "--device", "cpu", "--max-pixels", MAX_PIXELS, "-q")
    try:
        stdout, stderr = process.communicate(timeout=120 + COUNT * 0.5)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"srtrt run hung; last lines: {stderr.splitlines()[-5:]}")

    assert "Traceback" not in stderr, stderr[-3000:]
    assert not re.search(r"\.py:\d+: \w*Warning", stderr), stderr[-3000:]
    lines = stderr.splitlines()
    strays = [line for line in lines if not line.startswith("srtrt: ")]
    assert strays == [], strays[:10]
    assert stdout == ""

    named, messages = collections.Counter(), {}
    for line in lines:
        match = re.match("srtrt: " + re.escape(str(folder)) + r"/([^/:]+): (.*)", line)
        assert match, f"an error line that names no input: {line}"
        named[match.group(1)] += 1
        messages[match.group(1)] = match.group(2)

    outcomes, wrong = {}, []
    for source in sources:
        output = out / f"{source.stem}_x{SCALE}.png"
        lines_about_it = named.pop(source.name, 0)
        if lines_about_it == 0 and decodes_to(output, expected_size(source)):
            outcomes[source.name] = "done"
        elif lines_about_it == 1 and not output.exists():
            outcomes[source.name] = "failed"
        else:
            wrong.append(f"{source.name}: {lines_about_it} lines, output exists: {output.exists()}")
    assert wrong == [], wrong[:10]
    assert named == {}, f"lines about files that are not inputs: {dict(named)}"
    assert partials(tmp_path) == []
    failed = sum(status == "failed" for status in outcomes.values())
    assert process.returncode == (1 if failed else 0), (process.returncode, stderr[-2000:])
    print(f"\nfault campaign, {COUNT} inputs, seed {SEED}:\n{summary(outcomes, messages)}")


def test_the_campaign_is_reproducible_and_covers_every_kind_and_format():
    first = list(itertools.islice(mutations(7), 100))
    assert first == list(itertools.islice(mutations(7), 100))
    assert first != list(itertools.islice(mutations(8), 100))
    assert {kind_of(name) for name, _ in first} == set(KINDS)
    assert {Path(name).suffix for name, _ in first} == {".png", ".jpg", ".webp", ".tif", ".bmp"}
    assert len({data for _, data in first}) == len(first)  # every file is a new one
