"""The models a client may name: the embedded ones, and model files found in `--models DIR`.

A client names a model by the id this listing gives it; the id is looked up in a fresh listing,
never joined to a path, so no request can make the server read a file outside `--models DIR`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from srtrt import checkpoint, community
from srtrt.errors import SrtrtError


@dataclass(frozen=True)
class ModelEntry:
    id: str            # what a job names: an embedded name, or a file name in --models DIR
    kind: str          # embedded | checkpoint (srtrt's own, with its .json) | community (read by spandrel)
    source: str | None = None  # what srtrt.load_model is given; None = the default model


def list_models(models_dir: Path | None) -> list[ModelEntry]:
    """Embedded models first (the default first), then the folder's model files by name."""
    entries = [ModelEntry(name, "embedded", name) for name in checkpoint.embedded_models()]
    if models_dir is None:
        return entries
    folder = Path(models_dir).resolve()
    try:
        paths = sorted(folder.iterdir())
    except OSError:  # removed or renamed while serving: no folder models, the embedded ones still work
        return entries
    for path in paths:
        # a link leading out of the folder is not offered: only files in --models DIR are ever read
        if path.suffix.lower() in community.SUFFIXES and _nameable(path) and path.is_file() \
                and path.resolve().parent == folder:
            kind = "community" if community.is_community_file(path) else "checkpoint"
            entries.append(ModelEntry(path.name, kind, str(path)))
    return entries


def _nameable(path: Path) -> bool:
    """A name a client can send back: not bytes that are not UTF-8 (Python keeps them as surrogates, which
    JSON cannot carry)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve(model_id: str | None, models_dir: Path | None) -> ModelEntry:
    """The entry a job names (None or "" = the default model); one line if there is none."""
    available = list_models(models_dir)
    if not model_id:
        return available[0] if available else ModelEntry("default", "embedded", None)
    for entry in available:
        if entry.id == model_id:
            return entry
    names = ", ".join(e.id for e in available) or "none"
    raise SrtrtError(f"unknown model {model_id!r} (available: {names})")
