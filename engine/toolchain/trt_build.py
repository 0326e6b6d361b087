"""`srtrt build`: ONNX -> TensorRT or TensorRT-RTX engine, stored in the engine cache.

Two flavours share this builder (`--tensorrt trt | rtx | auto`; auto: TensorRT where it
imports, else TensorRT-RTX):
- TensorRT (`tensorrt`) builds on the GPU that will run the plan; the plan is for that GPU
  model. It keeps a timing cache per GPU model and version.
- TensorRT-RTX (`tensorrt_rtx`) builds for compute capabilities (`--cc 8.6,8.9`; default: its
  portable set), with no GPU needed ("CPU-only AOT"); at load a JIT step specialises the plan
  for the user's GPU. No timing cache: using one makes the build query a GPU.

Precision lives in the ONNX graph's dtypes: `--precision fp16` exports an fp16 graph and the
network is strongly typed (TensorRT 10 and TensorRT-RTX get the STRONGLY_TYPED flag; TensorRT 11
is always strongly typed); neither flavour has, or gets, an FP16 builder flag. One optimisation
profile covers the runtime's tiles: opt = max = a full batch of full windows (core + 2*margin),
min = one tiny tile.

With the plugin (the default), each DepthToSpace -> PRelu pair is one `PixelShufflePReLU` node
run by the Triton kernel (kernels/trt_plugin.py); its `aot` attribute picks the AOT
implementation (PTX baked into the plan, no Python needed at run time; the default) or the JIT
one (Python callback at every enqueue). Where the flavour's wheel has no plugin module
(TensorRT-RTX 1.7.1 ships none) the graph is built unfused, and the build says so.

Every `import tensorrt` / `import tensorrt_rtx` is inside a function, so this module imports
on any machine.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from srtrt import atomic
from srtrt.engine.datapath.tiles import allowed_side
from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import EngineKey, Profile, profile_for
from srtrt.errors import SrtrtError
from srtrt.kernels import fused_op

DEFAULT_CORE = 512           # LR core per tile: with the default margin (40) the window is 592 x 592
DEFAULT_BATCH = 4
DEFAULT_WORKSPACE = 4 << 30  # bytes, capped at half the GPU's memory (TensorRT; TensorRT-RTX keeps its default)

# Every name this module uses on `trt` (the flavour's module: tensorrt, or tensorrt_rtx in the
# shared code) and on `rtx` (tensorrt_rtx only). tests/test_tensorrt.py checks TRT_NAMES_USED
# against TensorRT 11.4's bindings; tests/test_tensorrt_rtx.py checks RTX_NAMES_USED and the
# shared ones (all but TRT_ONLY_NAMES) against the installed tensorrt_rtx.
TRT_NAMES_USED = (
    "__version__", "Logger", "WARNING", "INFO", "VERBOSE", "Builder", "create_network", "NetworkDefinitionCreationFlag",
    "STRONGLY_TYPED", "OnnxParser", "parse_from_file", "num_errors", "get_error", "desc", "node", "node_name",
    "node_operator", "num_inputs", "get_input", "name", "create_builder_config", "set_memory_pool_limit",
    "MemoryPoolType", "WORKSPACE", "builder_optimization_level", "create_timing_cache", "set_timing_cache",
    "get_timing_cache", "serialize", "create_optimization_profile", "set_shape", "add_optimization_profile",
    "IProgressMonitor", "phase_start", "step_complete", "phase_finish", "progress_monitor",
    "build_serialized_network",
)
TRT_ONLY_NAMES = ("create_timing_cache", "set_timing_cache", "get_timing_cache", "serialize")
RTX_NAMES_USED = ("ComputeCapability", "CURRENT", "num_compute_capabilities", "set_compute_capability")


# ---------------------------------------------------------------------------------------------
# the two flavours


@dataclass(frozen=True)
class Flavour:
    key: str      # EngineKey.flavour: trt | rtx
    module: str   # what to import
    hint: str     # how to get it

    @property
    def name(self) -> str:
        return engine_cache.FLAVOURS[self.key]


TENSORRT = Flavour("trt", "tensorrt", 'pip install "srtrt[tensorrt]" on a machine with a CUDA GPU')
TENSORRT_RTX = Flavour("rtx", "tensorrt_rtx", 'pip install "srtrt[tensorrt-rtx]" (builds need no GPU)')
FLAVOURS = {"trt": TENSORRT, "rtx": TENSORRT_RTX}
CHOICES = ("auto", *FLAVOURS)  # `srtrt build --tensorrt`


def import_flavour(flavour: Flavour = TENSORRT):
    """The flavour's module, or one SrtrtError line saying it is missing and how to get it."""
    try:
        trt = importlib.import_module(flavour.module)
    except Exception as e:  # ImportError, or OSError from a half-installed libnvinfer
        cause = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise SrtrtError(f"{flavour.name} is not installed ({cause}): {flavour.hint}") from None
    if not hasattr(trt, "Builder"):
        raise SrtrtError(f"the installed `{flavour.module}` package has no {flavour.name} in it: {flavour.hint}")
    return trt


