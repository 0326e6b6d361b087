"""The one place srtrt loads an ONNX file, and reads the metadata srtrt's export writes into it.

ONNX files are untrusted input: external-data references must stay inside the model's folder.
A tensor stored outside the .onnx file names its data file in `external_data["location"]`,
resolved relative to the model's folder by onnx and onnxruntime. A crafted file can point that
at an absolute path or climb out with `..` (or through a symlink), making the loader read any
file the user can read into a weight tensor. `load_onnx` therefore parses the file without its
external data, refuses such a model with one line (`check_external_data`), and only then loads
the data. srtrt itself always writes self-contained files.
"""
from __future__ import annotations

import os
from pathlib import Path

from srtrt.errors import SrtrtError

META_PREFIX = "srtrt."  # metadata_props keys export.py writes: "srtrt.model_sha256", ...
# How each metadata value is read back (everything else stays a string).
META_TYPES = {"scale": int, "radius": int, "minimum": int, "multiple_of": int, "graph_form": int,
              "fused": lambda v: v == "True", "aot": lambda v: v == "True", "polyphase": lambda v: v == "True"}


def load_onnx(path, load_external_data: bool = True):
    """The ModelProto at `path`; SrtrtError (one line) when it is missing, unreadable or unsafe.

    The external-data check runs on the parsed file before any external data is read, so a
    model pointing outside its folder is refused without touching the file it points at.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except FileNotFoundError:
        raise SrtrtError("ONNX file not found", path) from None
    except OSError as e:
        raise SrtrtError(f"cannot read the ONNX file ({e.strerror or e.__class__.__name__})", path) from None
    except Exception as e:  # protobuf raises its own DecodeError for non-ONNX bytes
        raise SrtrtError(f"not a readable ONNX file ({e.__class__.__name__})", path) from None
    if not model.HasField("graph") or not model.graph.input or not model.graph.output:
        raise SrtrtError("not a readable ONNX file (no graph with inputs and outputs)", path)
    check_external_data(model, path)
    if load_external_data and external_locations(model):
        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise SrtrtError(f"cannot read the model's external data ({e.__class__.__name__}: {e})", path) from None
    return model


def metadata(source, path=None) -> dict:
    """The srtrt metadata of an exported model (keys without the "srtrt." prefix, typed).

    `source`: a path (loaded with `load_onnx`, external data not read) or a loaded ModelProto
    (read from `path`, which a bad value's line then names).
    Keys: model_sha256, scale, radius, minimum and multiple_of (the sides the network takes), graph_form
    (export.GRAPH_FORM), precision, fused, polyphase (files from before these have none) and, for fused
    graphs, aot.
    """
    model = source if hasattr(source, "metadata_props") else load_onnx(source, load_external_data=False)
    meta = {}
    for p in model.metadata_props:
        if p.key.startswith(META_PREFIX):
            key = p.key[len(META_PREFIX):]
            try:
                meta[key] = META_TYPES.get(key, str)(p.value)
            except ValueError:
                where = path if model is source else source
                raise SrtrtError(f"metadata {p.key} is {p.value!r}, not a number", where) from None
    return meta


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
