"""int8 for the CPU: activation ranges measured on photos, and the QDQ graph OpenVINO runs in int8.

`calibrate` runs the folded fp32 network on LR photos and records, for each convolution the
architecture lets run in int8 (registry `int8_convs`: for srtrt's networks all but the RGB head),
the range of its input. `quantize_onnx` turns an `srtrt
export` graph into the standard ONNX QDQ form: each such conv reads its input through
QuantizeLinear -> DequantizeLinear (uint8, one scale per tensor, from that range) and its weights
as int8 with one scale per output channel. OpenVINO folds each pair into an int8 convolution
(VNNI / AMX); everything else stays in bf16 or f32. The ranges belong to the model, so they are
kept in its checkpoint sidecar (`int8_calibration`), and the quality guard judges the result.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from srtrt import registry
from srtrt.engine.backends.agreement import AGREEMENT_DB
from srtrt.errors import SrtrtError
from srtrt.nets import CommunityView

WEIGHT_PREFIX = "generator."   # the exporter names a conv's weight after the module: generator.<conv>.weight


def no_calibration(model) -> str:
    """Why int8 cannot run `model` (a path or an embedded model's name; None: not known), with the
    command that fixes it."""
    return f"this model has no int8 calibration (srtrt calibrate PHOTOS --model {model or 'MODEL'} measures one)"


DEFAULT_IMAGES = 16  # photos calibrated on: what the shipped models used (16 of the 91 training photos)
# The form of the QDQ graph quantize_onnx writes; a new form is a new cached graph and a new timing.
# 2: a PRelu between int8 convs written as Max (_prelu_as_max). 3: not after a bias-less conv.
# 4: quantised from a graph whose nodes own their constants (export.own_constants), so a PRelu whose
# slope equalled another's is rewritten too.
QDQ_FORM = 4


def calibrate(view, images: Iterable[torch.Tensor], source: str = "", agreement_db: float | None = None) -> dict:
    """Input range of every int8 conv over `images` (1x3xHxW LR tensors in [0, 1]): the record
    `srtrt calibrate` writes into the checkpoint sidecar. `agreement_db` (a community model, judged
    by agreement with its fp32 output): the convs whose rounding would cost that agreement are left
    in float (mixed_int8.py) and named in the record's "float"."""
    images = list(images)
    arch = registry.of(view.generator)
    generator = arch.fold_batchnorm(copy.deepcopy(view.generator))  # the graph export writes
    names = arch.int8_convs(generator)
    modules = dict(generator.named_modules())
    lo, hi = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)  # 0 stays inside: uint8 zero points need it
    ran: list[str] = []  # in the order they first ran

    def observe(name):
        def hook(_module, inputs):
            if name not in ran:
                ran.append(name)
            lo[name] = min(lo[name], inputs[0].min().item())
            hi[name] = max(hi[name], inputs[0].max().item())
        return hook

    hooks = [modules[n].register_forward_pre_hook(observe(n)) for n in names]
    folded, count = view.with_generator(generator).eval(), 0
    try:
        with torch.inference_mode():
            for x in images:
                folded(x)
                count += 1
    finally:
        for h in hooks:
            h.remove()
    if count == 0:
        raise SrtrtError("no images to calibrate on")
    # A conv that never ran has no range (SPAN's training-time branches; inference runs their sum).
    # A community network's first and last convs in running order read and write the image: they stay
    # in float whatever order its class defines them in (srresnet's tail is int8 by measurement, registry;
    # an unknown network's last conv is not, its rounding reaching the image undamped). A colour transform
    # before or after them (RCAN's mean shifts: fixed 1x1 convs) stays in float with them: counted as the
    # first and last, they put the conv that reads the image in int8.
    if arch is registry.COMMUNITY:
        lead, trail = _colour_transforms(ran, modules), _colour_transforms(ran[::-1], modules)
        kept = ran[lead + 1:len(ran) - trail - 1]
    else:
        kept = [n for n in names if n in ran]
    record = {"method": "min-max", "images": count, "source": source, "date": datetime.date.today().isoformat(),
              "ranges": {n: [round(lo[n], 6), round(hi[n], 6)] for n in kept}}
    if agreement_db is not None and record["ranges"]:
        from srtrt.engine.toolchain.mixed_int8 import keep_in_float, selection_images

        facts = view.facts
        chosen = keep_in_float(view, generator, record["ranges"],
                               selection_images(images, facts.channels, facts.multiple_of, facts.minimum), agreement_db)
        record.update(chosen)  # ranges: those left in int8, in running order still
    return record


