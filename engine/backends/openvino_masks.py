"""The OpenVINO graph that runs masks (datapath/sheets.py): every convolution's input multiplied
by a 0/1 mask at that convolution's resolution, one extra input per resolution.

In an int8 graph a convolution reads its input through FakeQuantize and the dequantising steps
after it; the mask multiplies what enters the FakeQuantize, so zeros quantise to the zero point
and the convolution stays int8 (AMX/VNNI). Measured on the AMX Xeon at 384x512, int8: the masked
graph took 1.01-1.03x the plain one's time, and with a mask of ones its output was bit-identical.
Not so for community models' int8 graphs (OpenVinoBackend.shares_sheets keeps their images apart).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

_DEQUANTISING = ("Multiply", "Subtract", "Convert")  # ONNX DequantizeLinear as OpenVINO reads it
_CONVOLUTIONS = ("Convolution", "GroupConvolution")


def mask_name(factor: Fraction) -> str:
    return f"srtrt_mask_{factor.numerator}_{factor.denominator}"


def _masked_port(conv):
    """The input port the mask multiplies: the FakeQuantize's in front of an int8 convolution, else the convolution's."""
    node = conv.input(0).get_source_output().get_node()
    while node.get_type_name() in _DEQUANTISING and node.get_input_size():
        node = node.input(0).get_source_output().get_node()
    return node.input(0) if node.get_type_name() == "FakeQuantize" else conv.input(0)


def with_masks(model, dims: list[int]) -> tuple[object, list[Fraction]]:
    """`model` reshaped to static `dims` (N, C, H, W) with the masks put in; the resolutions
    (layer height / H) its mask inputs are at, in input order after the image."""
    import openvino.opset13 as ops
    from openvino import PartialShape

    model = model.clone()
    model.reshape({model.inputs[0]: PartialShape(dims)})
    n, _, height, width = dims
    masks: dict[Fraction, object] = {}
    seen = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _CONVOLUTIONS:
            continue
        port = _masked_port(op)
        key = (port.get_node().get_friendly_name(), port.get_index())
        if key in seen:  # one FakeQuantize feeding several convolutions
            continue
        seen.add(key)
        source = port.get_source_output()
        shape = source.get_partial_shape()
        factor = Fraction(shape[2].get_length(), height)
        if Fraction(shape[3].get_length(), width) != factor:
            raise ValueError(f"a convolution's input {shape} is not the image's grid scaled evenly")
        if factor not in masks:
            parameter = ops.parameter([n, 1, int(height * factor), int(width * factor)], np.float32,
                                      name=mask_name(factor))
            parameter.output(0).get_tensor().set_names({mask_name(factor)})
            masks[factor] = parameter
        port.replace_source_output(ops.multiply(source, masks[factor]).output(0))
    model.add_parameters(list(masks.values()))
    model.validate_nodes_and_infer_types()
    return model, list(masks)
