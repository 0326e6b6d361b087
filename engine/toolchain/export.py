"""Export the inference view (RGB [0,1] in and out) to one ONNX file.

The graph has input "lr" (N, 3, H, W) and output "sr" (N, 3, H*s, W*s), dynamic N, H, W,
in fp32 or fp16 (the dtypes decide TensorRT's precision). BatchNorm is folded into the
convolutions before tracing (the registry's fold_batchnorm), so with either exporter each conv's weight
keeps its module's name, which the int8 rewrite finds it by. `fused=True` replaces each DepthToSpace(CRD) ->
PRelu pair with one `srtrt::PixelShufflePReLU` node (kernels/fused_op.py), which TensorRT
matches to the Triton plugin and onnxruntime runs through engine/toolchain/ort_custom_op.py;
`unfuse_pixel_shuffle_prelu` turns such nodes back into the two stock ops. Model provenance
goes into the file's metadata_props (engine/toolchain/onnx_io.py's `metadata` reads it back).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import re
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from srtrt import atomic
from srtrt.engine.datapath.tiles import allowed_side
from srtrt.engine.toolchain.onnx_io import META_PREFIX
from srtrt.errors import CannotWrite, SrtrtError, shown
from srtrt.kernels import fused_op
from srtrt.nets import CommunityView

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}  # int8: fp32 I/O, QDQ convs
EXAMPLE_SHAPE = (2, 3, 32, 32)  # tracing input; batch > 1 so torch.export keeps it symbolic


# What the exported graph looks like beyond the model's values; a cached graph of another form is
# exported again. 2: no small constant shared between nodes (own_constants).
GRAPH_FORM = 2
SMALL_CONSTANT_BYTES = 1 << 16  # biases, slopes, scales: copied for each reader (own_constants); weights stay shared
NEEDS_ONNX = "ONNX export needs onnx and onnxscript (pip install 'srtrt[onnx]')"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise SrtrtError(NEEDS_ONNX) from None
    return onnx


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A hash of the weights for models that did not come from a checkpoint file."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter reports progress on stdout and logs notes about unrelated optional
    packages; `srtrt export` prints its own one line instead. Real warnings still show."""
    # onnxscript's version converter logs its fallback, and a failed conversion with a traceback:
    # the opset written is checked instead (_checked_opset)
    logs = {logging.getLogger("torch.onnx"): logging.ERROR, logging.getLogger("onnxscript"): logging.CRITICAL}
    levels = {log: log.level for log in logs}
    # An application's own threads go on printing and warning meanwhile: stdout is dropped for this
    # thread alone, and only warnings the libraries raise are ignored (filters are process-wide).
    ours = [("ignore", None, category, re.compile(_EXPORTING_MODULES), 0)
            for category in (FutureWarning,  # torch-internal deprecations
                             DeprecationWarning,  # "legacy TorchScript-based export": chosen knowingly
                             # tracing notes about community networks that cache fused weights as plain
                             # attributes in forward: the exported graph is checked by running it
                             UserWarning)]
    for log, quiet in logs.items():
        log.setLevel(quiet)
    quiet_stdout = _ThreadQuiet(sys.stdout)
    sys.stdout = quiet_stdout
    warnings.filters[:0] = ours
    warnings._filters_mutated()
    try:
        yield
    finally:
        for log, level in levels.items():
            log.setLevel(level)
        if sys.stdout is quiet_stdout:  # else the application replaced it meanwhile: theirs stands
            sys.stdout = quiet_stdout.stream
        for f in ours:  # only these: a filter the application added meanwhile stays
            with contextlib.suppress(ValueError):
                warnings.filters.remove(f)
        warnings._filters_mutated()


# where the exporter's warnings come from: torch, ONNX tools, the network's own code, this module's call
_EXPORTING_MODULES = (r"(torch|onnx|onnxscript|onnxruntime|spandrel|spandrel_extra_arches)(\.|$)"
                      r"|srtrt\.engine\.toolchain\.export$")


