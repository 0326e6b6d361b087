"""Checkpoint format: `NAME.safetensors` (weights) beside `NAME.json` (architecture, config,
provenance, eval scores). Loading never unpickles, and every failure is one SrtrtError line.

Where a model comes from is decided here and nowhere else: `load(model)` takes a checkpoint
path, an embedded model's name (`srresnet`, the default, or `srgan`; files in `WEIGHTS_DIR`),
or None for the default. A bare embedded name always means the embedded model; a file of that
name in the working folder is reached as `./srgan` or `srgan.safetensors`. The CLI, the
backends and the Python API pass the user's string through to here unchanged."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as tensors_to_bytes

from . import atomic, registry
from .errors import SrtrtError
from .sidecar import read_versioned_json

FORMAT = "srtrt-checkpoint"
VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED = {"srresnet": "srresnet_x4", "srgan": "srgan_x4"}  # name -> file stem in WEIGHTS_DIR
DEFAULT_MODEL = "srresnet"
DEFAULT_WEIGHTS = WEIGHTS_DIR / f"{EMBEDDED[DEFAULT_MODEL]}.safetensors"
WEIGHTS_SHA256 = "weights_sha256"  # the sidecar's record of the weights file it was saved with


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
    """(weights, sidecar) of the checkpoint `path` names. Only a model file's own suffix is replaced:
    the rest of a name is kept, dots and all (blend_0.3 is blend_0.3.safetensors, not blend_0's)."""
    p = Path(path)
    if not p.name:  # "", ".", "/": no file name to find a checkpoint by
        raise SrtrtError("names no model file (empty, or a folder)", os.fspath(path) or '""')
    if p.suffix.lower() in (".json", *_community_suffixes()):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def model_files(model: str | os.PathLike | None) -> list[Path]:
    """The files a `--model` argument reads: a community file, or a checkpoint's weights and sidecar
    (an embedded name: the packaged ones). What commands must never write their outputs over."""
    if model is None or _is_embedded_name(model):
        model = embedded_path(model or DEFAULT_MODEL)
    return [Path(model), *_paths(model)]


def embedded_path(name: str) -> Path:
    """The weights file of an embedded model (which may not be installed)."""
    return WEIGHTS_DIR / f"{EMBEDDED[name]}.safetensors"


def embedded_models() -> list[str]:
    """Names of the embedded models whose weights are installed, the default first."""
    return [name for name in EMBEDDED if all(p.is_file() for p in _paths(embedded_path(name)))]


def _is_embedded_name(model) -> bool:
    return isinstance(model, str) and model in EMBEDDED


def names_embedded(model: str | os.PathLike | None) -> bool:
    """Whether `model` is one of the packaged models by default or by name (not by its files' path)."""
    return model is None or _is_embedded_name(model)


def model_label(model: str | os.PathLike | None) -> str:
    """A short name for tables and panels: the embedded name, or the checkpoint's file stem."""
    if model is None:
        return DEFAULT_MODEL
    if _is_embedded_name(model):
        return model
    return _paths(model)[0].stem


def _community_suffixes() -> tuple[str, ...]:
    from .community import SUFFIXES  # community reads this module's format name: imported when asked

    return SUFFIXES


def resolve(model: str | os.PathLike | None) -> Path:
    """The weights file `model` names: None (the default), an embedded name, or a checkpoint path."""
    if model is None:
        model = DEFAULT_MODEL
    if _is_embedded_name(model):
        weights = embedded_path(model)
        if not weights.is_file():
            raise SrtrtError(f"the embedded {model} weights are not installed ({weights} is missing); "
                             f"installed: {', '.join(embedded_models()) or 'none'}", model)
        return weights
    weights, sidecar = _paths(model)
    given = Path(model)
    if given.is_dir():
        raise SrtrtError("is a folder, not a model file", model)
    if os.path.lexists(given) and not given.is_file():  # a FIFO, a device, a link loop: not "not found"
        from srtrt import bounded_read

        try:
            kind = bounded_read.kind_of(os.stat(given).st_mode)
        except FileNotFoundError:  # a dangling link: not found, as below
            kind = None
        except OSError as e:
            raise SrtrtError(f"cannot read the model file ({e.strerror or e})", model) from None
        if kind is not None:
            raise SrtrtError(f"is {kind}, not a model file", model)
    if given.is_file() and given.suffix.lower() not in (".json", *_community_suffixes()):
        raise SrtrtError(f"not a model file srtrt reads ({given.suffix or 'no suffix'}; community models are "
                         f"{', '.join(_community_suffixes())} files, srtrt's own NAME.safetensors + NAME.json)", model)
    if not weights.is_file() and not sidecar.is_file():
        raise SrtrtError("checkpoint file not found (a checkpoint is NAME.safetensors + NAME.json, a community "
                         "model one .safetensors/.pth/.ckpt/.pt file; "
                         f"embedded models: {', '.join(embedded_models()) or 'none installed'})", model)
    return weights


def save(path: str | os.PathLike, model: torch.nn.Module, architecture: str, config, meta: dict | None = None) -> Path:
    """Write weights and config, each atomically (srtrt.atomic: unique temporary name, then rename)."""
    weights, sidecar = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = tensors_to_bytes(tensors)
    doc = {"format": FORMAT, "version": VERSION, "architecture": architecture,
           "config": config.to_dict(), **(meta or {}), WEIGHTS_SHA256: hashlib.sha256(data).hexdigest()}
    # Weights first: a crash between the two renames leaves new weights beside the old sidecar,
    # which load() refuses by the sha256 the sidecar records, never a sidecar for absent weights.
    atomic.write_or_refuse(weights, data, "checkpoint")
    atomic.write_or_refuse(sidecar, json.dumps(doc, indent=2) + "\n", "checkpoint")
    return weights


def update_meta(model: str | os.PathLike | None, key: str, value) -> Path:
    """Set one descriptive entry of a checkpoint's sidecar, atomically; the weights (and so the
    sha256 the caches and the quality guard key it by) stay as they are."""
    _, sidecar = _paths(resolve(model))
    doc = read_versioned_json(sidecar, FORMAT, VERSION, "checkpoint config")
    doc[key] = value
    atomic.write_or_refuse(sidecar, json.dumps(doc, indent=2) + "\n", "checkpoint config")
    return sidecar


def sidecar_of(model: str | os.PathLike | None) -> Path:
    """The NAME.json a checkpoint's descriptive entries go to (update_meta)."""
    return _paths(resolve(model))[1]


def refuse_lost_weights(state, path) -> None:
    """One line for weights that hold NaN or infinite values: a training run that diverged saved
    them, and every output would be NaN, written as black. (A community model is tried on a test
    image when it is read: community.load.)"""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SrtrtError(f"the weights hold NaN or infinite values ({name}): saved by a training run that "
                             "diverged; no image can be upscaled with them", path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(model: str | os.PathLike | None = None) -> Checkpoint:
    """Read and validate a checkpoint: a path, an embedded model's name, or None (the default model)."""
    weights, sidecar = _paths(resolve(model))
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

    refuse_lost_weights(state, weights)
    sha256 = file_sha256(weights)
    if doc.get(WEIGHTS_SHA256, sha256) != sha256:  # sidecars saved before it was recorded have none
        raise SrtrtError(f"the weights are not the ones {sidecar.name} was saved with (a crash between "
                         "their writes, or one of the pair replaced): save or copy the pair again", weights)
    expected = arch.build(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        more = " ..." if len(missing or unexpected) > 3 else ""
        raise SrtrtError(f"weights do not match the config ({what}{more})", weights)
    for k, v in expected.items():
        if state[k].shape != v.shape:
            shapes = f"{tuple(state[k].shape)} vs {tuple(v.shape)}"
            raise SrtrtError(f"weights do not match the config ({k}: {shapes})", weights)
        if state[k].dtype.is_floating_point != v.dtype.is_floating_point:
            raise SrtrtError(f"weights do not match the config ({k} has dtype {state[k].dtype})", weights)
        state[k] = state[k].to(v.dtype)
    meta = {k: v for k, v in doc.items() if k not in ("format", "version", "architecture", "config", WEIGHTS_SHA256)}
    return Checkpoint(doc["architecture"], config, state, meta, sha256)