def resolve_flavour(choice: str = "auto") -> tuple[Flavour, object]:
    """(flavour, its module) for `--tensorrt choice`: auto = TensorRT where it imports, else TensorRT-RTX."""
    if choice in FLAVOURS:
        return FLAVOURS[choice], import_flavour(FLAVOURS[choice])
    if choice != "auto":
        raise SrtrtError(f"--tensorrt must be one of {', '.join(CHOICES)}, not {choice!r}")
    reasons = []
    for flavour in FLAVOURS.values():
        try:
            return flavour, import_flavour(flavour)
        except SrtrtError as e:
            reasons.append(str(e).rsplit(f": {flavour.hint}", 1)[0])
    raise SrtrtError(f"{' and '.join(reasons)}: {TENSORRT.hint}, or {TENSORRT_RTX.hint}")


def require_cuda(flavour: Flavour = TENSORRT, why: str | None = None):
    """torch with a visible CUDA GPU, or one SrtrtError line ending with `why` (default: a build's)."""
    import torch

    if not torch.cuda.is_available():
        why = why or (f"{flavour.name} builds an engine on the GPU that will run it; {flavour.hint}, "
                      f"or build without a GPU with TensorRT-RTX (`srtrt build --tensorrt rtx`)")
        raise SrtrtError(f"no CUDA GPU is visible (torch {torch.__version__}): {why}")
    return torch


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt) -> int:
    """STRONGLY_TYPED where it is an opt-in flag (TensorRT 10, TensorRT-RTX 1.x); 0 on TensorRT 11+."""
    flags = 0
    if trt_major(trt) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def parse_cc(text: str | None) -> tuple | str:
    """`--cc`: "8.6,8.9" -> ((8, 6), (8, 9)); "" or None -> () (the portable set); "current" -> "current"."""
    if text is None or not str(text).strip():
        return ()
    items = [t.strip() for t in str(text).replace(";", ",").split(",") if t.strip()]
    if [t.lower() for t in items] == ["current"]:
        return "current"
    ccs = []
    for item in items:
        major, dot, minor = item.partition(".")
        if item.lower() == "current":
            raise SrtrtError("--cc current must be the only target")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise SrtrtError(f"--cc {item}: write compute capabilities as MAJOR.MINOR, e.g. --cc 8.6,8.9")
        ccs.append((int(major), int(minor)))
    return tuple(sorted(set(ccs)))


def rtx_targets(rtx, ccs) -> list:
    """The tensorrt_rtx.ComputeCapability values for parsed `--cc` targets; SrtrtError for one it lacks."""
    known = {name: value for name, value in rtx.ComputeCapability.__members__.items() if name.startswith("SM")}
    if ccs == "current":
        return [rtx.ComputeCapability.CURRENT]
    values = []
    for major, minor in ccs:
        value = known.get(f"SM{major}{minor}")
        if value is None:
            listed = ", ".join(f"{n[2:-1]}.{n[-1]}" for n in known)
            raise SrtrtError(f"--cc {major}.{minor}: TensorRT-RTX {rtx.__version__} targets {listed} "
                             f"(or `current`, the visible GPU)")
        values.append(value)
    return values


# ---------------------------------------------------------------------------------------------
# the ONNX handed to the builder


def onnx_precision(model) -> str:
    """fp32 or fp16, from the graph input's element type."""
    import onnx

    elem = model.graph.input[0].type.tensor_type.elem_type
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    if elem not in names:
        raise SrtrtError(f"graph input has element type {onnx.TensorProto.DataType.Name(elem)}; expected FLOAT or FLOAT16")
    return names[elem]


def onnx_io(model) -> dict:
    """{"inputs": {name: dtype}, "outputs": {name: dtype}} with ONNX dtype names."""
    import onnx

    def side(values):
        return {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values}

    return {"inputs": side(model.graph.input), "outputs": side(model.graph.output)}


def onnx_channels(model) -> int:
    """The graph input's channel count (dim 1), 3 where it is symbolic (srtrt's exports fix it)."""
    dim = model.graph.input[0].type.tensor_type.shape.dim
    return int(dim[1].dim_value) if len(dim) == 4 and dim[1].dim_value > 0 else 3


def fixed_input(model) -> tuple[int, int, int] | None:
    """(batch, height, width) of a graph that takes one input shape only, None where any is symbolic."""
    dim = model.graph.input[0].type.tensor_type.shape.dim
    if len(dim) != 4:
        return None
    n, h, w = (int(dim[i].dim_value) for i in (0, 2, 3))
    return (n, h, w) if min(n, h, w) > 0 else None


