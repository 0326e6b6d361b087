"""The community-model cases of one benchmark run (bench/test_zoo.py) as a table, with ratios.

    python bench/zoo_report.py RUN.json

Every ratio is between cases of the same run: × eager is that model's eager fp32 median over
the case's median. Targets (the auto path against eager): RRDBNet ≥ 8×, Compact ≥ 10×.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

EAGER = "eager-fp32-nchw"
TARGETS = {"rrdbnet-x4plus": 8.0, "compact-animevideov3": 10.0}


def _row(b: dict, eager_s: float | None) -> str:
    e, median = b["extra_info"], b["stats"]["median"]
    ratio = f"{eager_s / median:.2f}" if eager_s else "—"
    tiling = e.get("eager_tiling") or f"{e.get('windows')} × {e.get('window')} (margin {e.get('margin')})"
    return (f"| {e['model']} | {e['case']} | {median * 1000:.0f} | {e['output_mp'] / median:.3f} | {ratio} | "
            f"{e.get('gflop_per_s', '—')} | {tiling} | {e.get('describe', '')} |")


def throughput_table(benchmarks: list[dict], judge: bool = True) -> list[str]:
    lines = ["| model | case | ms / image | output MP/s | × eager fp32 | GFLOP/s | windows | path |",
             "|---|---|---|---|---|---|---|---|"]
    zoo = [b for b in benchmarks if b["extra_info"].get("kind") == "zoo"]
    eager = {b["extra_info"]["model"]: b["stats"]["median"] for b in zoo if b["extra_info"]["case"] == EAGER}
    lines += [_row(b, eager.get(b["extra_info"]["model"])) for b in zoo]
    for b in zoo:
        e = b["extra_info"]
        if e["case"] == "auto":
            ratio = eager[e["model"]] / b["stats"]["median"] if e["model"] in eager else float("nan")
            target = TARGETS.get(e["model"]) if judge else None  # smoke inputs are too small to judge
            verdict = "" if target is None else f" (target ≥ {target:g}×: {'met' if ratio >= target else 'not met'})"
            lines.append(f"\n{e['model']}: auto = {ratio:.2f}× eager{verdict}; picked: {e['reason']}")
    return lines


def ceiling_lines(benchmarks: list[dict]) -> list[str]:
    """How fast any int8 path could be against eager fp32, from the matmul peaks measured in the same run
    (`pytest bench/test_peak.py bench/test_zoo.py`): the int8 peak over what eager fp32 reached."""
    peaks = {b["extra_info"]["dtype"]: b["extra_info"]["tflops_best"] for b in benchmarks
             if b["extra_info"].get("kind") == "peak"}
    if "int8" not in peaks or "fp32" not in peaks:
        return []
    lines = [f"measured matmul peaks: {', '.join(f'{k} {v:.3g} T/s' for k, v in peaks.items())}"]
    for b in benchmarks:
        e = b["extra_info"]
        if e.get("kind") == "zoo" and e["case"] == EAGER and e.get("gflop_per_s"):
            eager = float(e["gflop_per_s"]) / 1e3
            lines.append(f"{e['model']}: eager fp32 ran at {100 * eager / peaks['fp32']:.0f}% of the fp32 peak; every conv "
                         f"in int8 at the int8 peak would be {peaks['int8'] / eager:.2f}x eager "
                         f"(target {TARGETS.get(e['model'], float('nan')):g}x)")
    return lines


def rss_lines(benchmarks: list[dict]) -> list[str]:
    out = []
    for b in benchmarks:
        e = b["extra_info"]
        if e.get("kind") == "zoo-rss":
            out.append(f"peak RSS of `srtrt {e['command']}` ({e['input']}): {e['peak_rss_gb']:.2f} GB "
                       f"(target < {e['rss_target_gb']:g} GB: {'met' if e['within_target'] else 'not met'}), "
                       f"wall {e['wall_s']:.1f} s")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    info = doc.get("machine_info", {}).get("srtrt", {})
    print(f"{info.get('describe', '?')}, mode {info.get('mode', '?')}, {doc.get('datetime', '')}\n")
    table = throughput_table(doc["benchmarks"], judge=info.get("mode") != "smoke")
    print("\n".join(table + [""] + rss_lines(doc["benchmarks"]) + [""] + ceiling_lines(doc["benchmarks"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
