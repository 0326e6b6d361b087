"""Render benchmark JSON files into bench/results/REPORT.md and throughput PNGs.

    python bench/report.py                    # every bench/results/*.json
    python bench/report.py a.json b.json      # these runs
    python bench/report.py --out DIR ...      # write REPORT.md and the PNGs into DIR

One section per device. When several runs of one device are given, the newest full run with
throughput cases is used (else the newest quick one, else the newest smoke one): every ratio
and percentage of its tables comes from one run, never from two. The video, varied-folder and
serve lines come from the best run of the device that has each kind (the suites run on their
own: `pytest bench/test_video.py --benchmark-json=...`), each line from one run, named when it
is not the section's. A short table goes to stdout at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
EAGER_CASE = "eager-fp32-nchw"
BICUBIC_CASE = "bicubic-torch"
MODE_PREFERENCE = {"full": 0, "quick": 1, "smoke": 2}
SRTRT_GROUPS = ("srtrt", "tile-sweep", "batch-sweep")
TARGETS = {"cpu_vs_eager": 3.0, "gpu_vs_eager": 10.0, "gpu_peak_pct": 50.0, "pipeline_efficiency": 0.90,
           "cpu_default_vs_eager": 9.0, "cpu_default_vs_torch_bf16": 1.6, "auto_within_pct": 5.0,
           "auto_start_seconds": 5.0}


@dataclass
class Run:
    path: Path
    info: dict            # machine_info["srtrt"]
    when: str             # ISO date-time of the run
    commit: str
    benchmarks: list

    @property
    def device(self) -> str:
        return self.info.get("slug", "unknown")

    @property
    def mode(self) -> str:
        return self.info.get("mode", "full")

    def peaks(self) -> dict[str, float]:
        """dtype -> measured TFLOP/s (the best round: the peak is what the hardware can reach)."""
        return {b["extra_info"]["dtype"]: b["extra_info"]["flop_per_round"] / b["stats"]["min"] / 1e12
                for b in self.benchmarks if b["extra_info"].get("kind") == "peak"}

    def of_kind(self, kind: str) -> list:
        return [b for b in self.benchmarks if b["extra_info"].get("kind") == kind]


def load(path: Path) -> Run | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e}); skipped", file=sys.stderr)
        return None
    info = doc.get("machine_info", {}).get("srtrt")
    if info is None:
        print(f"{path}: not a bench/ run (no srtrt machine info); skipped", file=sys.stderr)
        return None
    commit = doc.get("commit_info", {})
    return Run(path, info, doc.get("datetime", ""), f"{commit.get('id', '')[:10]}{'+dirty' if commit.get('dirty') else ''}",
               doc.get("benchmarks", []))


def _rank(run: Run) -> tuple:
    """Lower is better: a run with throughput cases (not a suite run on its own), the best mode, the newest."""
    return not run.of_kind("throughput"), MODE_PREFERENCE.get(run.mode, 3), _negated(run.when)


def choose(runs: list[Run]) -> list[Run]:
    """One run per device: one with throughput cases, the best mode, then the newest."""
    best: dict[str, Run] = {}
    for run in runs:
        have = best.get(run.device)
        if have is None or _rank(run) < _rank(have):
            best[run.device] = run
    return sorted(best.values(), key=lambda r: (r.info["device"]["kind"] != "cpu", r.device))


def _negated(when: str) -> tuple:
    return tuple(-ord(ch) for ch in when)  # newest first when sorting ascending


# ------------------------------------------------------------------------------- the rows

def rows(run: Run) -> list[dict]:
    """One row per throughput case, with ratios to the same run's eager and bicubic cases."""
    peaks = run.peaks()
    cases = run.of_kind("throughput")
    medians = {(b["extra_info"]["workload"], b["extra_info"]["case"]): b["stats"]["median"] for b in cases}
    out = []
    for b in cases:
        e, seconds = b["extra_info"], b["stats"]["median"]
        eager = medians.get((e["workload"], EAGER_CASE))
        bicubic = medians.get((e["workload"], BICUBIC_CASE))
        peak = peaks.get(e.get("peak_key") or "")
        flop = e.get("model_gflop")
        out.append({
            "case": e["case"], "group": e["group"], "workload": e["workload"], "precision": e["precision"],
            "lr": f"{e['lr_width']}x{e['lr_height']}", "mp_s": e["output_mp"] / seconds, "ms": seconds * 1e3,
            "vs_eager": eager / seconds if eager else None, "vs_bicubic": bicubic / seconds if bicubic else None,
            "peak_pct": 100 * flop * 1e9 / seconds / (peak * 1e12) if flop and peak else None,
            "peak_key": e.get("peak_key"),
            "tiles": e.get("windows"), "core": e.get("core"), "batch": e.get("batch"), "rounds": b["stats"]["rounds"],
        })
    return sorted(out, key=lambda r: (r["workload"] != "2k-output", -r["mp_s"]))


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _tiling(row: dict) -> str:
    if row["group"] == "bicubic":
        return "—"
    if row["core"] is None:
        return "whole image, one call"
    return f"{row['tiles']} × {row['core'] or 'whole'}, {row['batch']}"


