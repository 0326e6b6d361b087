"""Engine cache: TensorRT plans with a JSON sidecar, never loaded blindly.

A plan only runs on the GPU model and TensorRT version that built it, for the model, precision
and shape profile it was built from. Each plan `NAME.plan` has a sidecar `NAME.json` holding
the key it was built for and the plan's sha256, so a plan copied from another machine, built
by another TensorRT, or cut short by a full disk is refused with one line instead of crashing
(or silently computing garbage) inside TensorRT.

Location: `$SRTRT_CACHE/engines` if SRTRT_CACHE is set (the root the other srtrt caches use
too), else `~/.cache/srtrt/engines`. The builder keeps its timing
caches in the same folder (one per GPU and TensorRT version).

Pure Python: nothing here imports TensorRT or needs a GPU (`gpu_identity` asks torch lazily).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from srtrt import cache as srtrt_cache
from srtrt.checkpoint import file_sha256
from srtrt.errors import SrtrtError
from srtrt.sidecar import read_versioned_json

FORMAT = "srtrt-engine"
VERSION = 1
PLUGIN_MODES = ("none", "jit", "aot")
PRECISIONS = ("fp32", "fp16")
REBUILD = "run `srtrt build` again"

Shape = tuple  # (N, C, H, W)


def cache_dir() -> Path:
    """The engine cache folder (not created here): `engines/` under srtrt's cache root."""
    return srtrt_cache.cache_dir("engines")


# ---------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile for the input tensor: NCHW shapes."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self):
        for name in ("min", "opt", "max"):
            shape = tuple(int(d) for d in getattr(self, name))
            if len(shape) != 4 or min(shape) < 1:
                raise ValueError(f"profile {name} shape must be 4 positive dims (N, C, H, W), got {shape}")
            object.__setattr__(self, name, shape)
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError(f"profile shapes must satisfy min <= opt <= max, got {self.min} {self.opt} {self.max}")

    @property
    def max_batch(self) -> int:
        return self.max[0]

    @property
    def window(self) -> tuple[int, int]:
        """The largest (height, width) the profile accepts: the runtime's window."""
        return self.max[2], self.max[3]

    def accepts(self, shape: Shape) -> bool:
        shape = tuple(int(d) for d in shape)
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max))

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def __str__(self) -> str:
        n, _, h, w = self.max
        return f"batch <= {n}, window {h}x{w}"


def _hw(window) -> tuple[int, int]:
    if isinstance(window, int):
        return window, window
    h, w = window
    return int(h), int(w)


def profile_for(window, max_batch: int, *, channels: int = 3, min_side: int = 1,
                opt_batch: int | None = None) -> Profile:
    """The profile for tiles of `window` (int or (h, w)) LR pixels in batches of up to `max_batch`.

    opt = max = the full window at `opt_batch` (default: `max_batch`): the tiled runtime sends
    whole windows in full batches, so TensorRT should pick kernels for exactly that shape.
    min = one tile of `min_side` pixels, so the last partial batch and images smaller than one
    window (whose windows are the image itself) run on the same engine.
    """
    h, w = _hw(window)
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    if h < 1 or w < 1:
        raise ValueError(f"window must be positive, got {h}x{w}")
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt batch must be in [1, {max_batch}], got {opt_batch}")
    lo_h, lo_w = min(min_side, h), min(min_side, w)
    return Profile((1, channels, lo_h, lo_w), (opt_batch, channels, h, w), (max_batch, channels, h, w))


def sm(compute_capability) -> str:
    major, minor = compute_capability
    return f"sm_{int(major)}{int(minor)}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. Two keys are equal exactly when one plan serves both."""

    model_sha256: str
    precision: str                       # fp32 | fp16 (the ONNX graph's dtypes)
    profile: Profile
    plugin: str                          # none | jit | aot
    gpu_name: str                        # torch.cuda.get_device_name()
    compute_capability: tuple[int, int]  # torch.cuda.get_device_capability()
    trt_version: str                     # tensorrt.__version__

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.plugin not in PLUGIN_MODES:
            raise ValueError(f"plugin must be one of {PLUGIN_MODES}, not {self.plugin!r}")
        if not self.model_sha256:
            raise ValueError("model_sha256 must not be empty")
        object.__setattr__(self, "compute_capability", tuple(int(v) for v in self.compute_capability))

    @property
    def sm(self) -> str:
        return sm(self.compute_capability)

    @property
    def gpu(self) -> str:
        """'NVIDIA H200 (sm_90)'."""
        return f"{self.gpu_name} ({self.sm})"

    def to_dict(self) -> dict:
        return {"model_sha256": self.model_sha256, "precision": self.precision, "profile": self.profile.to_dict(),
                "plugin": self.plugin, "gpu_name": self.gpu_name,
                "compute_capability": list(self.compute_capability), "trt_version": self.trt_version}

    @classmethod
    def from_dict(cls, d: dict) -> "EngineKey":
        return cls(d["model_sha256"], d["precision"], Profile.from_dict(d["profile"]), d["plugin"], d["gpu_name"],
                   tuple(d["compute_capability"]), d["trt_version"])

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def stem(self) -> str:
        """A readable, unique file stem: model, precision, plugin, profile, GPU, TensorRT, digest."""
        n, _, h, w = self.profile.max
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-") or "gpu"
        trt = re.sub(r"[^0-9A-Za-z.]+", "-", self.trt_version)
        return (f"{self.model_sha256[:12]}-{self.precision}-{self.plugin}-b{n}-{h}x{w}-{gpu}-"
                f"{self.sm.replace('_', '')}-trt{trt}-{self.digest()[:8]}")


