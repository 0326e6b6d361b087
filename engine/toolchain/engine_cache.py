"""Engine cache: TensorRT and TensorRT-RTX plans with a JSON sidecar, never loaded blindly.

A TensorRT plan only runs on the GPU model and TensorRT version that built it; a TensorRT-RTX
plan runs on the compute capabilities it was built for (with or without a GPU) and that
TensorRT-RTX version. Both are for one model, precision, shape profile and tile margin. Each
plan `NAME.plan` has a sidecar `NAME.json` holding the key it was built for and the plan's
sha256, so a plan copied from another machine, built by another TensorRT, or cut short by a
full disk is refused with one line instead of crashing (or silently computing garbage) inside
TensorRT.

Location: `engines` under srtrt.cache.cache_root() (SRTRT_CACHE, else $XDG_CACHE_HOME/srtrt, else
~/.cache/srtrt: the root the other srtrt caches use too). The TensorRT builder keeps its timing caches in the same
folder (one per GPU and TensorRT version); a TensorRT-RTX plan's runtime (JIT) caches lie
beside it (one per GPU model).

Pure Python: nothing here imports TensorRT or needs a GPU (`gpu_identity` asks torch lazily).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from srtrt import atomic
from srtrt import cache as srtrt_cache
from srtrt.checkpoint import file_sha256
from srtrt.errors import CannotWrite, SrtrtError
from srtrt.sidecar import read_versioned_json

FORMAT = "srtrt-engine"
VERSION = 2  # 2: flavour, target compute capabilities and margin in the key
PLUGIN_MODES = ("none", "jit", "aot")
PRECISIONS = ("fp32", "fp16")
FLAVOURS = {"trt": "TensorRT", "rtx": "TensorRT-RTX"}  # key.flavour -> what users read
# TensorRT-RTX 1.7's build targets (its ComputeCapability enum; tests/test_tensorrt_rtx.py
# checks the installed module), and the set a build without --cc covers, per NVIDIA's
# "CPU-only AOT" page: 8.0, 8.6, 8.9, 12.0 "and later" (12.1 taken as later). Turing (7.5)
# needs an explicit target; Hopper (9.0) and data-center Blackwell (10.x) are not targets.
RTX_TARGETS = ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1))
RTX_DEFAULT_TARGETS = ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))
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
    def from_dict(cls, d: dict) -> Profile:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def __str__(self) -> str:
        n, _, h, w = self.max
        only = " only" if self.min[2:] == self.max[2:] else ""
        return f"batch <= {n}, window {h}x{w}{only}"


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


def _slug(text: str, fallback: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or fallback


@dataclass(frozen=True)
class EngineKey:
    """Everything a cached plan is for. Two keys are equal exactly when one cache entry serves both.

    TensorRT (flavour "trt") builds on the GPU that will run the plan: `gpu_name` and the one
    entry of `compute_capabilities` are that GPU's. TensorRT-RTX ("rtx") builds for compute
    capabilities, with or without a GPU: `gpu_name` is "" and `compute_capabilities` are the
    targets, empty for TensorRT-RTX's portable set (RTX_DEFAULT_TARGETS). `margin` is the
    overlap the window (core + 2 * margin) was built for, which the runtime tiles with.
    `graph_sha256` is the ONNX graph's own hash for a build given a graph (`--onnx`): an int8 QDQ,
    polyphase or hand-edited graph of the same model and I/O dtype is another plan. A build from
    a checkpoint has none: its graph follows from the model, precision and plugin.
    """

    model_sha256: str
    precision: str                       # fp32 | fp16 (the ONNX graph's dtypes)
    profile: Profile
    plugin: str                          # none | jit | aot
    margin: int                          # LR pixels of overlap on each side of a tile's core
    flavour: str                         # trt | rtx
    trt_version: str                     # the flavour's __version__
    compute_capabilities: tuple          # ((major, minor), ...): where the plan runs (see above)
    gpu_name: str = ""                   # torch.cuda.get_device_name() of the building GPU (trt)
    graph_sha256: str = ""               # the --onnx graph's hash (see above)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.plugin not in PLUGIN_MODES:
            raise ValueError(f"plugin must be one of {PLUGIN_MODES}, not {self.plugin!r}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {tuple(FLAVOURS)}, not {self.flavour!r}")
        if not self.model_sha256:
            raise ValueError("model_sha256 must not be empty")
        if int(self.margin) < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        ccs = tuple(sorted({(int(a), int(b)) for a, b in self.compute_capabilities}))
        if self.flavour == "trt" and (len(ccs) != 1 or not self.gpu_name):
            raise ValueError("a TensorRT key names the one GPU (name and compute capability) that built it")
        object.__setattr__(self, "compute_capabilities", ccs)
        object.__setattr__(self, "margin", int(self.margin))

    @property
    def label(self) -> str:
        """'TensorRT 11.4.0.106', 'TensorRT-RTX 1.7.1.116'."""
        return f"{FLAVOURS[self.flavour]} {self.trt_version}"

    @property
    def targets(self) -> tuple:
        """The compute capabilities the plan runs on."""
        return self.compute_capabilities or RTX_DEFAULT_TARGETS

    @property
    def gpu(self) -> str:
        """Where the plan runs: 'NVIDIA H200 (sm_90)'; 'sm_86, sm_89'; 'the TensorRT-RTX portable set (...)'."""
        if self.flavour == "trt":
            return f"{self.gpu_name} ({sm(self.compute_capabilities[0])})"
        listed = ", ".join(sm(cc) for cc in self.targets)
        return listed if self.compute_capabilities else f"the TensorRT-RTX portable set ({listed})"

    def gpu_mismatch(self, gpu_name: str, compute_capability) -> str | None:
        """None when the plan can run on this GPU, else why not (one line, with what to do)."""
        cc = tuple(int(v) for v in compute_capability)
        here = f"{gpu_name} ({sm(cc)})"
        if self.flavour == "trt":
            if (self.gpu_name, self.compute_capabilities[0]) == (gpu_name, cc):
                return None
            return f"engine was built for {self.gpu}, this GPU is {here}: {REBUILD}"
        if cc in self.targets:
            return None
        if cc not in RTX_TARGETS:
            return (f"engine is a TensorRT-RTX plan for {self.gpu}, this GPU is {here}, which TensorRT-RTX does "
                    f"not target: build with TensorRT (`srtrt build --tensorrt trt`)")
        return (f"engine is a TensorRT-RTX plan for {self.gpu}, this GPU is {here}: "
                f"run `srtrt build --tensorrt rtx --cc {cc[0]}.{cc[1]}`")

    def version_mismatch(self, trt_version: str) -> str | None:
        if self.trt_version == trt_version:
            return None
        name = FLAVOURS[self.flavour]
        return f"engine was built with {self.label}, this is {name} {trt_version}: {REBUILD}"

    def to_dict(self) -> dict:
        return {"model_sha256": self.model_sha256, "precision": self.precision, "profile": self.profile.to_dict(),
                "plugin": self.plugin, "margin": self.margin, "flavour": self.flavour,
                "trt_version": self.trt_version, "compute_capabilities": [list(cc) for cc in self.compute_capabilities],
                "gpu_name": self.gpu_name,
                **({"graph_sha256": self.graph_sha256} if self.graph_sha256 else {})}  # earlier keys keep their digest

    @classmethod
    def from_dict(cls, d: dict) -> EngineKey:
        return cls(model_sha256=d["model_sha256"], precision=d["precision"], profile=Profile.from_dict(d["profile"]),
                   plugin=d["plugin"], margin=d["margin"], flavour=d["flavour"], trt_version=d["trt_version"],
                   compute_capabilities=tuple(tuple(cc) for cc in d["compute_capabilities"]),
                   gpu_name=d["gpu_name"], graph_sha256=d.get("graph_sha256", ""))

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def stem(self) -> str:
        """A readable, unique file stem: model, precision, plugin, profile, margin, where, flavour, digest."""
        n, _, h, w = self.profile.max
        ccs = "-".join(sm(cc).replace("_", "") for cc in self.compute_capabilities) or "portable"
        where = f"{_slug(self.gpu_name, 'gpu')}-{ccs}" if self.flavour == "trt" else ccs
        version = re.sub(r"[^0-9A-Za-z.]+", "-", self.trt_version)
        return (f"{self.model_sha256[:12]}-{self.precision}-{self.plugin}-b{n}-{h}x{w}-m{self.margin}-{where}-"
                f"{self.flavour}{version}-{self.digest()[:8]}")


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
    """Where the TensorRT builder keeps the timing cache for one GPU model and TensorRT version."""
    return (root or cache_dir()) / (f"timing-{_slug(gpu_name, 'gpu')}-{sm(compute_capability).replace('_', '')}-"
                                    f"trt{trt_version}.cache")


def runtime_cache_path(plan: Path, gpu_name: str, compute_capability) -> Path:
    """Beside a TensorRT-RTX plan: its runtime (JIT) cache for one GPU model."""
    plan = Path(plan)
    return plan.with_name(f"{plan.stem}.{_slug(gpu_name, 'gpu')}-{sm(compute_capability).replace('_', '')}"
                          f".runtime-cache")


def write_plan(path: Path, key: EngineKey, plan: bytes, info: dict | None = None) -> Path:
    """Write `plan` and its sidecar at `path`. Both are written in full to temporary files before
    either replaces a file, so a failed write (a full disk) leaves an earlier pair as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = bytes(plan)
    doc = {"format": FORMAT, "version": VERSION, "key": key.to_dict(),
           "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
    side = sidecar_path(path)
    with atomic.atomic_open(side) as side_file:  # replaced last
        _write_through(side_file, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        with atomic.atomic_open(path) as plan_file:
            _write_through(plan_file, plan)
            # only the renames are left: a plan is never beside a sidecar that describes another plan
            side.unlink(missing_ok=True)
    return path


def _write_through(f, data: bytes) -> None:
    """Write, flush and fsync now, so that a full disk fails here and not when the file is committed."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def store(key: EngineKey, plan: bytes, info: dict | None = None, root: Path | None = None) -> Path:
    """Put a freshly built plan into the cache; returns its path. `info` goes into the sidecar. A
    cache that cannot take it (its disk full, something not a file where the entry goes) keeps it
    for this process only (cache.spilled, said once), so a build's `-o` copy and a run still get it."""
    path = plan_path(key, root)
    for entry in (path, sidecar_path(path)):  # the cache's own names: a folder there would refuse every plan
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    try:
        return write_plan(path, key, plan, info)
    except OSError as e:
        spill = srtrt_cache.spilled(path, e.strerror or str(e))
        if spill is None:
            raise CannotWrite.of(e, path) from None
        return write_plan(spill, key, plan, info)


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
    """Raise SrtrtError naming the first thing that differs (flavour, GPU, version, model, ...)."""
    if built.flavour != wanted.flavour:
        raise SrtrtError(f"engine is a {FLAVOURS[built.flavour]} plan, a {FLAVOURS[wanted.flavour]} one was asked: "
                         f"{REBUILD}", plan)
    if (built.gpu_name, built.compute_capabilities) != (wanted.gpu_name, wanted.compute_capabilities):
        if built.flavour == "trt":
            raise SrtrtError(built.gpu_mismatch(wanted.gpu_name, wanted.compute_capabilities[0]), plan)
        raise SrtrtError(f"engine is a TensorRT-RTX plan for {built.gpu}, wanted one for {wanted.gpu}: {REBUILD}",
                         plan)
    if built.trt_version != wanted.trt_version:
        raise SrtrtError(built.version_mismatch(wanted.trt_version), plan)
    if built.model_sha256 != wanted.model_sha256:
        raise SrtrtError(f"engine was built for model {built.model_sha256[:12]}, not {wanted.model_sha256[:12]}: "
                         f"run `srtrt build` for this model", plan)
    if built.precision != wanted.precision:
        raise SrtrtError(f"engine is {built.precision}, {wanted.precision} was asked: "
                         f"run `srtrt build --precision {wanted.precision}`", plan)
    if built.profile != wanted.profile:
        raise SrtrtError(f"engine profile is {built.profile} (min {built.profile.min}), wanted {wanted.profile} "
                         f"(min {wanted.profile.min}): run `srtrt build` with this tile and batch", plan)
    if built.margin != wanted.margin:
        raise SrtrtError(f"engine was built for margin {built.margin}, wanted {wanted.margin}: "
                         f"run `srtrt build --margin {wanted.margin}`", plan)
    if built.plugin != wanted.plugin:
        raise SrtrtError(f"engine plugin mode is {built.plugin}, wanted {wanted.plugin}: {REBUILD}", plan)
    if built.graph_sha256 != wanted.graph_sha256:
        graphs = [f"ONNX graph {k.graph_sha256[:12]}" if k.graph_sha256 else "the checkpoint's own export"
                  for k in (built, wanted)]
        raise SrtrtError(f"engine was built from {graphs[0]}, wanted {graphs[1]}: {REBUILD}", plan)


def check_runs_here(built: EngineKey, gpu_name: str, compute_capability, trt_version: str,
                    plan: Path | None = None) -> None:
    """Raise SrtrtError (one line) unless the plan runs on this GPU with this flavour version."""
    why = built.gpu_mismatch(gpu_name, compute_capability) or built.version_mismatch(trt_version)
    if why:
        raise SrtrtError(why, plan)


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
         flavour: str = "trt", window=None, max_batch: int | None = None, plugin: str | None = None,
         root: Path | None = None) -> Path:
    """The cached `flavour` plan to run this model at this precision on this GPU and version.

    A plan qualifies when model, precision and flavour match, it runs on this GPU (TensorRT:
    built on this GPU model; TensorRT-RTX: its targets cover this compute capability) with this
    `trt_version`, and, when given, its profile's largest shape is exactly `window` (int or
    (h, w)), its batch is at least `max_batch` and its plugin mode is `plugin`. Among those a plan
    built from the model itself wins over one built from an `--onnx` graph of the same weights (an
    int8 QDQ or hand-edited graph is run only where nothing else was built), then the newest
    (with a window given: the smallest sufficient batch, then the newest). The
    plan is validated before it is returned. Raises SrtrtError with the reason when none
    qualifies; plans only for another GPU or version are named as such.
    """
    cc = tuple(int(v) for v in compute_capability)
    hw = _hw(window) if window is not None else None
    here = f"{gpu_name} ({sm(cc)})"
    name = FLAVOURS[flavour]
    same_model, candidates = [], []
    for plan, doc in entries(root):  # newest first
        k = doc["key"]
        if k.model_sha256 != model_sha256 or k.precision != precision or k.flavour != flavour:
            continue
        same_model.append(k)
        if k.gpu_mismatch(gpu_name, cc) or k.version_mismatch(trt_version):
            continue
        if hw is not None and k.profile.window != hw:
            continue
        if max_batch is not None and k.profile.max_batch < max_batch:
            continue
        if plugin is not None and k.plugin != plugin:
            continue
        candidates.append(((bool(k.graph_sha256), k.profile.max_batch if max_batch is not None and hw is not None else 0),
                           plan, k))
    if candidates:
        candidates.sort(key=lambda c: c[0])  # stable: newest first within the same source and batch size
        _, plan, k = candidates[0]
        validate(plan, k)
        return plan
    want = ", ".join([precision] + ([f"window {hw[0]}x{hw[1]}"] if hw else [])
                     + ([f"batch {max_batch}"] if max_batch is not None else [])
                     + ([f"plugin {plugin}"] if plugin is not None else []))
    for why in (k.gpu_mismatch(gpu_name, cc) for k in same_model):
        if why:
            raise SrtrtError(why)
    for why in (k.version_mismatch(trt_version) for k in same_model):
        if why:
            raise SrtrtError(why)
    build = "srtrt build" + (" --tensorrt rtx" if flavour == "rtx" else "")
    if same_model:
        have = "; ".join(sorted({f"{k.profile}, margin {k.margin}, plugin {k.plugin}" for k in same_model}))
        raise SrtrtError(f"no cached {name} engine for this model with {want} on {here} (cached: {have}): "
                         f"run `{build}` with this tile and batch")
    raise SrtrtError(f"no cached {name} engine for model {model_sha256[:12]} ({want}) on {here}: "
                     f"run `{build} --precision {precision}`")