def plugin_mode(model) -> str:
    """none (no plugin nodes), jit or aot (every node says so), or unset (missing or mixed `aot`)."""
    from onnx import helper

    from srtrt.engine.toolchain.export import fused_nodes

    nodes = fused_nodes(model)
    if not nodes:
        return "none"
    modes = set()
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        modes.add("unset" if "aot" not in attrs else ("aot" if int(attrs["aot"]) else "jit"))
    return modes.pop() if len(modes) == 1 else "unset"


def set_plugin_mode(model, mode: str) -> None:
    """Make every PixelShufflePReLU node ask for the `mode` (jit or aot) implementation."""
    from onnx import helper

    from srtrt.engine.toolchain.export import fused_nodes

    if mode not in ("jit", "aot"):
        raise ValueError(f"plugin mode must be jit or aot, not {mode!r}")
    wanted = {"aot": int(mode == "aot"), "plugin_namespace": fused_op.NAMESPACE,
              "plugin_version": fused_op.PLUGIN_VERSION}
    for n in fused_nodes(model):
        keep = [a for a in n.attribute if a.name not in wanted]
        del n.attribute[:]
        n.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in wanted.items()])


def plugin_unavailable(flavour: Flavour) -> str | None:
    """None when the flavour can run the fused node (its plugin module imports), else why not."""
    from srtrt.kernels import trt_plugin

    return trt_plugin.unavailable(flavour.module)


def fused_channels(model) -> int | None:
    """Output channels of the graph's last PixelShufflePReLU node (the conv feeding it makes r²
    times as many), None where the graph has no fused node or its conv weight is not a constant."""
    from onnx import helper, numpy_helper

    from srtrt.engine.toolchain.export import fused_nodes

    nodes = fused_nodes(model)
    if not nodes:
        return None
    last = nodes[-1]
    upscale = int({a.name: helper.get_attribute_value(a) for a in last.attribute}.get("upscale", 1))
    producer = next((n for n in model.graph.node if last.input[0] in n.output), None)
    weights = {t.name: t for t in model.graph.initializer}
    if producer is None or producer.op_type != "Conv" or producer.input[1] not in weights:
        return None
    return int(numpy_helper.to_array(weights[producer.input[1]]).shape[0]) // (upscale * upscale)


def _check_aot_index_range(facts: dict, profile) -> None:
    """The AOT plugin launches one kernel over a fused node's whole output, indexed in int32 (the
    JIT plugin splits its batches itself): a profile whose last upsample step, at full resolution
    and the largest batch, holds INDEX_LIMIT elements or more would build and then write nothing."""
    from srtrt.kernels.pixel_shuffle_prelu import INDEX_LIMIT

    channels = facts.get("fused_channels")
    if facts.get("plugin") != "aot" or not channels:
        return
    batch, _, height, width = profile.max
    scale = int(facts.get("scale") or 4)
    per_window = channels * height * scale * width * scale
    if batch * per_window >= INDEX_LIMIT:
        fits = (INDEX_LIMIT - 1) // per_window
        advice = f"--max-batch {fits} or less" if fits >= 1 else "a smaller --tile"
        raise SrtrtError(f"the AOT plugin indexes in 32 bits, and a batch of {batch} windows of {height}x{width} makes "
                         f"{batch * per_window:,} elements in the last upsample step (at most {INDEX_LIMIT - 1:,}): "
                         f"build with {advice}")


def _checked(name: str, value: int, lo: int, hi: int | None = None) -> int:
    if value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise SrtrtError(f"--{name} must be {allowed}, got {value}")
    return value


def _check_dimensions(profile, scale: int) -> None:
    """Every side of the input and output windows and the batch must be a 32-bit number, as
    TensorRT's profile takes them: --tile, --margin or --max-batch beyond it failed in the builder
    with a traceback ("Shape provided for opt is inconsistent")."""
    batch, _, h, w = profile.max
    largest = max(batch, h * scale, w * scale)
    if largest > 2**31 - 1:
        raise SrtrtError(f"--tile, --margin and --max-batch make a batch of {batch} window(s) of {h}x{w} (x{scale}: "
                         f"{h * scale}x{w * scale}); TensorRT takes sides and batches up to {2**31 - 1:,}: lower them")


def view_facts(view, model: str | None, precision: str, plugin: str) -> dict:
    """What a checkpoint's export will be, known before exporting (the cache key needs no ONNX)."""
    from srtrt.engine.toolchain.export import state_dict_sha256

    sha = getattr(view, "checkpoint_sha256", "") or state_dict_sha256(view)  # as export_onnx records it
    facts = view.facts  # registry.ModelFacts: a community model may be grey or need sides of a multiple
    return {"sha256": sha, "precision": precision, "plugin": plugin, "scale": view.scale,
            "radius": view.radius, "source": str(model) if model else "embedded default model",
            "channels": facts.channels, "minimum": facts.minimum, "multiple_of": facts.multiple_of,
            "fused_channels": facts.feature_channels if plugin != "none" else None}


