"""A temporary embedded-weights folder: tiny random checkpoints under the embedded names, so
`--model srgan` and friends are tested before (and independently of) the real weights."""
from __future__ import annotations

from pathlib import Path

from srtrt import checkpoint

from run_helpers import save_tiny_model


def install_embedded(monkeypatch, folder: Path, names=("srresnet", "srgan")) -> dict[str, Path]:
    """Point srtrt at `folder` for embedded weights and put a distinct tiny model there per name."""
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", folder)
    return {name: save_tiny_model(folder, checkpoint.EMBEDDED[name], seed=i) for i, name in enumerate(names)}
