"""Where a command that writes one file may write it: not onto a folder, not over a file the
command reads (its model, the model's sidecar, its photos), not over any other file without
--overwrite. `srtrt run` has its own rules for images and videos (engine/batch/files.py); this
is for export, build, compare and interpolate.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import atomic
from .errors import CannotWrite, SrtrtError


def check_output_file(output: str | os.PathLike, inputs=(), flag: str = "-o") -> Path:
    """`output` as a Path, or one SrtrtError line before any work: a folder, one of `inputs`, or a
    file where a folder above it would be."""
    out = Path(output)
    if os.path.isdir(out) or str(output).endswith(os.sep):
        raise SrtrtError(f"is a folder: {flag} names the file to write", out)
    if len(os.fsencode(out.name)) > 255:  # os.path's tests below say False for it; its writer would fail late
        raise SrtrtError("file name too long", out)
    # os.path's tests: on Python 3.11 Path's raise for a folder that may not be entered
    for folder in out.parents:  # the nearest that exists must be a folder (the missing ones are made)
        if os.path.lexists(folder):
            if not os.path.isdir(folder):
                raise SrtrtError(f"{folder} is a file, not a folder ({flag} writes into it)", out)
            break
    for source in inputs:
        if source is not None and same_file(out, source):
            raise SrtrtError(f"is an input of this command ({source}): {flag} would write over it; "
                             "name another file", out)
    return out


EXISTS = "output already exists (use --overwrite to replace it)"


def check_overwrite(output: str | os.PathLike, overwrite: bool) -> None:
    """One SrtrtError line if `output` is there already and --overwrite was not given (as `srtrt run`)."""
    if not overwrite and os.path.lexists(output):
        raise SrtrtError(EXISTS, output)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two names reach one file (links and relative names included); a missing file is
    compared by its resolved name."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_writable_folder(output: str | os.PathLike) -> None:
    """One line before a slow command's work if `output`'s folder cannot be made or take a file
    (/proc, a read-only mount); a probe file is made and removed."""
    output = Path(output)
    probe = atomic.temp_name(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:  # a file where the folder would be is refused before (check_output_file)
        raise CannotWrite.of(e, output) from None