def gpu_identity(device=None) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor)) of a CUDA device, through torch. Raises SrtrtError without a GPU."""
    import torch

    if not torch.cuda.is_available():
        raise SrtrtError("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    index = torch.device(device if device is not None else "cuda").index
    index = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


# ---------------------------------------------------------------------------------------------
# files


def plan_path(key: EngineKey, root: Path | None = None) -> Path:
    return (root or cache_dir()) / f"{key.stem()}.plan"


def sidecar_path(plan: Path) -> Path:
    return Path(plan).with_suffix(".json")


def timing_cache_path(gpu_name: str, compute_capability, trt_version: str, root: Path | None = None) -> Path:
    """Where the builder keeps the timing cache for one GPU model and TensorRT version."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return (root or cache_dir()) / f"timing-{gpu}-{sm(compute_capability).replace('_', '')}-trt{trt_version}.cache"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_plan(path: Path, key: EngineKey, plan: bytes, info: dict | None = None) -> Path:
    """Write `plan` and its sidecar at `path` (temporary names, then rename; sidecar last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = bytes(plan)
    doc = {"format": FORMAT, "version": VERSION, "key": key.to_dict(),
           "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
    side = sidecar_path(path)
    if side.exists():
        side.unlink()  # a plan is never left beside a sidecar that describes another plan
    _atomic_write(path, plan)
    _atomic_write(side, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def store(key: EngineKey, plan: bytes, info: dict | None = None, root: Path | None = None) -> Path:
    """Put a freshly built plan into the cache; returns its path. `info` goes into the sidecar."""
    return write_plan(plan_path(key, root), key, plan, info)


def read_sidecar(plan: Path) -> dict:
    """The sidecar of a plan, checked for format; SrtrtError if missing or unreadable."""
    plan = Path(plan)
    side = sidecar_path(plan)
    if not side.is_file():
        raise SrtrtError(f"engine plan has no sidecar {side.name}, so what it was built for is unknown: {REBUILD}", plan)
    doc = read_versioned_json(side, FORMAT, VERSION, "engine sidecar", REBUILD)
    try:
        doc["key"] = EngineKey.from_dict(doc["key"])
    except (KeyError, TypeError, ValueError) as e:
        raise SrtrtError(f"engine sidecar has a bad key ({e.__class__.__name__}: {e}): {REBUILD}", side) from None
    return doc


def check_key(built: EngineKey, wanted: EngineKey, plan: Path | None = None) -> None:
    """Raise SrtrtError naming the first thing that differs (GPU, TensorRT, model, precision, ...)."""
    if (built.gpu_name, built.compute_capability) != (wanted.gpu_name, wanted.compute_capability):
        raise SrtrtError(f"engine was built for {built.gpu}, this GPU is {wanted.gpu}: {REBUILD}", plan)
    if built.trt_version != wanted.trt_version:
        raise SrtrtError(f"engine was built with TensorRT {built.trt_version}, this is TensorRT {wanted.trt_version}: "
                         f"{REBUILD}", plan)
    if built.model_sha256 != wanted.model_sha256:
        raise SrtrtError(f"engine was built for model {built.model_sha256[:12]}, not {wanted.model_sha256[:12]}: "
                         f"run `srtrt build` for this model", plan)
    if built.precision != wanted.precision:
        raise SrtrtError(f"engine is {built.precision}, {wanted.precision} was asked: "
                         f"run `srtrt build --precision {wanted.precision}`", plan)
    if built.profile != wanted.profile:
        raise SrtrtError(f"engine profile is {built.profile} (min {built.profile.min}), wanted {wanted.profile} "
                         f"(min {wanted.profile.min}): run `srtrt build` with this tile and batch", plan)
    if built.plugin != wanted.plugin:
        raise SrtrtError(f"engine plugin mode is {built.plugin}, wanted {wanted.plugin}: {REBUILD}", plan)


def check_plan_file(plan: Path, doc: dict) -> None:
    """Size and sha256 of the plan against its sidecar: catches truncated and corrupted plans."""
    plan = Path(plan)
    if not plan.is_file():
        raise SrtrtError("engine plan not found", plan)
    size = plan.stat().st_size
    if size != doc.get("plan_bytes"):
        raise SrtrtError(f"engine plan is truncated or corrupt ({size} bytes, the sidecar says {doc.get('plan_bytes')}): "
                         f"{REBUILD}", plan)
    if file_sha256(plan) != doc.get("plan_sha256"):
        raise SrtrtError(f"engine plan is corrupt (sha256 differs from its sidecar): {REBUILD}", plan)


def validate(plan: Path, wanted: EngineKey | None = None) -> dict:
    """Check a plan for loading: sidecar readable, key as wanted (when given), bytes intact.

    Returns the sidecar (with `doc["key"]` an EngineKey). Every refusal is one SrtrtError line.
    """
    plan = Path(plan)
    if not plan.is_file():
        raise SrtrtError("engine plan not found", plan)
    doc = read_sidecar(plan)
    if wanted is not None:
        check_key(doc["key"], wanted, plan)
    check_plan_file(plan, doc)
    return doc


def lookup(key: EngineKey, root: Path | None = None) -> Path | None:
    """The cached plan for exactly `key`, validated; None when there is none.

    A plan that is present but fails validation (corrupt, truncated, bad sidecar) raises
    SrtrtError: it is never returned.
    """
    path = plan_path(key, root)
    if not path.is_file():
        return None
    validate(path, key)
    return path


def entries(root: Path | None = None) -> list[tuple[Path, dict]]:
    """(plan, sidecar) for every plan in the cache with a readable sidecar, newest first."""
    root = root or cache_dir()
    found = []
    for plan in root.glob("*.plan"):
        try:
            found.append((plan, read_sidecar(plan)))
        except SrtrtError:
            continue
    found.sort(key=lambda e: e[0].stat().st_mtime, reverse=True)
    return found


def find(model_sha256: str, precision: str, gpu_name: str, compute_capability, trt_version: str, *,
         window=None, max_batch: int | None = None, plugin: str | None = None, root: Path | None = None) -> Path:
    """The cached plan to run this model at this precision on this GPU and TensorRT.

    A plan qualifies when model, precision, GPU and TensorRT match and, when given, its
    profile's largest shape is exactly `window` (int or (h, w)), its batch is at least
    `max_batch` and its plugin mode is `plugin`. Among those the newest plan wins (with a
    window given: the smallest sufficient batch, then the newest). The plan is validated before it is returned. Raises SrtrtError
    with the reason when none qualifies; plans only for another GPU or TensorRT are named as such.
    """
    cc = tuple(int(v) for v in compute_capability)
    hw = _hw(window) if window is not None else None
    here = f"{gpu_name} ({sm(cc)})"
    same_model, candidates = [], []
    for plan, doc in entries(root):  # newest first
        k = doc["key"]
        if k.model_sha256 != model_sha256 or k.precision != precision:
            continue
        same_model.append(k)
        if (k.gpu_name, k.compute_capability, k.trt_version) != (gpu_name, cc, trt_version):
            continue
        if hw is not None and k.profile.window != hw:
            continue
        if max_batch is not None and k.profile.max_batch < max_batch:
            continue
        if plugin is not None and k.plugin != plugin:
            continue
        candidates.append((k.profile.max_batch if max_batch is not None and hw is not None else 0, plan, k))
    if candidates:
        candidates.sort(key=lambda c: c[0])  # stable: newest first within a batch size
        _, plan, k = candidates[0]
        validate(plan, k)
        return plan
    want = ", ".join([precision] + ([f"window {hw[0]}x{hw[1]}"] if hw else [])
                     + ([f"batch {max_batch}"] if max_batch is not None else [])
                     + ([f"plugin {plugin}"] if plugin is not None else []))
    for k in same_model:
        if (k.gpu_name, k.compute_capability) != (gpu_name, cc):
            raise SrtrtError(f"engine was built for {k.gpu}, this GPU is {here}: {REBUILD}")
    for k in same_model:
        if k.trt_version != trt_version:
            raise SrtrtError(f"engine was built with TensorRT {k.trt_version}, this is TensorRT {trt_version}: {REBUILD}")
    if same_model:
        have = "; ".join(sorted({f"{k.profile}, plugin {k.plugin}" for k in same_model}))
        raise SrtrtError(f"no cached TensorRT engine for this model with {want} on {here} (cached: {have}): "
                         f"run `srtrt build` with this tile and batch")
    raise SrtrtError(f"no cached TensorRT engine for model {model_sha256[:12]} ({want}) on {here}: "
                     f"run `srtrt build --precision {precision}`")
