"""How much memory a compiled OpenVINO model's activations take, read from the model itself.

A window's size is chosen so its activations fit the CPU budget, and what one LR pixel costs
differs by model and by CPU: RRDBNet upsamples by nearest neighbour and convolves at x2 and x4,
so two 64-channel maps at the output's resolution are alive at once (8.2 KB per LR pixel in
f32), against 5.1 KB for srtrt's SRResNet, 0.6 KB for a Compact. An int8 graph keeps such layers
in float: bf16 where the CPU has it, f32 where it does not (AVX2), twice the bytes. A table per
precision was wrong for one model or one CPU whichever way it was set (issue 22: RRDBNet peaked at
3.87 GB on an AVX2 EPYC where the table expected bf16's half).

The CPU plugin's execution graph names each node's outputs and the precision it chose for them;
a buffer lives from the node that writes it to the last node that reads it. How the plugin
places those buffers depends on whether their sizes are known when the model is compiled:

- static shapes: one arena, packed by its memory solver, no smaller than the most bytes alive at
  one step (`peak_activation_bytes`). That peak tracked the resident growth per window pixel
  measured with large windows within 5 % for RRDBNet and SRResNet in f32 (bench/README.md).
- dynamic shapes (`dynamic_activation_bytes`): no arena. The buffers, taken in order of their
  first step, go into the first group whose latest buffer's life does not overlap theirs; each
  group is one block, grown to its largest member (OpenVINO 2026.4's CPU plugin). So a block
  sized for a full-resolution map also sits under a small one, and the total exceeds the static
  peak: RRDBNet 10.9 KB per LR pixel in f32 against 8.2 KB (its resident growth: 12.9-13.1 KB).
  A dynamic-shape model's execution graph carries the shapes of its last inference, so it is
  read after one.
"""
from __future__ import annotations

from typing import NamedTuple

ITEM_BYTES = {"f32": 4, "i32": 4, "bf16": 2, "f16": 2, "u8": 1, "i8": 1, "u16": 2, "i16": 2, "i64": 8, "u1": 1}
CONSTANT_TYPES = {"Const", "Constant"}


class Buffer(NamedTuple):
    written: int    # execution step of the node that writes it
    last_read: int  # execution step of its last reader
    size: int       # bytes


def _text(info: dict, key: str) -> str:
    return info[key].astype(str) if key in info else ""


def activation_buffers(compiled) -> list[Buffer]:
    """The activation buffers of `compiled`'s execution (an openvino CompiledModel whose shapes are
    known: static, or dynamic after an inference). Weights, and what the plugin computes from
    weights alone (their reorders), are not activations: they do not grow with the window."""
    constant: set[str] = set()
    lives: dict[tuple[str, int], list[int]] = {}  # (node, output) -> [written at, last read at, bytes]
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        name, kind = op.get_friendly_name(), _text(info, "layerType")
        sources = [(i.get_source_output().get_node().get_friendly_name(), i.get_source_output().get_index())
                   for i in op.inputs()]
        if kind in CONSTANT_TYPES or (sources and all(node in constant for node, _ in sources)):
            constant.add(name)
            continue
        step = int(_text(info, "execOrder") or -1)
        for source in sources:
            if source in lives:
                lives[source][1] = max(lives[source][1], step)
        precisions = [p.strip() for p in _text(info, "outputPrecisions").split(",")]
        for index, output in enumerate(op.outputs()):
            values = 1
            for dim in output.get_shape():
                values *= dim
            precision = precisions[index] if index < len(precisions) else "f32"
            lives[name, index] = [step, step, values * ITEM_BYTES.get(precision, 4)]
    return [Buffer(*life) for life in lives.values()]


def arena_bytes(buffers: list[Buffer]) -> int:
    """The most bytes alive at one step: what a static-shape model's arena holds."""
    change: dict[int, int] = {}  # step -> bytes that come alive at it, less those freed after the step before
    for buffer in buffers:
        change[buffer.written] = change.get(buffer.written, 0) + buffer.size
        change[buffer.last_read + 1] = change.get(buffer.last_read + 1, 0) - buffer.size
    alive = peak = 0
    for step in sorted(change):
        alive += change[step]
        peak = max(peak, alive)
    return peak


def grouped_bytes(buffers: list[Buffer]) -> int:
    """What a dynamic-shape model's blocks hold: the buffers grouped as the plugin groups them
    (module docstring), each group as large as its largest buffer."""
    groups: list[list[Buffer]] = []
    for buffer in sorted(buffers):
        for group in groups:
            latest = group[-1]
            if latest.written > buffer.last_read or latest.last_read < buffer.written:
                group.append(buffer)
                break
        else:
            groups.append([buffer])
    return sum(max(buffer.size for buffer in group) for group in groups)


def peak_activation_bytes(compiled) -> int:
    """The activation bytes of a static-shape `compiled` model."""
    return arena_bytes(activation_buffers(compiled))


def dynamic_activation_bytes(compiled) -> int:
    """The activation bytes of a dynamic-shape `compiled` model at the shapes of its last inference."""
    return grouped_bytes(activation_buffers(compiled))