def _colour_transforms(ran: list[str], modules: dict) -> int:
    """How many of the convs at the start of `ran` are colour transforms: 1x1, as many channels out as
    in, and at most 4 (an image's), like RCAN's MeanShift."""
    count = 0
    for name in ran:
        conv = modules[name]
        if tuple(conv.kernel_size) != (1, 1) or conv.in_channels != conv.out_channels or conv.in_channels > 4:
            break
        count += 1
    return count


def describe_selection(calibration: dict) -> str:
    """What mixed_int8 chose for a community model's calibration, in one line. The convs that read
    and write the image (the first and last to run, colour transforms beside them) are never candidates."""
    int8, floated = len(calibration["ranges"]), len(calibration.get("float", []))
    agrees = f"int8 simulated to agree with fp32 to {calibration['simulated_db']:.1f} dB (wanted {calibration['target_db']:.1f})"
    kept = f", {floated} more kept in float to reach it" if floated else ""
    return f"{agrees}: {int8} convs in int8{kept} (those that read and write the image are in float always)"


def usable_calibration(record) -> bool:
    """Whether a stored calibration has the shape quantize_onnx reads, {"ranges": {conv: [lo, hi]}} of
    finite numbers: a sidecar edited or damaged into another shape is not one (it was a KeyError), nor
    one that puts no conv in int8 (its "int8" graph was the float one, timed and picked as int8)."""
    ranges = record.get("ranges") if isinstance(record, dict) else None
    return isinstance(ranges, dict) and bool(ranges) and isinstance(record.get("float", []), list) and all(
        isinstance(bounds, list) and len(bounds) == 2 and
        all(type(x) in (int, float) and math.isfinite(x) for x in bounds) for bounds in ranges.values())


def calibration_digest(calibration: dict) -> str:
    """A short name for one calibration's ranges (cache file names)."""
    return hashlib.sha256(json.dumps(calibration["ranges"], sort_keys=True).encode()).hexdigest()[:8]


def int8_graph_tag(calibration: dict) -> str:
    """What names one int8 graph in caches (ONNX files, timings, agreement): its ranges and its form."""
    return f"{calibration_digest(calibration)}-q{QDQ_FORM}"


def activation_qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return np.float32(scale), np.uint8(np.clip(round(-lo / scale), 0, 255))


