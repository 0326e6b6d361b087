"""Checkpoint format: `NAME.safetensors` (weights) beside `NAME.json` (architecture, config,
provenance, eval scores). Loading never unpickles, and every failure is one SrtrtError line."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import registry
from .errors import SrtrtError
from .sidecar import read_versioned_json

FORMAT = "srtrt-checkpoint"
VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "srresnet_x4.safetensors"


@dataclass
class Checkpoint:
    architecture: str
    config: object
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # training provenance, eval scores, anything descriptive
    sha256: str = ""

    def build(self) -> torch.nn.Module:
        """The generator with these weights, in eval mode on the CPU."""
        model = registry.get(self.architecture).build(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    @property
    def radius(self) -> int:
        return registry.get(self.architecture).radius(self.config)


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save(path: str | os.PathLike, model: torch.nn.Module, architecture: str, config, meta: dict | None = None) -> Path:
    """Write weights and config atomically (temporary names, then rename)."""
    weights, sidecar = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    doc = {"format": FORMAT, "version": VERSION, "architecture": architecture,
           "config": config.to_dict(), **(meta or {})}
    tmp_w, tmp_j = weights.with_name(weights.name + ".tmp"), sidecar.with_name(sidecar.name + ".tmp")
    save_file(tensors, str(tmp_w))
    tmp_j.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp_w, weights)
    os.replace(tmp_j, sidecar)
    return weights


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: str | os.PathLike | None = None) -> Checkpoint:
    """Read and validate a checkpoint; `None` means the embedded default model."""
    weights, sidecar = _paths(path if path is not None else DEFAULT_WEIGHTS)
    for p in (weights, sidecar):
        if not p.is_file():
            raise SrtrtError("checkpoint file not found (a checkpoint is NAME.safetensors + NAME.json)", p)
    doc = read_versioned_json(sidecar, FORMAT, VERSION, "checkpoint config")
    try:
        arch = registry.get(doc.get("architecture"))
        config = arch.make_config(doc.get("config") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise SrtrtError(f"bad architecture or config: {e}", sidecar) from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise SrtrtError(f"corrupt or truncated weights ({str(e).splitlines()[0]})", weights) from None

    expected = arch.build(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SrtrtError(f"weights do not match the config ({what}{' ...' if len(missing or unexpected) > 3 else ''})", weights)
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise SrtrtError(f"weights do not match the config ({k}: {tuple(state[k].shape)} vs {tuple(v.shape)})", weights)
        if state[k].dtype.is_floating_point != v.dtype.is_floating_point:
            raise SrtrtError(f"weights do not match the config ({k} has dtype {state[k].dtype})", weights)
        state[k] = state[k].to(v.dtype)
    meta = {k: v for k, v in doc.items() if k not in ("format", "version", "architecture", "config")}
    return Checkpoint(doc["architecture"], config, state, meta, file_sha256(weights))
