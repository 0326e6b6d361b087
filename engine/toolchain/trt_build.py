"""`srtrt build`: ONNX -> TensorRT engine for this GPU, stored in the engine cache.

Precision lives in the ONNX graph's dtypes: `--precision fp16` exports an fp16 graph and the
network is strongly typed (TensorRT 10 gets the STRONGLY_TYPED flag; TensorRT 11 is always
strongly typed and has no FP16 builder flag). One optimisation profile covers the runtime's
tiles: opt = max = a full batch of full windows (core + 2*margin), min = one tiny tile.

With the plugin (the default), each DepthToSpace -> PRelu pair is one `PixelShufflePReLU` node
run by the Triton kernel (kernels/trt_plugin.py); its `aot` attribute picks the AOT
implementation (PTX baked into the plan, no Python needed at run time; the default) or the JIT
one (Python callback at every enqueue).

Every `import tensorrt` is inside a function, so this module imports on any machine.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from srtrt.errors import SrtrtError

from srtrt.engine.toolchain import engine_cache
from srtrt.engine.toolchain.engine_cache import EngineKey, Profile, profile_for

INSTALL_HINT = 'pip install "srtrt[tensorrt]" on a machine with a CUDA GPU'
PLUGIN_OP = "PixelShufflePReLU"
PLUGIN_NAMESPACE = "srtrt"
DEFAULT_CORE = 512           # LR core per tile, as the torch backend uses on CUDA
DEFAULT_BATCH = 4
DEFAULT_WORKSPACE = 4 << 30  # bytes, capped at half the GPU's memory

# Every `tensorrt` name this module uses, on the module or on its objects (builder, network,
# parser, config, profile, parser errors, timing cache, progress monitor). tests/test_tensorrt.py
# checks them against TensorRT 11.4's bindings; names that exist only in 10.x go in TRT10_ONLY
# and must be behind a version guard.
TRT_NAMES_USED = (
    "__version__", "Logger", "WARNING", "INFO", "VERBOSE", "Builder", "create_network", "NetworkDefinitionCreationFlag",
    "STRONGLY_TYPED", "OnnxParser", "parse_from_file", "num_errors", "get_error", "desc", "node", "node_name",
    "node_operator", "num_inputs", "get_input", "name", "create_builder_config", "set_memory_pool_limit",
    "MemoryPoolType", "WORKSPACE", "builder_optimization_level", "create_timing_cache", "set_timing_cache",
    "get_timing_cache", "serialize", "create_optimization_profile", "set_shape", "add_optimization_profile",
    "IProgressMonitor", "phase_start", "step_complete", "phase_finish", "progress_monitor",
    "build_serialized_network",
)
TRT10_ONLY = ()


# ---------------------------------------------------------------------------------------------
# what is needed, and whether it is here


def import_tensorrt():
    """The tensorrt module, or one SrtrtError line saying it is missing and how to get it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError from a half-installed libnvinfer
        cause = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise SrtrtError(f"TensorRT is not installed ({cause}): {INSTALL_HINT}") from None
    if not hasattr(trt, "Builder"):
        raise SrtrtError(f"the installed `tensorrt` package has no TensorRT in it: {INSTALL_HINT}")
    return trt


def require_cuda():
    """torch with a visible CUDA GPU, or one SrtrtError line."""
    import torch

    if not torch.cuda.is_available():
        raise SrtrtError(f"no CUDA GPU is visible (torch {torch.__version__}): TensorRT builds an engine on the GPU "
                         f"that will run it; {INSTALL_HINT}")
    return torch


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt) -> int:
    """Strongly typed on TensorRT 10 (an opt-in flag there); 0 on 11+, where it is always on."""
    flags = 0
    if trt_major(trt) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


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


def plugin_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


def plugin_mode(model) -> str:
    """none (no plugin nodes), jit or aot (every node says so), or unset (missing or mixed `aot`)."""
    from onnx import helper

    nodes = plugin_nodes(model)
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

    if mode not in ("jit", "aot"):
        raise ValueError(f"plugin mode must be jit or aot, not {mode!r}")
    wanted = {"aot": int(mode == "aot"), "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": "1"}
    for n in plugin_nodes(model):
        keep = [a for a in n.attribute if a.name not in wanted]
        del n.attribute[:]
        n.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in wanted.items()])