def weight_qparams(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: the largest |w| of each channel maps to 127."""
    scale = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(weight / scale.reshape(-1, *([1] * (weight.ndim - 1)))), -127, 127).astype(np.int8)
    return q, scale


def quantize_onnx(model, calibration: dict) -> int:
    """Rewrite an exported fp32 ONNX model (in place) into QDQ form for the calibrated convs;
    returns how many convs were rewritten. Refuses a graph that lacks a calibrated conv."""
    from onnx import helper, numpy_helper

    ranges = calibration["ranges"]
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes, done = [], set()
    for node in graph.node:
        conv = node.input[1].removeprefix(WEIGHT_PREFIX).removesuffix(".weight") if node.op_type == "Conv" else None
        if conv in ranges and node.input[1] in initializers:
            p = f"{node.name}_int8"
            x_scale, x_zero = activation_qparams(*ranges[conv])
            w_q, w_scale = weight_qparams(numpy_helper.to_array(initializers[node.input[1]]))
            graph.initializer.extend([
                numpy_helper.from_array(np.array(x_scale), f"{p}_x_scale"),
                numpy_helper.from_array(np.array(x_zero), f"{p}_x_zero"),
                numpy_helper.from_array(w_q, f"{p}_w"),
                numpy_helper.from_array(w_scale, f"{p}_w_scale"),
                numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), f"{p}_w_zero"),
            ])
            nodes += [
                helper.make_node("QuantizeLinear", [node.input[0], f"{p}_x_scale", f"{p}_x_zero"], [f"{p}_xq"],
                                 name=f"{p}_quantize"),
                helper.make_node("DequantizeLinear", [f"{p}_xq", f"{p}_x_scale", f"{p}_x_zero"], [f"{p}_x"],
                                 name=f"{p}_dequantize"),
                helper.make_node("DequantizeLinear", [f"{p}_w", f"{p}_w_scale", f"{p}_w_zero"], [f"{p}_wf"],
                                 name=f"{p}_weights", axis=0),
            ]
            node.input[0], node.input[1] = f"{p}_x", f"{p}_wf"
            done.add(conv)
        nodes.append(node)
    if missing := sorted(set(ranges) - done):
        raise SrtrtError(f"the int8 calibration names convs this graph lacks ({', '.join(missing[:3])})")
    del graph.node[:]
    graph.node.extend(_prelu_as_max(nodes, initializers))
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]  # the fp32 weights the int8 ones replace
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(done)


def _prelu_as_max(nodes: list, initializers: dict) -> list:
    """PRelu(x, a) between two int8 convs written as Max(x, a * x): the same values for slopes a <= 1.

    OpenVINO's CPU plugin fuses a PRelu and the next conv's QuantizeLinear into the int8 conv before
    them (per-channel PReLU and requantize to u8 as post-ops). On AMX the plugin then runs that conv on
    jit_avx512_I8 (VNNI) instead of brgconv_avx512_amx_I8: half the int8 time of the default model on
    an AMX Xeon went to such convs (bench/results/openvino-profile-cpu-intel-r-xeon-r-processor-f6m207-2c.json),
    while every conv that writes bf16 ran on AMX. x read twice is not a post-op the plugin fuses, so the
    conv writes bf16 and the Max joins the quantize in one element-wise subgraph. A channel with a
    slope above 1 keeps the PRelu (there max picks the wrong branch). On that Xeon every int8 conv
    then ran on AMX: 1172-1249 against 1438 ms a 384x512 window (bf16 1721 ms; the element-wise
    subgraphs grew from 100 to 214 ms). Neutral on a CPU without AMX (AMD Zen 4: 1260 against
    1292 ms, Set5 delta -0.0442 against -0.0437 dB).

    A conv without a bias (or with an all-zero one, which OpenVINO drops) keeps the PRelu too:
    OpenVINO 2026.4's dynamic-shape model scales such a conv's output by its dequantize scales once
    more when Mul and Max both read it (its static model and onnxruntime are right), which took a
    Compact with zero biases from 44 to 18 dB against fp32 (tests/test_quantize.py)."""
    from onnx import helper, numpy_helper

    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    def has_bias(conv) -> bool:
        bias = initializers.get(conv.input[2]) if len(conv.input) > 2 else None
        return bias is not None and bool(numpy_helper.to_array(bias).any())

    int8_outputs = {node.output[0] for node in nodes
                    if node.op_type == "Conv" and node.input[0].endswith("_int8_x") and has_bias(node)}
    def between_int8_convs(node) -> bool:
        slope = initializers.get(node.input[1]) if node.op_type == "PRelu" else None
        after = consumers.get(node.output[0], [])
        return (slope is not None and node.input[0] in int8_outputs and bool(after)
                and all(c.op_type == "QuantizeLinear" for c in after) and numpy_helper.to_array(slope).max() <= 1)

    rewritten = []
    for node in nodes:
        if not between_int8_convs(node):
            rewritten.append(node)
            continue
        scaled = f"{node.output[0]}_ax"
        rewritten += [helper.make_node("Mul", [node.input[0], node.input[1]], [scaled], name=f"{node.name}_ax"),
                      helper.make_node("Max", [node.input[0], scaled], [node.output[0]], name=f"{node.name}_max")]
    return rewritten


def lr_photos(folder: str | Path, scale: int, limit: int = DEFAULT_IMAGES, channels: int = 3, multiple_of: int = 1,
              minimum: int = 1, max_pixels: int | None = None) -> Iterator[torch.Tensor]:
    """The first `limit` readable photos of `folder`, bicubic-downscaled by `scale` (torch, antialiased:
    within about one 8-bit level of the PIL downscale training's LR inputs get; 1x3xHxW in [0, 1];
    a grey network, `channels` 1, gets each colour channel as a
    plane), cropped to the network's `multiple_of`; one smaller than its `minimum` side is passed
    over. A file that cannot be read is reported on one line and skipped. `max_pixels`: as `srtrt run`
    takes it (None: the decompression-bomb guard's default, 0: no limit)."""
    from srtrt.engine.batch.options import decode_limit
    from srtrt.engine.datapath.imageio import images_in, read_image
    from srtrt.engine.datapath.runtime import to_network_input

    used, skipped, small = 0, 0, 0
    for path in images_in(folder):
        if used == limit:
            return
        try:
            image = read_image(path, **decode_limit(max_pixels))
        except SrtrtError as e:
            print(f"srtrt: {e} (skipped)", file=sys.stderr)
            skipped += 1
            continue
        pixels = torch.from_numpy(image.pixels.astype(np.float32))[None]
        x = to_network_input(pixels, image.pixels.shape[2], float(2 ** image.bit_depth - 1), channels)
        if min(x.shape[-2:]) < max(2, minimum) * scale:
            small += 1
            continue  # too small to downscale (or for the network): nothing to measure
        lr = torch.nn.functional.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        h, w = (side // multiple_of * multiple_of for side in lr.shape[-2:])
        if min(h, w) < minimum:
            small += 1
            continue
        used += 1
        yield lr[..., :h, :w]
    if used == 0:
        side = max(2, minimum) * scale
        why = [f"{skipped} skipped above, each for the cause its line gives"] if skipped else []
        why += [f"{small} under {side} pixels a side"] if small else []
        raise SrtrtError(f"no photo to calibrate on ({'; '.join(why)}; "
                         f"photos of at least {side} pixels a side are needed)", folder)


LOST_CALIBRATION = ("the cache cannot keep the calibration, so it would be gone when this command ends: "
                    "set SRTRT_CACHE to a folder srtrt can write")


def main(args) -> int:
    """`srtrt calibrate DIR`: measure the int8 ranges of --model on the photos in DIR, into its sidecar
    (a community model file has none: the ranges are kept by its sha256, zoo.store_calibration)."""
    import srtrt
    from srtrt import checkpoint, zoo
    from srtrt.cache import outlives_this_process

    if args.images is not None and args.images < 1:
        raise SrtrtError(f"--images {args.images}: calibrate on at least one photo")
    if getattr(args, "max_pixels", None) is not None and args.max_pixels < 0:
        raise SrtrtError(f"--max-pixels must be an integer >= 0 (0: no limit), not {args.max_pixels}")
    # Rewriting the installed sidecar would turn the model's int8 off until a reinstall (the guard's figures
    # name the ranges they were measured with). A path to the packaged files is taken as meant: how they are made.
    if checkpoint.names_embedded(args.model):
        weights, sidecar = checkpoint.model_files(args.model)[1:]
        raise SrtrtError(f"the embedded model {checkpoint.model_label(args.model)} comes with the int8 ranges its "
                         f"quality-guard figures were measured with; to calibrate on other photos, copy {weights} and "
                         f"{sidecar} elsewhere and pass --model COPY")
    view = srtrt.load_model(args.model, getattr(args, "allow_noncommercial", False))
    facts = view.facts
    community = isinstance(view, CommunityView)
    if not community:  # the ranges go into its sidecar: a folder that takes no file is said before the work
        from srtrt.outputs import check_writable_folder

        check_writable_folder(checkpoint.sidecar_of(args.model))
    photos = lr_photos(args.photos, view.scale, args.images or DEFAULT_IMAGES, facts.channels, facts.multiple_of,
                       facts.minimum, getattr(args, "max_pixels", None))
    record = calibrate(view, photos, source=Path(args.photos).name, agreement_db=AGREEMENT_DB if community else None)
    if not record["ranges"] and not record.get("float"):
        raise SrtrtError("the model has no conv between the two that read and write the image: nothing to run in "
                         "int8", args.model)
    if community:
        where = zoo.store_calibration(view.checkpoint_sha256, record)
        if not outlives_this_process(where):  # a cache srtrt cannot write: its line said why
            failed = SrtrtError(LOST_CALIBRATION)
            failed.exit_code = 1
            raise failed
    else:
        where = checkpoint.update_meta(args.model, "int8_calibration", record)
    print(f"calibrated {len(record['ranges'])} convs on {record['images']} photos of {args.photos}: {where}")
    if "simulated_db" in record:
        print(describe_selection(record))
    return 0