def prepare_onnx(workdir: Path, *, model: str | None = None, onnx_path: str | None = None,
                 precision: str | None = "fp16", plugin: str = "aot", view=None,
                 allow_noncommercial: bool = False, shape: tuple[int, int, int, int] | None = None
                 ) -> tuple[Path, dict]:
    """The ONNX the builder gets, written under `workdir`, and facts about it.

    From a checkpoint (`model`, None = the embedded one; or an already loaded `view`): exported
    at `precision`, fused unless `plugin == "none"`, with every plugin node set to `plugin`.
    From `onnx_path`: loaded through onnx_io.load_onnx (external data outside the file's folder
    is refused before anything reads it) and taken as it is (its precision is its dtypes'; a
    `precision` given must match them), except that plugin nodes without
    an `aot` choice get `plugin`, and `plugin == "none"` turns fused nodes back into
    DepthToSpace + PRelu. A community model file (`allow_noncommercial`: as srtrt.load_model takes
    it) is exported as it is (export.export_community_view); it has nothing to fuse, so `plugin`
    must be "none"; `shape` (N, C, H, W) fixes its graph at that input (window-attention models
    export only so). Returns (path, {"sha256", "precision", "plugin", "scale", "radius", "source",
    "channels", "io", "fixed_input", "minimum", "multiple_of"}; from `onnx_path` also "graph_sha256",
    the graph's own hash, which the engine key takes; an ONNX from before the sizes were in its
    metadata takes any size).
    """
    from srtrt.engine.toolchain.export import save_onnx, unfuse_pixel_shuffle_prelu
    from srtrt.engine.toolchain.onnx_io import load_onnx, metadata

    workdir = Path(workdir)
    if onnx_path is not None:
        src = Path(onnx_path)
        if not src.is_file():
            raise SrtrtError("ONNX file not found", src)
        m = load_onnx(src)
        graph = hashlib.sha256(m.SerializeToString()).hexdigest()  # external data included, before any change
        meta = metadata(m, src)
        sha = meta.get("model_sha256") or engine_cache.file_sha256(src)
        got = onnx_precision(m)
        if precision is not None and got != precision:
            raise SrtrtError(f"the graph is {got} but --precision {precision} was asked: pass --precision {got}, "
                             f"or export with `srtrt export --precision {precision}`", src)
        mode = plugin_mode(m)
        if plugin == "none" and mode != "none":
            unfuse_pixel_shuffle_prelu(m)
            mode = "none"
        elif mode == "unset":
            set_plugin_mode(m, plugin)
            mode = plugin
        path = save_onnx(m, workdir / src.name)
        facts = {"sha256": sha, "graph_sha256": graph, "precision": got, "plugin": mode,
                 "scale": int(meta.get("scale", 4)), "radius": meta.get("radius"), "source": str(src.resolve()),
                 "channels": onnx_channels(m), "minimum": meta.get("minimum", 1), "multiple_of": meta.get("multiple_of", 1),
                 "fused_channels": fused_channels(m)}
    else:
        import srtrt
        from srtrt.engine.toolchain.export import export_onnx
        from srtrt.nets import CommunityView  # torch, needed only when exporting here

        view = view if view is not None else srtrt.load_model(model, allow_noncommercial)
        if isinstance(view, CommunityView):  # nothing to fuse
            from srtrt.engine.toolchain.export import export_community_view

            if plugin != "none":
                raise SrtrtError(f"the {view.facts.architecture} model has no steps for the {fused_op.NAME} plugin: "
                                 "build with --no-plugin")
            path = export_community_view(view, workdir / "model.onnx", precision, shape=shape)
        else:
            path = export_onnx(view, workdir / "model.onnx", precision=precision, fused=plugin != "none",
                               aot=plugin == "aot")
        m = load_onnx(path)
        if plugin != "none" and plugin_mode(m) != plugin:
            raise SrtrtError(f"the fused export does not have {fused_op.NAME} nodes with aot={int(plugin == 'aot')}",
                             path)
        got = onnx_precision(m)
        if got != precision:
            raise SrtrtError(f"export gave a {got} graph, {precision} was asked", path)
        facts = {**view_facts(view, model, precision, plugin), "plugin": plugin_mode(m)}
    facts["io"] = onnx_io(m)
    facts["fixed_input"] = fixed_input(m)
    return Path(path), facts


# ---------------------------------------------------------------------------------------------
# the builder


