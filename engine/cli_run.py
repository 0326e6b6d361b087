"""`srtrt run`: a batch of inputs (files, directories, globs) through one backend.

A bad input costs that input only: one line naming the file and the cause, the batch goes
on, and the exit code is non-zero at the end. Outputs are written under temporary names and
renamed when complete, so an interrupted run never leaves a half-written image.
"""
from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path

from srtrt.errors import SrtrtError

from .imageio import INPUT_SUFFIXES
from .writers import OUTPUT_SUFFIXES


@dataclass
class BatchReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


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


def _progress(total_images: int, quiet: bool):
    from tqdm import tqdm

    enabled = not quiet and sys.stderr.isatty()
    return tqdm(total=0, unit="tile", disable=not enabled, dynamic_ncols=True, leave=False), enabled


def main(args) -> int:
    from srtrt.engine.backends import create_backend
    from srtrt.engine.runtime import TiledUpscaler
    from srtrt.engine.upscale_image import upscale_file

    if args.ray:
        from srtrt.engine.ray_runner import main as ray_main
        return ray_main(args)

    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise SrtrtError(f"no input images match {' '.join(args.inputs)}")
    many = len(inputs) > 1
    if many and args.output and Path(args.output).is_file():
        raise SrtrtError("is a file, but several inputs need an output directory", args.output)
    if many and args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)

    selection = create_backend(args.backend, args.model, args.precision, args.device)
    backend = selection.backend
    if not args.quiet:
        print(f"srtrt: backend {selection.reason}", file=sys.stderr)
    upscaler = TiledUpscaler(backend, core=args.tile, margin=args.margin, batch=args.batch)

    report = BatchReport()
    bar, bar_on = _progress(len(inputs), args.quiet)
    for i, source in enumerate(inputs, 1):
        try:
            destination = output_path(source, args.output, many, backend.scale)
            if destination.resolve() == source.resolve():
                raise SrtrtError("output path is the input itself", destination)
            if destination.exists() and not args.overwrite:
                report.skipped.append(destination)
                if not args.quiet:
                    print(f"srtrt: {destination}: exists, skipped (--overwrite to replace)", file=sys.stderr)
                continue
            bar.reset(total=0)
            bar.set_description(f"[{i}/{len(inputs)}] {source.name}")

            def on_plan(n):
                bar.reset(total=n)

            upscale_file(upscaler, source, destination, overwrite=args.overwrite, max_pixels=args.max_pixels,
                         alpha_mode=args.alpha, on_tile=bar.update, on_plan=on_plan)
            report.done.append(destination)
            if not args.quiet:
                (bar.write if bar_on else print)(f"srtrt: {source} -> {destination}")
        except SrtrtError as e:
            report.failed.append((source, str(e)))
            (bar.write if bar_on else lambda m: print(m, file=sys.stderr))(f"srtrt: {e}")
    bar.close()
    if many and not args.quiet:
        print(f"srtrt: {len(report.done)} written, {len(report.skipped)} skipped, {len(report.failed)} failed",
              file=sys.stderr)
    return report.exit_code
