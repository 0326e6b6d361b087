"""Merges pytest-benchmark JSONs of one machine's runs into one, as bench/gpu.sh needs.

    python bench/merge_results.py OUT.json PART.json [PART.json ...]

gpu.sh runs bench/ in parts, each with its own time limit, so that a part that overruns loses
only its own results; report.py reads one run per device. The merged file keeps the first
part's machine and commit information and every part's benchmarks, in the order given; a part
run in another mode than the first (gpu.sh's encoding part runs quick) is named in the machine
information's `part_modes`. A part that is missing or unreadable (its run was killed before it
wrote) is named and left out; parts of different devices are refused (nothing is written).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _srtrt_info(doc: dict) -> dict:
    return doc.get("machine_info", {}).get("srtrt", {})


def merge(parts: list[Path]) -> dict | None:
    """The merged run, or None when no part could be read; ValueError when parts' devices differ."""
    merged = None
    for path in parts:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"{path}: left out ({e.__class__.__name__}: {e})", file=sys.stderr)
            continue
        if merged is None:
            merged, first = doc, path
            continue
        info, first_info = _srtrt_info(doc), _srtrt_info(merged)
        if info.get("slug") != first_info.get("slug"):
            raise ValueError(f"{path}: another device ({info.get('slug')}) than {first} ({first_info.get('slug')}); "
                             "a merged file is one device's run")
        if info.get("mode", "full") != first_info.get("mode", "full"):
            first_info.setdefault("part_modes", {})[path.stem] = info.get("mode", "full")
        merged["benchmarks"].extend(doc.get("benchmarks", []))
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python bench/merge_results.py OUT.json PART.json [PART.json ...]", file=sys.stderr)
        return 2
    out, parts = Path(argv[0]), [Path(a) for a in argv[1:]]
    try:
        merged = merge(parts)
    except ValueError as e:
        print(f"{out}: not written: {e}", file=sys.stderr)
        return 1
    if merged is None:
        print(f"{out}: not written, no part could be read", file=sys.stderr)
        return 1
    out.write_text(json.dumps(merged, indent=1))
    print(f"{out}: {len(merged['benchmarks'])} benchmarks from {len(parts)} parts")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