def _progress_monitor(trt, out):
    """A trt.IProgressMonitor printing the top two levels of build phases, or None if absent."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._depth = {}
            self._start = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
            self._depth[phase_name] = depth
            self._start[phase_name] = time.monotonic()
            if depth <= 1:
                print(f"  {'  ' * depth}{phase_name} ({num_steps} step{'s' if num_steps != 1 else ''})",
                      file=out, flush=True)

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            depth = self._depth.pop(phase_name, 0)
            took = time.monotonic() - self._start.pop(phase_name, time.monotonic())
            if depth == 0:
                print(f"  {phase_name}: done in {took:.1f} s", file=out, flush=True)

    return Monitor()


def _workspace_limit() -> int:
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return min(DEFAULT_WORKSPACE, total // 2)


@dataclass
class Network:
    """A parsed network and what keeps it alive (the parser owns the weights)."""

    trt: object
    builder: object
    network: object
    parser: object
    logger: object
    plugin: str  # the graph's plugin mode: none | jit | aot


def parse_network(onnx_path, flavour: Flavour = TENSORRT, *, verbose: bool = False, out=None) -> Network:
    """The flavour's strongly typed network for `onnx_path` (parser errors: one per line, then SrtrtError).

    Registers the PixelShufflePReLU plugin with the flavour first when the graph has such nodes.
    """
    from srtrt.engine.toolchain.onnx_io import load_onnx

    out = out or sys.stderr
    trt = import_flavour(flavour)
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path, load_external_data=False)  # the parser would follow external-data paths anywhere
    mode = plugin_mode(model)
    if mode == "unset":
        raise SrtrtError(f"{fused_op.NAME} nodes must all carry aot=0 or aot=1", onnx_path)
    if mode != "none":
        from srtrt.kernels import trt_plugin

        why = trt_plugin.unavailable(flavour.module)
        if why:
            raise SrtrtError(f"the graph has {fused_op.NAME} nodes, but {flavour.name} has no usable plugin module "
                             f"({why}): build with --no-plugin", onnx_path)
        has_aot = trt_plugin.register(flavour.module)
        if mode == "aot" and not has_aot:
            raise SrtrtError(f"{flavour.name} {trt.__version__} has no AOT Python plugins (TensorRT 10.9 or newer "
                             f"has): build with the JIT plugin or without the plugin", onnx_path)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            where = err.node_name() or err.node_operator() or f"node {err.node()}"
            print(f"{onnx_path.name}: {where}: {err.desc()}", file=out)
        raise SrtrtError(f"{flavour.name} could not parse the ONNX ({parser.num_errors} error(s) above)", onnx_path)
    if network.num_inputs != 1:
        raise SrtrtError(f"expected one network input, found {network.num_inputs}", onnx_path)
    return Network(trt, builder, network, parser, logger, mode)


def _set_targets(config, targets) -> None:
    """TensorRT-RTX: build for `targets` (ComputeCapability values); none = its portable set."""
    config.num_compute_capabilities = len(targets)
    for i, value in enumerate(targets):
        if not config.set_compute_capability(value, i):
            raise SrtrtError(f"TensorRT-RTX refused the build target {value}")


def build_serialized(onnx_path, profile: Profile, *, flavour: Flavour = TENSORRT, targets=(),
                     opt_level: int = 3, workspace: int | None = None, timing_cache: Path | None = None,
                     progress: bool = True, verbose: bool = False, out=None) -> bytes:
    """Parse `onnx_path`, build one engine for `profile`, return the serialized plan.

    TensorRT-RTX builds for `targets` (tensorrt_rtx.ComputeCapability values; empty: its
    portable set); its AOT plugin kernels are compiled for the lowest target. `timing_cache`
    is TensorRT's only; `workspace` (bytes) defaults to DEFAULT_WORKSPACE capped at half the
    GPU for TensorRT, and to TensorRT-RTX's own default.
    """
    out = out or sys.stderr
    net = parse_network(onnx_path, flavour, verbose=verbose, out=out)
    trt = net.trt
    config = net.builder.create_builder_config()
    if flavour.key == "trt" or workspace:
        # TensorRT-RTX allocates an explicitly limited pool at build time, which fails without
        # a GPU ("Error Code 2: OutOfMemory"); its default limit builds anywhere.
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace or _workspace_limit())
    config.builder_optimization_level = int(opt_level)
    aot_arch = ptx = None  # AOT plugin kernels: for the building GPU
    if flavour.key == "rtx":
        _set_targets(config, targets)
        if net.plugin == "aot":
            from srtrt.kernels import aot

            # PTX for the lowest target runs on every later one through the driver's JIT;
            # CURRENT (the only target, value 1): the building GPU's own.
            lowest = min(engine_cache.RTX_DEFAULT_TARGETS)
            named = [int(v) for v in targets if int(v) >= 75]
            aot_arch = min(named) if named else (None if targets else lowest[0] * 10 + lowest[1])
            ptx = aot.PORTABLE_PTX_VERSION if aot_arch is not None else None
    elif timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"  timing cache {timing_cache} not usable; starting a new one", file=out)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)

    prof = net.builder.create_optimization_profile()
    prof.set_shape(net.network.get_input(0).name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(prof)

    monitor = _progress_monitor(trt, out) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    from srtrt.kernels import trt_plugin

    with trt_plugin.aot_target(aot_arch, ptx):
        plan = net.builder.build_serialized_network(net.network, config)
    if plan is None:
        raise SrtrtError(f"{flavour.name} could not build the engine for windows up to {profile.max[2]}x"
                         f"{profile.max[3]}, {profile.max[0]} at a time (see its messages above)", onnx_path)
    if flavour.key == "trt" and timing_cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


# ---------------------------------------------------------------------------------------------
# srtrt build


def _where(flavour: Flavour, trt, cc) -> tuple[dict, list]:
    """(the key's gpu_name / compute_capabilities, the RTX build targets) for this build."""
    if flavour.key == "trt":
        if parse_cc(cc):
            raise SrtrtError("--cc names TensorRT-RTX targets; TensorRT builds for the GPU it runs on "
                             "(pass --tensorrt rtx)")
        require_cuda(flavour)
        gpu_name, here = engine_cache.gpu_identity()
        return {"gpu_name": gpu_name, "compute_capabilities": (here,)}, []
    ccs = parse_cc(cc)
    targets = rtx_targets(trt, ccs)  # refuses a target this TensorRT-RTX lacks
    if ccs != "current":
        return {"gpu_name": "", "compute_capabilities": ccs}, targets
    require_cuda(flavour, "--cc current builds for the visible GPU; name the targets (e.g. --cc 8.6,8.9) "
                          "or leave --cc out for TensorRT-RTX's portable set")
    gpu_name, here = engine_cache.gpu_identity()
    if here not in engine_cache.RTX_TARGETS:
        raise SrtrtError(f"--cc current: {gpu_name} ({engine_cache.sm(here)}) is not a TensorRT-RTX target: "
                         f"build with TensorRT (`--tensorrt trt`)")
    return {"gpu_name": gpu_name, "compute_capabilities": (here,)}, targets


def build(*, model: str | None = None, onnx_path: str | None = None, precision: str | None = None,
          tile: int | None = None, margin: int | None = None, max_batch: int = DEFAULT_BATCH, opt_level: int = 3,
          plugin: str = "aot", output: str | None = None, progress: bool = True, out=None,
          tensorrt: str = "auto", cc: str | None = None, allow_noncommercial: bool = False,
          one_window: str | None = None, overwrite: bool = False) -> tuple[Path, EngineKey]:
    """Build an engine (or find it already built in the cache); put it at `output` too when given.

    `tensorrt`: trt, rtx or auto (TensorRT where it imports, else TensorRT-RTX). `cc`: the
    TensorRT-RTX targets ("8.6,8.9"; None = its portable set; "current" = the visible GPU).
    `plugin`: "aot" (default), "jit" or "none" (stock DepthToSpace + PRelu layers; also what a
    flavour without a plugin module gets). A community model file (`allow_noncommercial` as
    srtrt.load_model takes it) is built without the plugin (it has no PixelShuffle + PReLU steps),
    for its channels and with windows of the side multiple it needs; one whose dynamic-shape graph
    holds at its traced size only is built again for one window (`one_window`: why). An existing
    `output` (or its sidecar) is replaced only with `overwrite`. Returns (cached plan path, key).
    """
    import srtrt

    out = out or sys.stderr
    if onnx_path is None:
        precision = precision or "fp16"  # an --onnx graph's precision is its dtypes' (prepare_onnx)
    flavour, trt = resolve_flavour(tensorrt)
    version = str(trt.__version__)
    if plugin not in engine_cache.PLUGIN_MODES:
        raise SrtrtError(f"plugin must be one of {engine_cache.PLUGIN_MODES}, not {plugin!r}")
    max_batch = _checked("max-batch", int(max_batch), 1)
    opt_level = _checked("opt-level", int(opt_level), 0, 5)
    if output:
        _check_plan_output(Path(output), model, onnx_path, overwrite)
    where, targets = _where(flavour, trt, cc)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="srtrt-build-") as tmp:
        view, path = None, None
        if onnx_path is None:
            view = srtrt.load_model(model, allow_noncommercial)
            plugin = _model_checks(view, precision, plugin, out)
        unfused = plugin_unavailable(flavour) if plugin != "none" else None
        if unfused:
            plugin = "none"
        if view is not None:  # the key is known before the (slow) export
            facts = view_facts(view, model, precision, plugin)
        else:
            path, facts = prepare_onnx(Path(tmp), onnx_path=onnx_path, precision=precision, plugin=plugin)
        radius = facts["radius"]
        if margin is None and radius is None:
            raise SrtrtError("the ONNX has no receptive-field radius in its metadata: pass --margin", onnx_path)
        margin = _checked("margin", int(radius if margin is None else margin), 0)
        core = _checked("tile", int(DEFAULT_CORE if tile is None else tile), 1)
        # The runtime rounds each window side up to the model's `multiple_of` (engine/datapath/tiles.py)
        # and never sends one below its minimum side: the profile must take exactly those shapes.
        step, smallest = facts.get("multiple_of", 1), facts.get("minimum", 1)
        window = allowed_side(core + 2 * margin, step, smallest)
        min_side = allowed_side(1, step, smallest)
        fixed = _fixed_shape(view, facts, window, margin, out, one_window)
        if fixed:  # the engine takes exactly that shape: the runtime's windows are all of it
            max_batch, window, min_side = fixed[0], fixed[1:], max(fixed[1:])
        profile = profile_for(window, max_batch, channels=facts["channels"], min_side=min_side)
        _check_dimensions(profile, facts["scale"])
        _check_aot_index_range(facts, profile)
        key = EngineKey(model_sha256=facts["sha256"], precision=facts["precision"], profile=profile,
                        plugin=facts["plugin"], margin=margin, flavour=flavour.key, trt_version=version,
                        graph_sha256=facts.get("graph_sha256", ""), **where)
        cached = _cached(key, out)
        if cached is not None:
            print(f"served from the cache: {cached.name}", file=out, flush=True)
            if output:
                _write_output(Path(output), key, cached.read_bytes(), _info_of(cached), cached)
            return cached, key
        if unfused:
            print(f"{flavour.name} {version} has no usable plugin module ({unfused}): building unfused "
                  f"(DepthToSpace + PRelu, not {fused_op.NAME})", file=out, flush=True)
        print(f"building a {key.label} engine for {key.gpu}: {key.precision}, plugin {key.plugin}, {profile}, "
              f"margin {margin}", file=out, flush=True)
        if path is None:
            try:
                path, facts = prepare_onnx(Path(tmp), model=model, precision=precision, plugin=plugin, view=view,
                                           allow_noncommercial=allow_noncommercial,
                                           shape=(1, facts["channels"], *window) if fixed else None)
            except SrtrtError as e:
                from srtrt.engine.toolchain.export_isolated import fails_untraced

                if fixed or not fails_untraced(e):
                    raise
                why = f"{view.facts.architecture}'s dynamic-shape graph holds at its traced size only"
                return build(model=model, precision=precision, tile=tile, margin=margin, max_batch=max_batch,
                             opt_level=opt_level, plugin=plugin, output=output, progress=progress, out=out,
                             tensorrt=tensorrt, cc=cc, allow_noncommercial=allow_noncommercial, one_window=why,
                             overwrite=overwrite)
        timing = (engine_cache.timing_cache_path(where["gpu_name"], where["compute_capabilities"][0], version)
                  if flavour.key == "trt" else None)
        try:
            plan = build_serialized(path, profile, flavour=flavour, targets=targets, opt_level=opt_level,
                                    timing_cache=timing, progress=progress, out=out)
        except SrtrtError as e:
            if e.path != path:
                raise
            # the ONNX is this build's temporary copy or export, gone when the line is read: name the user's file
            raise SrtrtError(e.cause, onnx_path or model or "the default model") from None
    info = {"scale": facts["scale"], "radius": radius, "channels": facts["channels"], "io": facts["io"],
            "source": facts["source"], "opt_level": opt_level, "build_seconds": round(time.monotonic() - started, 1),
            "srtrt_version": srtrt.__version__}
    cached = engine_cache.store(key, plan, info)
    if output:
        _write_output(Path(output), key, plan, info, cached)
    return cached, key