def throughput_table(rs: list[dict]) -> str:
    return _table(
        ["case", "workload (LR)", "output MP/s", "ms / image", "× eager fp32", "× bicubic (torch)", "% of peak",
         "tiles × core, batch", "rounds"],
        [[r["case"], f"{r['workload']} ({r['lr']})", _fmt(r["mp_s"], ".3g"), _fmt(r["ms"], ".4g"),
          _fmt(r["vs_eager"], ".2f"), _fmt(r["vs_bicubic"], ".3g"), _fmt(r["peak_pct"], ".1f"),
          _tiling(r),
          str(r["rounds"])] for r in rs])


def pipeline_section(run: Run) -> str:
    parts = []
    for b in run.of_kind("pipeline"):
        e, st = b["extra_info"], b["extra_info"]["stages"]
        parts.append(f"`{e['case']}` ({e['describe']}) on {e['lr_width']}x{e['lr_height']} → "
                     f"{e['output_mp']:.1f} MP PNG{'; ' + e['note'] if e.get('note') else ''}")
        parts.append(_table(
            ["decode", "read (tiles)", "infer", "assemble", "encode (own thread)", "encode only", "runtime wall",
             "file wall", "efficiency (slowest / wall)"],
            [[f"{st['decode']:.2f} s", f"{st['read']:.2f} s", f"{st['infer']:.2f} s", f"{st['assemble']:.2f} s",
              f"{st.get('encode', 0.0):.2f} s", f"{st['encode_only']:.2f} s", f"{st['runtime_wall']:.2f} s",
              f"{st['file_wall']:.2f} s", f"{100 * e['efficiency']:.1f}%"]]))
    encoding = run.of_kind("encoding")
    if encoding:
        parts.append("PNG encoding of a real x4 SR output (`bench/test_encoding.py`):")
        parts.append(_table(["case", "MP/s", "size vs zlib level 6"],
                            [[b["extra_info"]["case"], f"{b['extra_info']['mp_per_s']:.1f}",
                              f"{b['extra_info']['size_vs_zlib6']:.3f}x"] for b in encoding]))
    formats = {(b["extra_info"]["model"], b["extra_info"]["format"]): b for b in run.of_kind("format")}
    models = sorted({m for m, _ in formats}, key=lambda m: m != "tiny")
    if models:
        parts.append("`srtrt run` of the pipeline image to .png and to uncompressed .bmp (`test_png_against_bmp`; "
                     "tiny = 1 block, 16 channels, standing in for a fast engine):")
        lines = []
        for m in models:
            png, bmp = formats.get((m, "png")), formats.get((m, "bmp"))
            wall = {f: b["stats"]["median"] for f, b in (("png", png), ("bmp", bmp)) if b}
            ratio = f"{wall['png'] / wall['bmp']:.2f}x" if len(wall) == 2 else "—"
            lines.append([m, (png or bmp)["extra_info"]["describe"], _fmt(wall.get("png"), ".2f"),
                          _fmt(wall.get("bmp"), ".2f"), ratio])
        parts.append(_table(["model", "backend", ".png wall (s)", ".bmp wall (s)", "png / bmp"], lines))
    ceiling = run.of_kind("pipeline-ceiling")
    if ceiling:
        parts.append("Pipeline ceiling: a network that costs nothing over real SR content (decode excluded; "
                     "tiles + assembly + PNG encode):")
        parts.append(_table(["case", "output MP/s"],
                            [[b["extra_info"]["case"], f"{b['extra_info']['mp_per_s']:.1f}"] for b in ceiling]))
    return "\n\n".join(parts)


