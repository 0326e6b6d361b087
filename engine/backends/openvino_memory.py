"""How much memory a compiled OpenVINO model's activations take, read from the model itself.

A window's size is chosen so its activations fit the CPU budget, and what one LR pixel costs
differs by model and by CPU: RRDBNet upsamples by nearest neighbour and convolves at x2 and x4,
so two 64-channel maps at the output's resolution are alive at once (8.2 KB per LR pixel in
f32), against 5.1 KB for srtrt's SRResNet, 0.6 KB for a Compact. An int8 graph keeps such layers
in float: bf16 where the CPU has it, f32 where it does not (AVX2), twice the bytes. A table per
precision was wrong for one model or one CPU whichever way it was set (issue 22: RRDBNet peaked at
3.87 GB on an AVX2 EPYC where the table expected bf16's half).

The CPU plugin's execution graph names each node's outputs and the precision it chose for them;
a buffer lives from the node that writes it to the last node that reads it, and the plugin's
memory solver packs all of them into one arena no smaller than the most alive at once. That peak
tracked the resident growth per window pixel measured with large windows within 5 % for RRDBNet
and SRResNet in f32 (bench/README.md).
"""
from __future__ import annotations

ITEM_BYTES = {"f32": 4, "i32": 4, "bf16": 2, "f16": 2, "u8": 1, "i8": 1, "u16": 2, "i16": 2, "i64": 8, "u1": 1}
CONSTANT_TYPES = {"Const", "Constant"}


def _text(info: dict, key: str) -> str:
    return info[key].astype(str) if key in info else ""


def peak_activation_bytes(compiled) -> int:
    """The most bytes of activations alive at one step of `compiled`'s execution (an openvino
    CompiledModel of static shape). Weights, and what the plugin computes from weights alone
    (their reorders), are not activations: they do not grow with the window."""
    ops = compiled.get_runtime_model().get_ordered_ops()
    constant: set[str] = set()
    buffers: dict[tuple[str, int], list[int]] = {}  # (node, output) -> [written at, last read at, bytes]
    for op in ops:
        info = op.get_rt_info()
        name, kind = op.get_friendly_name(), _text(info, "layerType")
        sources = [(i.get_source_output().get_node().get_friendly_name(), i.get_source_output().get_index())
                   for i in op.inputs()]
        if kind in CONSTANT_TYPES or (sources and all(node in constant for node, _ in sources)):
            constant.add(name)
            continue
        step = int(_text(info, "execOrder") or -1)
        for source in sources:
            if source in buffers:
                buffers[source][1] = max(buffers[source][1], step)
        precisions = [p.strip() for p in _text(info, "outputPrecisions").split(",")]
        for index, output in enumerate(op.outputs()):
            values = 1
            for dim in output.get_shape():
                values *= dim
            precision = precisions[index] if index < len(precisions) else "f32"
            buffers[name, index] = [step, step, values * ITEM_BYTES.get(precision, 4)]
    change: dict[int, int] = {}  # step -> bytes that come alive at it, less those freed after the step before
    for start, end, size in buffers.values():
        change[start] = change.get(start, 0) + size
        change[end + 1] = change.get(end + 1, 0) - size
    alive = peak = 0
    for step in sorted(change):
        alive += change[step]
        peak = max(peak, alive)
    return peak