def _check_plan_output(output: Path, model, onnx_path, overwrite: bool) -> None:
    """Before any work: `-o` writes the plan and its NAME.json sidecar, so neither may be a file
    the build reads, nor may the sidecar replace a JSON that is not a plan's (a checkpoint's), nor
    may either replace a file without `overwrite`; and the folder must take a file."""
    from srtrt import checkpoint
    from srtrt.outputs import check_output_file, check_overwrite, check_writable_folder

    inputs = [onnx_path] if onnx_path else checkpoint.model_files(model)
    check_output_file(output, inputs)
    if engine_cache.sidecar_path(output) == output:
        raise SrtrtError("is where the plan's sidecar (NAME.json) goes: -o names the plan, e.g. NAME.plan", output)
    side = check_output_file(engine_cache.sidecar_path(output), inputs, flag=f"the sidecar of -o {output.name}")
    if side.is_file() and not _is_plan_sidecar(side):
        raise SrtrtError(f"holds a file that is not a plan's sidecar; -o {output.name} would replace it: "
                         "name another file", side)
    check_overwrite(output, overwrite)
    check_overwrite(side, overwrite)
    check_writable_folder(output)


def _write_output(output: Path, key: EngineKey, plan: bytes, info: dict, cached: Path) -> None:
    """The `-o` copy of a plan; a write that fails (a full disk) is one line, and leaves an earlier
    plan and sidecar at `output` as they were."""
    try:
        engine_cache.write_plan(output, key, plan, info)
    except OSError as e:
        raise SrtrtError(f"cannot write ({e.strerror or e}); the plan is in the cache: {cached}", output) from None