def targets(run: Run, rs: list[dict]) -> list[str]:
    lines = []
    peaks = run.peaks()
    gpu = run.info["device"]["kind"] == "cuda"
    best = max((r for r in rs if r["group"] in SRTRT_GROUPS and r["workload"] == "2k-output"),
               key=lambda r: r["mp_s"], default=None)
    if best and best["vs_eager"] is not None:
        want = TARGETS["gpu_vs_eager" if gpu else "cpu_vs_eager"]
        lines.append(f"- best srtrt path on 2K output: `{best['case']}` at {best['vs_eager']:.2f}× eager fp32 "
                     f"(target ≥ {want:g}×: {'met' if best['vs_eager'] >= want else 'not met'}), "
                     f"{_of_peak(best)}")
        if gpu and "fp16" in peaks:
            fp16 = 100 * _flop_rate(run, best) / (peaks["fp16"] * 1e12)
            lines.append(f"- GPU: {fp16:.1f}% of the measured fp16 peak ({peaks['fp16']:.3g} TFLOP/s); "
                         f"target ≥ {TARGETS['gpu_peak_pct']:g}%: {'met' if fp16 >= TARGETS['gpu_peak_pct'] else 'not met'}")
    if not gpu:
        lines += cpu_default_targets(run, rs)
    for b in run.of_kind("pipeline"):
        eff = b["extra_info"]["efficiency"]
        lines.append(f"- pipeline efficiency {100 * eff:.1f}% (target ≥ {100 * TARGETS['pipeline_efficiency']:.0f}%: "
                     f"{'met' if eff >= TARGETS['pipeline_efficiency'] else 'not met'})")
    return lines


def _of_peak(row: dict) -> str:
    if row["peak_pct"] is None:  # `auto` rows, and int8 where no int8 peak was measured: no peak of their kind
        return "no measured matmul peak of its kind to compare with"
    return f"{row['peak_pct']:.1f}% of the measured {row['peak_key']} matmul peak"


def cpu_default_targets(run: Run, rs: list[dict]) -> list[str]:
    """What `srtrt run` picks on this CPU (the pipeline case records it) against eager fp32 and
    torch bf16 on the 2K-output image, and the polyphase tail against the plain network."""
    on_2k = {r["case"]: r for r in rs if r["workload"] == "2k-output"}
    lines = []
    for b in run.of_kind("pipeline")[:1]:
        default = on_2k.get(f"{b['extra_info']['backend']}-{b['extra_info']['precision']}")
        if default is None or default["vs_eager"] is None:
            continue
        want = TARGETS["cpu_default_vs_eager"]
        line = (f"- what `srtrt run` picks here, `{default['case']}`: {default['vs_eager']:.2f}× eager fp32 "
                f"(target ≥ {want:g}×: {'met' if default['vs_eager'] >= want else 'not met'}), "
                f"{_of_peak(default)}")
        torch_bf16 = on_2k.get("torch-bf16")
        if torch_bf16 and default["case"] != "torch-bf16":
            ratio, want = default["mp_s"] / torch_bf16["mp_s"], TARGETS["cpu_default_vs_torch_bf16"]
            line += f"; {ratio:.2f}× torch bf16 (target ≥ {want:g}×: {'met' if ratio >= want else 'not met'})"
        lines.append(line)
    lines += auto_target(run, on_2k)
    ratios = [f"{name} {on_2k[name]['mp_s'] / on_2k[name + '-plain']['mp_s']:.2f}×"
              for name in ("openvino-bf16", "torch-bf16") if name in on_2k and name + "-plain" in on_2k]
    if ratios:
        lines.append(f"- polyphase tail against the plain network, same run: {', '.join(ratios)}")
    return lines


