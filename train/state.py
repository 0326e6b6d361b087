"""Resumable training state without pickle: every tensor (models, optimiser moments, RNG) goes
into one safetensors file, everything else (step, config, optimiser hyper-parameters) into JSON."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as tensors_to_bytes

from srtrt import atomic


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
    """Write `path`.safetensors + `path`.json, each atomically (srtrt.atomic); the JSON, which names the step, last."""
    tensors, doc = {}, {"step": step, "optimizers": {}, **extra}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        doc["optimizers"][name] = _flatten_optimizer(f"opt_{name}", opt.state_dict(), tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    path.parent.mkdir(parents=True, exist_ok=True)
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    atomic.write_bytes(weights, tensors_to_bytes(tensors))
    atomic.write_text(sidecar, json.dumps(doc, indent=1))


def load_state(path: Path, modules: dict, optimizers: dict) -> dict:
    """Restore modules, optimisers and the torch RNG in place; returns the JSON document."""
    tensors = load_file(str(path.with_suffix(".safetensors")))
    doc = json.loads(path.with_suffix(".json").read_text())
    for name, module in modules.items():
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(f"opt_{name}", doc["optimizers"][name], tensors))
    torch.set_rng_state(tensors["rng.torch"])
    return doc