def _is_plan_sidecar(path: Path) -> bool:
    """Whether a JSON file is a plan's sidecar, of any version (a rebuild may replace an old one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == engine_cache.FORMAT


def _fixed_shape(view, facts: dict, window: int, margin: int, out,
                 one_window: str | None = None) -> tuple[int, int, int] | None:
    """(batch, height, width) when the engine can take one input shape only, said in one line: a
    model whose architecture exports only at a fixed size (one window, one at a time; `one_window`:
    found so by its export), or an ONNX fixed at one shape (`srtrt export --shape`). None: batches
    and windows up to the profile's."""
    from srtrt.engine.toolchain.export_isolated import static_only

    why = one_window or (static_only(view) if view is not None else None)
    fixed = (1, window, window) if why else facts.get("fixed_input")
    if fixed and fixed[1] != fixed[2]:  # tiles.plan makes square windows wherever the image allows
        raise SrtrtError(f"the ONNX is fixed at {fixed[1]}x{fixed[2]}, but the runtime's windows are square: "
                         "export it with --shape NxN", facts.get("source"))
    if fixed and fixed[1] <= 2 * margin:  # its windows would hold no pixel inside their margins
        raise SrtrtError(f"the ONNX is fixed at {fixed[1]}x{fixed[2]}, no wider than its two margins of {margin}: "
                         f"export it with --shape of at least {2 * margin + 1}x{2 * margin + 1}, or build with a "
                         "smaller --margin", facts.get("source"))
    if fixed:
        why, smaller = (why, "--tile") if why else ("the ONNX is fixed at one input shape", "srtrt export --shape")
        print(f"{why}: the engine takes {fixed[1]}x{fixed[2]} windows only, {fixed[0]} at a time; images with "
              f"a smaller side need another backend or a smaller {smaller}", file=out, flush=True)
    return fixed