def auto_target(run: Run, on_2k: dict) -> list[str]:
    """`--backend auto`'s pick (timed at start-up, measured.py) against the fastest of the paths
    it could have picked, all run in this run on the 2K-output image."""
    from srtrt.engine.backends import CPU_ORDER

    auto_case = next((b["extra_info"] for b in run.of_kind("throughput")
                      if b["extra_info"]["case"] == "auto" and b["extra_info"]["workload"] == "2k-output"), {})
    picked = auto_case.get("picked")
    candidates = [on_2k[f"{name}-{precision}"] for name, precision in CPU_ORDER if f"{name}-{precision}" in on_2k]
    lines = []
    for b in run.of_kind("auto-start"):
        e, want = b["extra_info"], TARGETS["auto_start_seconds"]
        lines.append(f"- `auto`'s measurement at start-up: {b['stats']['median']:.1f} s (target ≤ {want:g} s: "
                     f"{'met' if b['stats']['median'] <= want else 'not met'}); first use with the exports "
                     f"{e['first_use_seconds']:.1f} s; a second start {e['second_start_seconds']:.2f} s (cached)")
    if "auto" not in on_2k or not picked or not candidates:
        return lines
    fastest, auto = max(candidates, key=lambda r: r["mp_s"]), on_2k["auto"]
    behind = 100 * (fastest["mp_s"] / auto["mp_s"] - 1)
    want = TARGETS["auto_within_pct"]
    if picked == fastest["case"]:
        # The same backend and precision timed twice: the gap between the two rows is the run's noise, not the pick's.
        verdict = (f"the pick is the fastest path (target ≤ {want:g}%: met); its two rows differ by {behind:+.1f}%, "
                   f"run-to-run variation of one path over {auto['rounds']} round(s)")
    else:
        verdict = f"auto {behind:+.1f}% behind (target ≤ {want:g}%: {'met' if behind <= want else 'not met'})"
    lines.append(f"- `auto` picked `{picked}` at {auto['mp_s']:.2f} MP/s; the fastest of {len(candidates)} paths here, "
                 f"`{fastest['case']}`, ran {fastest['mp_s']:.2f} MP/s: {verdict}; "
                 f"{auto['vs_eager'] or 0:.2f}× eager fp32")
    if "auto_reason" in auto_case:
        lines.append(f"- what `auto` measured at its start in this run: {auto_case['auto_reason']}")
    return lines


def _varied_line(e: dict) -> str:
    """The folder against the single 2K image; for `auto`, judged against that image run by what `auto`
    picks for it alone (`srtrt run big.png`): it may pick another path for a folder of small images."""
    line = (f"varied-size folder, `{e['case']}`: {e['folder_mp_per_s']:.3f} output MP/s against "
            f"{e['single_mp_per_s']:.3f} for the single 2K image ({100 * e['ratio']:.0f} %")
    judged = e["ratio"]
    if "ratio_to_single_default" in e:
        judged = e["ratio_to_single_default"]
        line += (f"), {e['single_default_mp_per_s']:.3f} for that image by what `auto` picks for it alone "
                 f"({100 * judged:.0f} %")
    return f"{line}; target ≥ 75 %: {'met' if judged >= 0.75 else 'not met'})"