class _ThreadQuiet:
    """stdout for the exporting thread dropped; every other thread's writes go through."""

    def __init__(self, stream):
        self.stream, self._thread = stream, threading.current_thread()

    def write(self, text: str) -> int:
        if threading.current_thread() is self._thread or self.stream is None:
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def example_shape(view: torch.nn.Module) -> tuple[int, int, int, int]:
    """The tracing input: batch 2, the model's channels, a side its size requirements allow."""
    facts = view.facts
    side = allowed_side(EXAMPLE_SHAPE[2], facts.multiple_of, facts.minimum)
    return EXAMPLE_SHAPE[0], facts.channels, side, side


LEGACY_OPSET = 17


def _to_onnx(view: torch.nn.Module, dtype: torch.dtype, opset: int | None, dynamic: bool, input_shape,
             exporter: str = "dynamo"):
    from srtrt import registry

    model = copy.deepcopy(view).eval()
    registry.of(model.generator).fold_batchnorm(model.generator)
    model = model.to("cpu", dtype)  # traced on the CPU, whatever the device
    example = torch.rand(input_shape or example_shape(view), dtype=torch.float32).to(dtype)
    if exporter == "torchscript":
        return _to_onnx_torchscript(model, example, opset, dynamic)
    try:
        import onnxscript  # noqa: F401  (torch.export's ONNX exporter needs it; 0.6 s to import, not paid by tracing)
    except ImportError:
        raise SrtrtError(NEEDS_ONNX) from None
    shapes = None
    if dynamic:
        Dim = torch.export.Dim
        shapes = ({0: Dim("batch"), 2: Dim("height"), 3: Dim("width")},)  # per positional input
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                    opset_version=opset, external_data=False, optimize=True,
                                    verbose=False)
    return _checked_opset(program.model_proto, opset)


def own_constants(model) -> int:
    """Give each node its own copy of every small constant it reads, as the PyTorch module has
    its own parameters (in place); returns how many initializers were added.

    The exporters keep one initializer for equal tensors (the TorchScript one reads it through
    Identity nodes), so a Compact whose PReLU slopes are all 0.25 and whose biases are all zero
    gets one slope and one bias for all of its layers. OpenVINO's CPU plugin fuses a PReLU into
    the conv before it only where the slope has that one reader: shared, each PReLU ran on its
    own with a layout reorder on either side, 1.92 s against 1.34 s a 384x512 fp32 window on an
    AVX2 EPYC (bench/README.md). An Identity of an initializer becomes an initializer of that
    name (a conv's weight keeps its module's name, which the int8 rewrite finds it by)."""
    graph = model.graph
    if any(a.HasField("g") or a.graphs for node in graph.node for a in node.attribute):
        return 0  # control flow: its subgraphs may read these names too (no SR network has any)
    initializers = {i.name: i for i in graph.initializer}
    copied, kept = [], []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copied.append(_renamed(initializers[node.input[0]], node.output[0]))
        else:
            kept.append(node)
    initializers.update((tensor.name, tensor) for tensor in copied)
    readers = Counter(name for node in kept for name in node.input if name in initializers)
    taken = {*initializers, *(name for node in kept for name in node.output), *(i.name for i in graph.input)}
    seen: Counter = Counter()
    for node in kept:
        for k, name in enumerate(node.input):
            source = initializers.get(name)
            if source is None or readers[name] < 2 or _bytes(source) > SMALL_CONSTANT_BYTES:
                continue
            seen[name] += 1
            if seen[name] > 1:  # the first reader keeps the original
                copy_name = f"{name}_{seen[name]}"
                while copy_name in taken:
                    copy_name += "_"
                taken.add(copy_name)
                node.input[k] = copy_name
                copied.append(_renamed(source, copy_name))
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    tensors = [i for i in [*graph.initializer, *copied] if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    return len(copied)


def _renamed(tensor, name: str):
    """A copy of the TensorProto `tensor` under another name (its bytes copied, not decoded)."""
    copied = type(tensor)()
    copied.CopyFrom(tensor)
    copied.name = name
    return copied


def _bytes(tensor) -> int:
    from onnx import helper

    return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _check_opset(opset: int | None) -> None:
    """--opset within what this onnx knows, before any export (a huge one failed in the converter with
    a traceback)."""
    from onnx.defs import onnx_opset_version

    if opset is not None and not 1 <= opset <= onnx_opset_version():
        raise SrtrtError(f"--opset {opset}: this onnx knows opsets 1 to {onnx_opset_version()}; choose one of "
                         "them, or leave --opset out")


def _checked_opset(model, opset: int | None):
    """The exporter falls back to its own opset when it cannot convert to the one asked: refuse
    rather than write a file of another opset."""
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        from onnx.defs import onnx_opset_version

        raise SrtrtError(f"--opset {opset}: the ONNX converter cannot bring this graph to opset {opset} (it stays "
                         f"at {written}; the newest this onnx knows is {onnx_opset_version()}): choose another, "
                         "or leave --opset out")
    return model


def _to_onnx_torchscript(model: torch.nn.Module, example: torch.Tensor, opset: int | None, dynamic: bool):
    """The TorchScript-based exporter: some community networks (SPAN: weights fused in forward)
    crash torch.export, while tracing them works."""
    import onnx

    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}}
    buffer = io.BytesIO()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes if dynamic else None, opset_version=opset or LEGACY_OPSET)
    return onnx.load_from_string(buffer.getvalue())


