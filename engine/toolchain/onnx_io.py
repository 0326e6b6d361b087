"""ONNX files are untrusted input: external-data references must stay inside the model's folder.

A tensor stored outside the .onnx file names its data file in `external_data["location"]`,
resolved relative to the model's folder by onnx and onnxruntime. A crafted file can point that
at an absolute path or climb out with `..` (or through a symlink), making the loader read any
file the user can read into a weight tensor. `check_external_data` refuses such a model with one
line before anything loads the data. srtrt itself always writes self-contained files.
"""
from __future__ import annotations

import os
from pathlib import Path

from srtrt.errors import SrtrtError


def _tensors(model):
    """Every TensorProto of the model: initializers, sparse initializers, node attributes, subgraphs, functions."""
    def from_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from from_node(node)

    def from_node(node):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attribute.HasField("g"):
                yield from from_graph(attribute.g)
            for graph in attribute.graphs:
                yield from from_graph(graph)

    yield from from_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from from_node(node)


def external_locations(model) -> list[str]:
    """The external-data file names the model refers to (in order, duplicates kept)."""
    from onnx import TensorProto

    found = []
    for tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            entries = {entry.key: entry.value for entry in tensor.external_data}
            found.append(entries.get("location", ""))
    return found


def check_external_data(model, path) -> None:
    """Raise SrtrtError unless every external-data location is a relative path inside the model's folder."""
    path = Path(path)
    folder = Path(os.path.realpath(path.parent))
    for location in external_locations(model):
        if not location:
            raise SrtrtError("refused: a tensor's external data has no location", path)
        if os.path.isabs(location) or Path(location).is_absolute() or location.startswith(("/", "\\")) \
                or (len(location) > 1 and location[1] == ":"):
            raise SrtrtError(f"refused: external data {location!r} is an absolute path; "
                             "it must lie in the model's folder", path)
        target = Path(os.path.realpath(folder / location))
        if target != folder and folder not in target.parents:
            raise SrtrtError(f"refused: external data {location!r} lies outside the model's folder {folder}", path)