# One line per measurement of these kinds (bench/test_video.py, test_varied.py, test_serve.py).
WORKLOAD_LINES = {
    "video-share": lambda e: (f"video {e['size'][0]}x{e['size'][1]}, {e['frames']} frames: the pipeline around the "
                              f"network is {100 * e['pipeline_share']:.1f} % of the run"),
    "video-speed": lambda e: (f"video with a free network{f' ({n})' if (n := e.get('network')) else ''}, "
                              f"{e.get('encoder', 'default encoder')}: "
                              f"{e['output_fps']:.1f} fps = {e['realtime']:.2f}x real time"),
    "video-batches": lambda e: (f"video {e['size'][0]}x{e['size'][1]}, {e['backend']}: {e['grouped_fps']:.2f} fps with "
                                f"{e['frames_per_call']} frames a call, {e['one_frame_fps']:.2f} one frame a call "
                                f"({e['speedup']:.2f}x)"),
    "video-runtime": lambda e: (f"video runtime around a free network: {e['ms_per_frame']:.1f} ms a "
                                f"{e['size'][0] * 4}x{e['size'][1] * 4} frame with "
                                f"{e['frames_per_call']} frames a call, {e['ms_one_frame_a_call']:.1f} ms one frame a call"),
    "video-rss": lambda e: (f"video peak RSS {e['peak_short_mb']:.0f} MB -> {e['peak_long_mb']:.0f} MB for a 10x longer "
                            f"clip ({100 * e['growth']:+.1f} %)"),
    "varied": _varied_line,
    "serve": lambda e: (f"`srtrt serve`, {e['clients']} concurrent clients: {e['accepted']} done, {e['refused_429']} "
                        f"answered 429, none lost; {e['jobs_per_s']:.2f} jobs/s, p95 latency {e['p95_latency_s']:.2f} s, "
                        f"server peak RSS {e['peak_rss_mb']:.0f} MiB ({e['warm_rss_mb']:.0f} warm)"),
}


def workloads_section(run: Run, device_runs: list[Run]) -> list[str]:
    """Video, the varied-size folder and `srtrt serve`: a line per measurement, with its target's
    verdict, from the best of the device's runs that has the kind (the section's own run first)."""
    lines = []
    for kind, line in WORKLOAD_LINES.items():
        having = [r for r in device_runs if r.of_kind(kind)]
        source = run if run.of_kind(kind) else min(having, key=lambda r: _rank(r)[1:], default=None)
        for b in source.of_kind(kind) if source else ():
            e = b["extra_info"]
            verdict = f" (target {e['target']}: {'met' if e['met'] else 'not met'})" if "target" in e else ""
            where = "" if source is run else f" (`{source.path.name}`, {source.when[:10]})"
            lines.append(f"- {line(e)}{verdict}{where}")
    return lines


def _flop_rate(run: Run, row: dict) -> float:
    for b in run.of_kind("throughput"):
        e = b["extra_info"]
        if e["case"] == row["case"] and e["workload"] == row["workload"]:
            return e["model_gflop"] * 1e9 / b["stats"]["median"]
    return 0.0


def device_section(run: Run, plot_name: str | None, device_runs: list[Run] = ()) -> str:
    info, rs = run.info, rows(run)
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    peaks = run.peaks()
    out = [f"## {info['describe']}", "",
           f"Run: `{run.path.name}`, {run.when}, commit {run.commit or '?'}, mode **{run.mode}**. {versions}.",
           f"Model: SRResNet x4, 16 blocks, 64 channels ({info['weights']}).", ""]
    if run.mode != "full":
        out += [f"> A {run.mode} run: fewer rounds{' and tiny inputs' if run.mode == 'smoke' else ''}; "
                "use a full run for published numbers.", ""]
    if info.get("part_modes"):  # a merged run (bench/gpu.sh) some of whose parts ran in another mode
        out += ["> Parts run in another mode: " + ", ".join(f"{part} {mode}" for part, mode in info["part_modes"].items())
                + ".", ""]
    if peaks:
        out += ["Measured matmul peak: " + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in sorted(peaks.items())), ""]
    out += ["### Targets", "", *targets(run, rs), ""]
    for group, title in (("throughput", "Throughput"), ("sweeps", "Tile and batch sweeps")):
        chosen = [r for r in rs if (r["group"] in ("tile-sweep", "batch-sweep")) == (group == "sweeps")]
        if chosen:
            out += [f"### {title}", "", throughput_table(chosen), ""]
    if extra := workloads_section(run, list(device_runs)):
        out += ["### Video, a folder of many sizes, serve", "", *extra, ""]
    if any(run.of_kind(k) for k in ("pipeline", "encoding", "pipeline-ceiling", "format")):
        out += ["### `srtrt run` pipeline (busy seconds per stage, last round)", "", pipeline_section(run), ""]
    if plot_name:
        out += [f"![throughput]({plot_name})", ""]
    return "\n".join(out)