def _model_checks(view, precision: str, plugin: str, out) -> str:
    """The plugin mode a loaded model gets: "none" where it has no conv -> PixelShuffle -> PReLU
    steps (every community model: the plugin is for srtrt's own networks), said in one note.
    An fp16 build of a model spandrel marks unsafe in fp16 is refused in one line."""
    from srtrt import registry

    name = view.facts.architecture
    if refusal := view.facts.refusal(precision):
        raise SrtrtError(f"--precision {precision}: {refusal}; build with --precision fp32")
    if plugin != "none" and not registry.of(view.generator).upsample_steps(view.generator):
        print(f"the {name} model has no conv -> PixelShuffle -> PReLU steps for the {fused_op.NAME} plugin: "
              "building without it", file=out, flush=True)
        return "none"
    return plugin


def _cached(key: EngineKey, out) -> Path | None:
    """The valid cached plan for exactly `key`; a damaged one is reported and rebuilt."""
    try:
        return engine_cache.lookup(key)
    except SrtrtError as e:
        print(f"cached plan refused ({e}): rebuilding", file=out, flush=True)
        return None


def _info_of(plan: Path) -> dict:
    """A cached plan's sidecar facts beyond its key and bytes (what `write_plan` takes as info)."""
    doc = engine_cache.read_sidecar(plan)
    return {k: v for k, v in doc.items() if k not in ("format", "version", "key", "plan_sha256", "plan_bytes",
                                                      "created")}


LOST_PLAN = ("the cache cannot keep the plan, so it would be gone when this command ends: "
             "build with -o FILE.plan, or set SRTRT_CACHE to a folder srtrt can write")


def main(args) -> int:
    """`srtrt build` (flags parsed in srtrt/cli.py)."""
    from srtrt.cache import outlives_this_process

    if args.output == "":
        raise SrtrtError("-o is empty (an unset variable?): name a .plan file, or leave -o out for the cache alone")
    plugin = getattr(args, "plugin", None) or ("none" if args.no_plugin else "aot")
    started = time.monotonic()
    path, key = build(model=args.model, onnx_path=args.onnx, precision=args.precision, tile=args.tile,
                      margin=args.margin, max_batch=args.max_batch, opt_level=args.opt_level, plugin=plugin,
                      output=args.output, tensorrt=getattr(args, "tensorrt", "auto"), cc=getattr(args, "cc", None),
                      allow_noncommercial=getattr(args, "allow_noncommercial", False),
                      overwrite=getattr(args, "overwrite", False))
    if not args.output and not outlives_this_process(path):  # a cache srtrt cannot write: its line said why
        failed = SrtrtError(LOST_PLAN)
        failed.exit_code = 1
        raise failed
    size = path.stat().st_size / 2**20
    print(f"{path} ({size:.1f} MiB, {time.monotonic() - started:.0f} s): {key.precision}, plugin {key.plugin}, "
          f"{key.profile}, margin {key.margin}, {key.gpu}, {key.label}")
    if args.output:
        print(f"also written to {args.output} (with {Path(args.output).with_suffix('.json').name})")
    return 0
