"""Resumable training state without pickle: every tensor (models, optimiser moments, RNG) goes
into one safetensors file, everything else (step, config, optimiser hyper-parameters) into JSON."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

from srtrt import atomic
from srtrt.errors import SrtrtError

FRESH = "--no-resume starts fresh"


def _flatten_optimizer(prefix: str, sd: dict, tensors: dict) -> dict:
    plain_state = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(idx), {})[name] = value
    return {"param_groups": sd["param_groups"], "plain_state": plain_state}


def _unflatten_optimizer(prefix: str, doc: dict, tensors: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, slots in doc["plain_state"].items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": doc["param_groups"]}


def save_state(path: Path, step: int, modules: dict, optimizers: dict, extra: dict) -> None:
    """Write `path`.safetensors + `path`.json, each atomically (srtrt.atomic); the JSON, which names the step, last.
    The JSON records the tensors file's sha256: a crash between the two renames leaves a pair that
    load_state refuses, never new weights resumed as an old step."""
    tensors, doc = {}, {"step": step, "optimizers": {}, **extra}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        doc["optimizers"][name] = _flatten_optimizer(f"opt_{name}", opt.state_dict(), tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    path.parent.mkdir(parents=True, exist_ok=True)
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    data = tensors_to_bytes(tensors)
    doc["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    atomic.write_or_refuse(weights, data, "training state")
    atomic.write_or_refuse(sidecar, json.dumps(doc, indent=1), "training state")


def load_state(path: Path, modules: dict, optimizers: dict) -> dict:
    """Restore modules, optimisers and the torch RNG in place; returns the JSON document.
    A damaged or mismatched pair (a full disk, a power cut) is one line naming the folder."""
    tensors, doc = _read_pair(path)
    try:
        step = doc["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step {step!r} is not a step number")
        for name, module in modules.items():
            module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        for name, opt in optimizers.items():
            opt.load_state_dict(_unflatten_optimizer(f"opt_{name}", doc["optimizers"][name], tensors))
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        cause = f"lacks {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise SrtrtError(f"damaged training state ({cause}); {FRESH}", path.parent) from None
    return doc


def _read_pair(path: Path) -> tuple[dict, dict]:
    """The tensors and the JSON document, read whole and checked to be one save's pair."""
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    try:
        data = weights.read_bytes()
        doc = json.loads(sidecar.read_text())
        tensors = tensors_from_bytes(data)
    except (OSError, ValueError, RecursionError, SafetensorError) as e:
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        name = e.filename if isinstance(e, OSError) and e.filename else (
            sidecar if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) else weights)
        raise SrtrtError(f"unreadable training state ({Path(name).name}: {cause}); {FRESH}", path.parent) from None
    if not isinstance(doc, dict):
        raise SrtrtError(f"damaged training state ({sidecar.name} is not a JSON object); {FRESH}", path.parent)
    recorded = doc.get("tensors_sha256")  # absent in states saved before it was recorded
    if recorded is not None and recorded != hashlib.sha256(data).hexdigest():
        raise SrtrtError(f"{weights.name} is not the one {sidecar.name} (step {doc.get('step')}) was saved with "
                         f"(a crash between their writes); {FRESH}", path.parent)
    return tensors, doc