HOW_TO_READ = """\
Output MP/s: output megapixels per second (median round). × eager fp32: how many times faster
than the naive PyTorch baseline (NCHW fp32, BatchNorm unfolded, whole image in one call) on the
same workload in the same run; × bicubic: the same against torch bicubic x4 (below 1 means
slower than bicubic). % of peak: the FLOPs the case computed (convolutions only; tiled runs
count their margins) per second, over the measured matmul peak of the dtype it computes in.
"""


def render(runs: list[Run], out_dir: Path, every_run: list[Run] = ()) -> Path:
    """REPORT.md for the chosen `runs`; `every_run` (all given) supplies the suites run on their own."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out_dir)
    sections = [device_section(run, plots.get(run.device), [r for r in every_run if r.device == run.device])
                for run in runs]
    text = "# srtrt benchmarks\n\n" + HOW_TO_READ + "\n" + "\n".join(sections)
    path = out_dir / "REPORT.md"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- plotting

def write_plots(runs: list[Run], out_dir: Path) -> dict[str, str]:
    """throughput.png (every device) and, with several devices, throughput-<device>.png each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return {}
    names = {}
    fig = _figure(plt, runs)
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    for run in runs:
        names[run.device] = "throughput.png"
    if len(runs) > 1:
        for run in runs:
            name = f"throughput-{run.device}.png"
            fig = _figure(plt, [run])
            fig.savefig(out_dir / name, dpi=110)
            plt.close(fig)
            names[run.device] = name
    return names


COLOURS = {"bicubic": "#9e9e9e", "baseline": "#d62728", "srtrt": "#1f77b4", "tile-sweep": "#6baed6",
           "batch-sweep": "#9ecae1"}


def _figure(plt, runs: list[Run]):
    panels = [(run, w) for run in runs
              for w in sorted({r["workload"] for r in rows(run)}, key=lambda w: (w != "2k-output", w))]
    heights = [max(2.0, 0.32 * len([r for r in rows(run) if r["workload"] == w]) + 1.0) for run, w in panels]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, sum(heights) or 3),
                             gridspec_kw={"height_ratios": heights or [1]}, squeeze=False)
    for ax, (run, workload) in zip(axes[:, 0], panels):
        rs = [r for r in rows(run) if r["workload"] == workload][::-1]
        ax.barh([r["case"] for r in rs], [r["mp_s"] for r in rs], color=[COLOURS.get(r["group"], "k") for r in rs])
        ax.set_xscale("log")
        ax.set_xlim(right=max(r["mp_s"] for r in rs) * 4)  # room for the labels
        ax.set_xlabel("output megapixels per second (log scale)")
        ax.set_title(f"{run.info['describe']} — {workload} ({run.mode} run)", fontsize=9)
        for i, r in enumerate(rs):
            if r["vs_eager"] is not None:
                ax.text(r["mp_s"], i, f" {r['vs_eager']:.2f}× eager", va="center", fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------- console

def summary(runs: list[Run]) -> str:
    lines = []
    for run in runs:
        lines.append(f"{run.info['describe']} [{run.mode}]")
        lines.append(f"  {'case':<34} {'workload':<10} {'MP/s':>9} {'ms':>10} {'x eager':>8} {'% peak':>7}")
        for r in rows(run):
            lines.append(f"  {r['case']:<34} {r['workload']:<10} {r['mp_s']:>9.3g} {r['ms']:>10.1f} "
                         f"{_fmt(r['vs_eager'], '.2f'):>8} {_fmt(r['peak_pct'], '.1f'):>7}")
        for b in run.of_kind("pipeline"):
            e = b["extra_info"]
            lines.append(f"  pipeline {e['case']} {e['lr_width']}x{e['lr_height']}: "
                         f"{e['stages']['file_wall']:.2f} s, efficiency {100 * e['efficiency']:.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("json", nargs="*", type=Path, help="benchmark JSON files (default: bench/results/*.json)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for REPORT.md and the PNGs")
    args = parser.parse_args(argv)
    paths = args.json or sorted(RESULTS.glob("*.json"))
    loaded = [r for r in map(load, paths) if r is not None]
    runs = choose(loaded)
    if not runs:
        print(f"no benchmark results in {', '.join(map(str, paths)) or RESULTS}", file=sys.stderr)
        return 1
    report = render(runs, args.out, loaded)
    print(summary(runs))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