def _strip_trace_metadata(model) -> None:
    # Per-node stack traces and FX names: large, and they leak the exporting machine's paths.
    g = model.graph
    for item in (*g.node, *g.value_info, *g.input, *g.output, *g.initializer):
        del item.metadata_props[:]


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fuse_pixel_shuffle_prelu(model, aot: bool = True) -> int:
    """Replace DepthToSpace(CRD) -> PRelu pairs by one srtrt::PixelShufflePReLU node, in place.

    Returns the number of pairs fused. Slopes become 1-D (C or 1 values), which is what the
    kernel reads.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    producer = {out: i for i, n in enumerate(g.node) for out in n.output}
    uses = Counter(name for n in g.node for name in n.input)
    graph_outputs = {o.name for o in g.output}
    inits = {t.name: t for t in g.initializer}
    fused, dropped = {}, set()
    for i, prelu in enumerate(g.node):
        if prelu.op_type != "PRelu" or prelu.domain not in ("", "ai.onnx"):
            continue
        j = producer.get(prelu.input[0])
        d2s = g.node[j] if j is not None else None
        if (d2s is None or d2s.op_type != "DepthToSpace" or _attr(d2s, "mode", b"DCR") != b"CRD"
                or uses[d2s.output[0]] != 1 or d2s.output[0] in graph_outputs):
            continue  # DCR is a different permutation; a shared shuffle output must stay
        slope = prelu.input[1]
        if slope in inits:
            flat = slope + "_flat"
            if flat not in inits:
                inits[flat] = numpy_helper.from_array(numpy_helper.to_array(inits[slope]).reshape(-1), flat)
                g.initializer.append(inits[flat])
            slope = flat
        fused[i] = helper.make_node(
            fused_op.NAME, [d2s.input[0], slope], list(prelu.output), name=prelu.name + "_fused",
            domain=fused_op.NAMESPACE, upscale=int(_attr(d2s, "blocksize")), plugin_namespace=fused_op.NAMESPACE,
            plugin_version=fused_op.PLUGIN_VERSION, aot=int(aot))
        dropped.add(j)
    if not fused:
        return 0
    nodes = [fused.get(i, n) for i, n in enumerate(g.node) if i not in dropped]
    g.ClearField("node")
    g.node.extend(nodes)
    # Drop what the old pairs left behind: the shuffle outputs' shapes and unused 4-D slopes.
    used = {name for n in g.node for name in n.input}
    kept_vi = [vi for vi in g.value_info if vi.name in used or vi.name in graph_outputs]
    g.ClearField("value_info")
    g.value_info.extend(kept_vi)
    kept_init = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(kept_init)
    if not any(o.domain == fused_op.NAMESPACE for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(fused_op.NAMESPACE, fused_op.DOMAIN_VERSION))
    return len(fused)


def fused_nodes(model) -> list:
    """The graph's PixelShufflePReLU nodes, by op type alone as TensorRT's parser matches them."""
    return [n for n in model.graph.node if n.op_type == fused_op.NAME]


def unfuse_pixel_shuffle_prelu(model) -> int:
    """The inverse of `fuse_pixel_shuffle_prelu`, in place: each PixelShufflePReLU node becomes
    DepthToSpace(CRD) -> PRelu again, for builders without the plugin. Returns the count."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes, count = [], 0
    for n in g.node:
        if n.op_type != fused_op.NAME:
            nodes.append(n)
            continue
        x, slope = n.input[0], n.input[1]
        shuffled = f"{n.output[0]}_unfused_shuffle"
        slope_4d = f"{slope}_unfused"  # (C, 1, 1): PRelu broadcasts it over (N, C, H, W)
        if slope_4d not in inits:
            if slope in inits:
                values = numpy_helper.to_array(inits[slope]).reshape(-1, 1, 1)
                inits[slope_4d] = numpy_helper.from_array(values, slope_4d)
                g.initializer.append(inits[slope_4d])
            else:
                shape = f"{slope_4d}_shape"
                g.initializer.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), shape))
                nodes.append(helper.make_node("Reshape", [slope, shape], [slope_4d], name=f"{n.name}_slope"))
                inits[slope_4d] = None
        nodes.append(helper.make_node("DepthToSpace", [x], [shuffled], name=f"{n.name}_shuffle",
                                      blocksize=int(_attr(n, "upscale")), mode="CRD"))
        nodes.append(helper.make_node("PRelu", [shuffled, slope_4d], list(n.output), name=f"{n.name}_prelu"))
        count += 1
    if not count:
        return 0
    g.ClearField("node")
    g.node.extend(nodes)
    used = {name for node in g.node for name in node.input}
    kept = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(kept)
    kept_ops = [o for o in model.opset_import if o.domain != fused_op.NAMESPACE]
    del model.opset_import[:]
    model.opset_import.extend(kept_ops)
    _set_metadata(model, {"fused": False})
    props = [p for p in model.metadata_props if p.key != META_PREFIX + "aot"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    return count


def _set_metadata(model, meta: dict) -> None:
    from onnx import helper

    props = {p.key: p.value for p in model.metadata_props}
    props.update({META_PREFIX + k: str(v) for k, v in meta.items()})
    helper.set_model_props(model, props)


def export_onnx(view: torch.nn.Module, path, precision: str = "fp32", fused: bool = False,
                opset: int | None = None, dynamic: bool = True, *, aot: bool = True,
                input_shape: tuple[int, int, int, int] | None = None, polyphase: bool = False,
                exporter: str = "dynamo", float_graph: Path | None = None) -> Path:
    """Write `view` (an InferenceView: RGB [0,1] in and out) as one ONNX file at `path`.

    precision: "fp32" or "fp16" (weights and I/O in that dtype), or "int8" (fp32 I/O, the model's
    calibrated convs in QDQ form: engine/toolchain/quantize.py). fused: one
    PixelShufflePReLU node per upsample step (`aot` sets the node's TensorRT plugin mode).
    dynamic: symbolic batch, height and width; otherwise the graph is fixed at
    `input_shape` (default (2, 3, 32, 32), also the tracing input). polyphase: the last
    upsample step and the tail conv in their polyphase form (srtrt/nets.py `polyphase_tail`:
    same values, no full-resolution feature shuffle; what the OpenVINO backend runs).
    exporter: "dynamo" (torch.export) or "torchscript" (tracing; engine/toolchain/export_isolated.py
    falls back to it for networks torch.export cannot take). float_graph (int8 only): the fp32
    graph this function wrote for the same view with the same form (polyphase, dynamic or shape);
    its copy is quantised instead of tracing again (a trace costs seconds, the QDQ rewrite none).
    Written atomically.
    """
    onnx = _onnx()
    if precision not in PRECISIONS:
        raise SrtrtError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    path = Path(path)
    sha = getattr(view, "checkpoint_sha256", None) or state_dict_sha256(view)
    calibration = getattr(view, "int8_calibration", None)
    if precision == "int8" and not calibration:
        from srtrt.engine.toolchain.quantize import no_calibration

        model = getattr(view, "source", None)
        raise SrtrtError(no_calibration(model), model)
    if precision == "int8" and float_graph is not None:
        from srtrt.engine.toolchain.onnx_io import load_onnx, metadata

        model = load_onnx(float_graph)
        traced = metadata(model)
        if (traced.get("model_sha256"), traced.get("precision"), traced.get("polyphase"), traced.get("fused")) != (
                sha, "fp32", bool(polyphase), False):
            raise SrtrtError("is not this model's plain fp32 graph in the same form", float_graph)
    else:
        if polyphase:
            from srtrt import registry

            view = copy.deepcopy(view)
            registry.of(view.generator).polyphase_tail(view.generator)
        model = _to_onnx(view, PRECISIONS[precision], opset, dynamic, input_shape, exporter)
        _strip_trace_metadata(model)
        own_constants(model)
    if fused and fuse_pixel_shuffle_prelu(model, aot=aot) == 0:
        raise SrtrtError("no DepthToSpace -> PRelu pair to fuse in this model")
    if precision == "int8":
        from srtrt.engine.toolchain.quantize import quantize_onnx

        quantize_onnx(model, calibration)
    _set_metadata(model, {"model_sha256": sha, "scale": view.scale, "radius": view.radius,
                          "minimum": view.facts.minimum, "multiple_of": view.facts.multiple_of,
                          "graph_form": GRAPH_FORM, "precision": precision, "fused": bool(fused), "polyphase": bool(polyphase),
                          **({"aot": bool(aot)} if fused else {})})
    onnx.checker.check_model(model)
    save_onnx(model, path)
    return path


def export_for_runtime(view: torch.nn.Module, path, precision: str = "fp32", **form) -> Path:
    """export_onnx for the graph a CPU backend runs from the cache, traced by the quicker exporter.

    A first run waits on this export (its backend measurement needs the graph): the TorchScript
    exporter takes 0.2-1.3 s for SRResNet here, torch.export 3-6 s, and OpenVINO runs both graphs
    at the same speed and within 1e-5 of each other. Tracing records Python shape arithmetic as
    constants, which no op of the project's own networks has (tests/test_export.py runs the graph at
    a size it was not traced at); a community network's graph is checked for that in its child
    process (export_isolated.py, `quick`). Where this torch has no TorchScript exporter, or it fails,
    torch.export."""
    try:
        return export_onnx(view, path, precision, exporter="torchscript", **form)
    except Exception:  # whatever the legacy exporter raises, torch.export is the answer
        return export_onnx(view, path, precision, exporter="dynamo", **form)


def save_onnx(model, path) -> Path:
    """Write `model` as one self-contained file at `path`, atomically (srtrt.atomic)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, model.SerializeToString())
    except OSError as e:
        raise CannotWrite(e.strerror or str(e), path) from None
    return path


def main(args) -> int:
    """`srtrt export`: -o/--output, --overwrite, --model, --precision, --fused, --polyphase, --opset,
    --shape, --allow-noncommercial."""
    import srtrt
    from srtrt import checkpoint
    from srtrt.outputs import check_output_file, check_overwrite

    check_output_file(args.output, checkpoint.model_files(args.model))
    view = srtrt.load_model(args.model, getattr(args, "allow_noncommercial", False))
    if args.precision == "int8" and not view.int8_calibration:
        from srtrt.engine.toolchain.quantize import no_calibration

        raise SrtrtError(f"--precision int8: {no_calibration(args.model)}", args.model)
    community = isinstance(view, CommunityView)
    _check_opset(args.opset)
    shape = _fixed_shape(view, getattr(args, "shape", None))
    polyphase = _community_export_checks(view, args, shape) if community else args.polyphase
    check_overwrite(args.output, getattr(args, "overwrite", False))  # after what the options themselves refuse
    if community:
        path = Path(args.output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CannotWrite.of(e, path) from None
        try:
            export_community_view(view, path, args.precision, polyphase, shape)
        except SrtrtError as e:
            from srtrt.engine.toolchain.export_isolated import fails_untraced

            if shape is not None or not fails_untraced(e):
                raise
            step = view.facts.multiple_of
            raise SrtrtError(f"the {view.facts.architecture} model's dynamic-shape graph holds at the size it was traced "
                             "at only (its window partition): add --shape HxW in LR pixels"
                             + (f", multiples of {step}" if step > 1 else ""), args.model) from None
    else:
        path = export_onnx(view, args.output, precision=args.precision, fused=args.fused, opset=args.opset,
                           polyphase=polyphase, dynamic=shape is None, input_shape=shape)
    size = path.stat().st_size
    size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    form = (", fused" if args.fused else "") + (", polyphase" if polyphase else "")
    form += f", fixed at {shape[2]}x{shape[3]}" if shape else ""
    if community:
        what = f"{view.facts.architecture}, x{view.scale}, {'grey' if view.facts.channels == 1 else 'RGB'}, " \
               f"tile margin {view.radius}"
        if rules := _side_rules(view.facts):  # the graph takes no other input (no pad inside)
            what += f", input sides {' and '.join(rules)}"
    else:
        what = f"x{view.scale}, radius {view.radius}"
    print(f"wrote {shown(path)} ({args.precision}{form}, {what}, {size_text})")
    return 0


def _side_rules(facts) -> list[str]:
    return ([f"multiples of {facts.multiple_of}"] if facts.multiple_of > 1 else []) + \
        ([f"at least {facts.minimum}"] if facts.minimum > max(facts.multiple_of, 1) else [])


def export_community_view(view, path: Path, precision: str, polyphase: bool = False,
                          shape: tuple[int, int, int, int] | None = None) -> Path:
    """A community model (nets.CommunityView) to ONNX at `path`: `srtrt export` and `srtrt build`.
    In a child process, torch.export first, then the TorchScript tracer: some architectures (SPAN)
    crash torch.export with a signal, which would take this process down."""
    from srtrt.engine.toolchain.export_isolated import export_community

    return export_community(view, path, precision, polyphase, shape)


def _fixed_shape(view, text: str | None) -> tuple[int, int, int, int] | None:
    """`--shape HxW` as the graph's (1, C, H, W), checked against the model's size requirements and
    the largest image srtrt reads (a larger example input could not even be allocated)."""
    from srtrt.engine.datapath.imageio import DEFAULT_MAX_PIXELS

    if text is None:
        return None
    if not text:
        raise SrtrtError("--shape is empty (an unset variable?): give HxW in LR pixels, or leave it out")
    try:
        height, width = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise SrtrtError(f"--shape must be HxW in LR pixels (e.g. 64x64), not {text!r}") from None
    if height * width > DEFAULT_MAX_PIXELS:
        raise SrtrtError(f"--shape {height}x{width}: over the {DEFAULT_MAX_PIXELS:,} pixels of the largest image "
                         "srtrt reads by default")
    facts = view.facts
    step, smallest = max(facts.multiple_of, 1), max(facts.minimum, 1)
    if min(height, width) < smallest or height % step or width % step:
        raise SrtrtError(f"--shape {height}x{width}: this model needs sides of at least {smallest} LR pixels"
                         + (f", multiples of {step}" if step > 1 else ""))
    return 1, facts.channels, height, width


def _community_export_checks(view, args, shape=None) -> bool:
    """Refuse, in one line, what a community model's export cannot honour; returns whether the
    polyphase rewrite applies (it never changes a community network: say so, export it as it is)."""
    from srtrt import registry
    from srtrt.engine.toolchain.export_isolated import static_only

    arch, name = registry.of(view.generator), view.facts.architecture
    if shape is None and static_only(view):
        step = view.facts.multiple_of
        raise SrtrtError(f"the {name} model exports only at a fixed size (its window partition is traced at one): "
                         "add --shape HxW in LR pixels" + (f", multiples of {step}" if step > 1 else ""))
    if args.fused and not arch.upsample_steps(view.generator):
        raise SrtrtError(f"--fused: the {name} model has no conv -> PixelShuffle -> PReLU steps registered to fuse "
                         "(srtrt's own networks have); export without --fused")
    if refusal := view.facts.refusal(args.precision):
        raise SrtrtError(f"--precision {args.precision}: {refusal}; export fp32")
    if args.opset is not None:  # export_isolated's child picks the opset (torch's default, TorchScript's 17)
        raise SrtrtError("--opset is not supported for community models yet; leave it out")
    if args.polyphase and not arch.rewrites_tail:
        import sys

        print(f"srtrt: --polyphase changes nothing in the {name} model (no sub-pixel tail to rewrite): "
              "exported as it is", file=sys.stderr)
        return False
    return args.polyphase