def onnx_metadata(model) -> dict:
    """The srtrt metadata engine/toolchain/export.py writes (keys without their "srtrt." prefix)."""
    prefix = "srtrt."
    return {p.key[len(prefix):]: p.value for p in model.metadata_props if p.key.startswith(prefix)}


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


def build_serialized(onnx_path, profile: Profile, *, opt_level: int = 3, workspace: int | None = None,
                     timing_cache: Path | None = None, progress: bool = True, verbose: bool = False,
                     out=None) -> bytes:
    """Parse `onnx_path`, build one engine for `profile`, return the serialized plan.

    Registers the PixelShufflePReLU plugin first when the graph has such nodes. Parser errors
    are printed one per line (to `out`, default stderr) and raise SrtrtError.
    """
    import onnx

    from srtrt.engine.toolchain.onnx_io import check_external_data

    out = out or sys.stderr
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    check_external_data(model, onnx_path)  # the parser would follow external-data paths anywhere
    mode = plugin_mode(model)
    if mode == "unset":
        raise SrtrtError(f"{PLUGIN_OP} nodes must all carry aot=0 or aot=1", onnx_path)
    if mode != "none":
        from srtrt.kernels import trt_plugin

        has_aot = trt_plugin.register()
        if mode == "aot" and not has_aot:
            raise SrtrtError(f"TensorRT {trt.__version__} has no AOT Python plugins (10.9 or newer has): "
                             f"build with the JIT plugin or without the plugin", onnx_path)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            where = err.node_name() or err.node_operator() or f"node {err.node()}"
            print(f"{onnx_path.name}: {where}: {err.desc()}", file=out)
        raise SrtrtError(f"TensorRT could not parse the ONNX ({parser.num_errors} error(s) above)", onnx_path)
    if network.num_inputs != 1:
        raise SrtrtError(f"expected one network input, found {network.num_inputs}", onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace or _workspace_limit())
    config.builder_optimization_level = int(opt_level)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"  timing cache {timing_cache} not usable; starting a new one", file=out)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)

    prof = builder.create_optimization_profile()
    prof.set_shape(network.get_input(0).name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(prof)

    monitor = _progress_monitor(trt, out) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SrtrtError("TensorRT could not build the engine (see TensorRT's messages above)", onnx_path)
    if timing_cache is not None:
        data = config.get_timing_cache().serialize()
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(timing_cache).with_name(Path(timing_cache).name + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, timing_cache)
    return bytes(plan)


# ---------------------------------------------------------------------------------------------
# srtrt build


def _checked(name: str, value: int, lo: int, hi: int | None = None) -> int:
    if value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise SrtrtError(f"--{name} must be {allowed}, got {value}")
    return value


def prepare_onnx(workdir: Path, *, model: str | None = None, onnx_path: str | None = None,
                 precision: str = "fp16", plugin: str = "aot") -> tuple[Path, dict]:
    """The ONNX the builder gets, written under `workdir`, and facts about it.

    From a checkpoint (`model`, None = the embedded one): exported at `precision`, fused unless
    `plugin == "none"`, with every plugin node set to `plugin`. From `onnx_path`: taken as it
    is, except that plugin nodes without an `aot` choice get `plugin` (or refuse "none").
    Returns (path, {"sha256", "precision", "plugin", "scale", "radius", "source", "io"}).
    """
    import onnx

    workdir = Path(workdir)
    if onnx_path is not None:
        src = Path(onnx_path)
        if not src.is_file():
            raise SrtrtError("ONNX file not found", src)
        try:
            m = onnx.load(str(src))
        except Exception as e:
            raise SrtrtError(f"not a readable ONNX model ({e.__class__.__name__})", src) from None
        meta = onnx_metadata(m)
        sha = meta.get("model_sha256") or engine_cache.file_sha256(src)
        got = onnx_precision(m)
        if got != precision:
            raise SrtrtError(f"the graph is {got} but --precision {precision} was asked: pass --precision {got}, "
                             f"or export with `srtrt export --precision {precision}`", src)
        mode = plugin_mode(m)
        if mode == "unset":
            if plugin == "none":
                raise SrtrtError(f"the graph has {PLUGIN_OP} nodes; build it with the plugin, or export without "
                                 f"--fused", src)
            set_plugin_mode(m, plugin)
            mode = plugin
        path = workdir / src.name
        onnx.save(m, str(path))
        facts = {"sha256": sha, "precision": got, "plugin": mode, "scale": int(meta.get("scale", 4)),
                 "radius": int(meta["radius"]) if "radius" in meta else None, "source": str(src.resolve())}
    else:
        import srtrt
        from srtrt.engine.toolchain.export import export_onnx

        view = srtrt.load_model(model)
        path = export_onnx(view, workdir / "model.onnx", precision=precision, fused=plugin != "none",
                           aot=plugin == "aot")
        m = onnx.load(str(path))
        if plugin != "none" and plugin_mode(m) != plugin:
            raise SrtrtError(f"the fused export does not have {PLUGIN_OP} nodes with aot={int(plugin == 'aot')}", path)
        got = onnx_precision(m)
        if got != precision:
            raise SrtrtError(f"export gave a {got} graph, {precision} was asked", path)
        facts = {"sha256": view.checkpoint_sha256, "precision": got, "plugin": plugin_mode(m), "scale": view.scale,
                 "radius": view.radius, "source": str(model) if model else "embedded default model"}
    facts["io"] = onnx_io(m)
    return Path(path), facts


def build(*, model: str | None = None, onnx_path: str | None = None, precision: str = "fp16",
          tile: int | None = None, margin: int | None = None, max_batch: int = DEFAULT_BATCH, opt_level: int = 3,
          plugin: str = "aot", output: str | None = None, progress: bool = True, out=None) -> tuple[Path, EngineKey]:
    """Build an engine for this GPU and put it in the cache (and at `output` when given).

    `plugin`: "aot" (default), "jit" or "none" (stock DepthToSpace + PRelu layers).
    Returns (cached plan path, key).
    """
    out = out or sys.stderr
    trt = import_tensorrt()
    require_cuda()
    if plugin not in engine_cache.PLUGIN_MODES:
        raise SrtrtError(f"plugin must be one of {engine_cache.PLUGIN_MODES}, not {plugin!r}")
    max_batch = _checked("max-batch", int(max_batch), 1)
    opt_level = _checked("opt-level", int(opt_level), 0, 5)
    gpu_name, cc = engine_cache.gpu_identity()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="srtrt-build-") as tmp:
        path, facts = prepare_onnx(Path(tmp), model=model, onnx_path=onnx_path, precision=precision, plugin=plugin)
        radius = facts["radius"]
        if margin is None and radius is None:
            raise SrtrtError("the ONNX has no receptive-field radius in its metadata: pass --margin", path)
        margin = _checked("margin", int(radius if margin is None else margin), 0)
        core = _checked("tile", int(DEFAULT_CORE if tile is None else tile), 1)
        window = core + 2 * margin
        profile = profile_for(window, max_batch)
        key = EngineKey(facts["sha256"], facts["precision"], profile, facts["plugin"], gpu_name, cc, str(trt.__version__))
        print(f"building a TensorRT {trt.__version__} engine for {key.gpu}: {key.precision}, plugin {key.plugin}, "
              f"{profile}", file=out, flush=True)
        timing = engine_cache.timing_cache_path(gpu_name, cc, str(trt.__version__))
        plan = build_serialized(path, profile, opt_level=opt_level, timing_cache=timing, progress=progress, out=out)
    import srtrt

    info = {"scale": facts["scale"], "radius": radius, "margin": margin, "core": core, "io": facts["io"],
            "source": facts["source"], "opt_level": opt_level, "build_seconds": round(time.monotonic() - started, 1),
            "srtrt_version": srtrt.__version__}
    cached = engine_cache.store(key, plan, info)
    if output:
        engine_cache.write_plan(Path(output), key, plan, info)
    return cached, key


def main(args) -> int:
    """`srtrt build` (flags parsed in srtrt/cli.py)."""
    plugin = getattr(args, "plugin", None) or ("none" if args.no_plugin else "aot")
    started = time.monotonic()
    path, key = build(model=args.model, onnx_path=args.onnx, precision=args.precision, tile=args.tile,
                      margin=args.margin, max_batch=args.max_batch, opt_level=args.opt_level, plugin=plugin,
                      output=args.output)
    size = path.stat().st_size / 2**20
    print(f"built {path} ({size:.1f} MiB) in {time.monotonic() - started:.0f} s: {key.precision}, plugin {key.plugin}, "
          f"{key.profile}, {key.gpu}, TensorRT {key.trt_version}")
    if args.output:
        print(f"also written to {args.output} (with {Path(args.output).with_suffix('.json').name})")
    return 0
