"""The released ONNX model is written by the node: what is rewritten, and the last check.

Everything in an ONNX file that is not a number or a standard operator is text the consumer
chose, and text can carry rows. :func:`rewrite` first has :mod:`.structure` refuse what may
not be released (custom domains, functions, training info, sparse or external data, string
tensors, free-text attributes) and re-encode the numbers; then it

* rewrites: producer, domain, version, graph name, every node name, every value name
  (inputs, outputs, initializers, node inputs and outputs, subgraphs), symbolic dimension
  names; drops every doc string, metadata entry, denotation, quantization annotation and
  intermediate ``value_info``;
* walks every string field the protobuf holds and refuses the model if one is left that the
  node did not write (:func:`leftover_text`): a field added by a later ONNX version is
  refused, not released.

Reasons (:class:`~.walk.Refused`) never quote the model: a name chosen by the consumer would
otherwise travel back in the job's reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import GraphProto, ModelProto, TensorProto

from .structure import DOMAINS, check_structure, clear_type, string_value_ok
from .walk import Refused, graphs

PRODUCER = "agora"
PRODUCER_VERSION = "1"
GRAPH_NAME = "agora_model"
INPUT_NAME = "input"
NODE_NAME = re.compile(r"^n[0-9]+$")
VALUE_NAME = re.compile(r"^(input|output|label|probabilities|output_[0-9]+|t[0-9]+)$")
DIM_NAME = re.compile(r"^d[0-9]+$")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")  # and defined by the schema


@dataclass(frozen=True)
class Rewritten:
    """The model as the node releases it, and what the node noticed on the way."""

    model: ModelProto
    output_names: tuple[str, ...]
    stored_example_ops: tuple[str, ...]


def rewrite(model: ModelProto) -> Rewritten:
    """Refuse or rewrite ``model`` in place (see the module docstring); raises :class:`~.walk.Refused`."""
    model.DiscardUnknownFields()  # fields no schema names: the protobuf keeps and re-writes them
    stored = check_structure(model)
    output_names = _rename_values(model)
    _rename_dimensions(model)
    _clear_text(model)
    left = list(leftover_text(model))
    if left:
        raise Refused(
            "the ONNX model holds text the node does not write", f"unexpected text in {', '.join(left[:5])}"
        )
    return Rewritten(model, output_names, stored)


def _output_names(graph: GraphProto) -> tuple[str, ...]:
    """Node-chosen output names: one output is ``output``; otherwise a rank-1 integer output is
    ``label`` and a float output the exporter called ``probabilities`` keeps that name."""
    if len(graph.output) == 1:
        return ("output",)
    names: list[str] = []
    for i, value in enumerate(graph.output):
        tensor = value.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else -1
        integer = tensor.elem_type in (TensorProto.INT64, TensorProto.INT32)
        if integer and rank == 1 and "label" not in names:
            names.append("label")
        elif value.name == "probabilities" and "probabilities" not in names:
            names.append("probabilities")
        else:
            names.append(f"output_{i}")
    return tuple(names)


def _rename_values(model: ModelProto) -> tuple[str, ...]:
    """Give every value a node-chosen name, consistently across the graph and its subgraphs."""
    main = model.graph
    initializers = {t.name for t in main.initializer}
    names: dict[str, str] = {"": ""}
    feed = next(i.name for i in main.input if i.name not in initializers)
    names[feed] = INPUT_NAME
    output_names = _output_names(main)
    for value, new in zip(main.output, output_names, strict=True):
        if value.name in names and names[value.name] != new:
            raise Refused("an output of the ONNX model is also its input or another output")
        names[value.name] = new

    def renamed(old: str) -> str:
        if old not in names:
            names[old] = f"t{len(names)}"
        return names[old]

    for graph in graphs(main):
        for value in [*graph.input, *graph.output]:
            value.name = renamed(value.name)
        for tensor in graph.initializer:
            tensor.name = renamed(tensor.name)
        for node in graph.node:
            node.input[:] = [renamed(n) for n in node.input]
            node.output[:] = [renamed(n) for n in node.output]
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    attribute.t.ClearField("name")
                for tensor in attribute.tensors:
                    tensor.ClearField("name")
        del graph.value_info[:]
    return output_names


def _rename_dimensions(model: ModelProto) -> None:
    names: dict[str, str] = {}
    for graph in graphs(model.graph):
        for value in [*graph.input, *graph.output]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = names.setdefault(dim.dim_param, f"d{len(names)}")


def _clear(message: Any, *fields: str) -> None:
    for name in fields:
        if name in message.DESCRIPTOR.fields_by_name:
            message.ClearField(name)


def _clear_text(model: ModelProto) -> None:
    model.producer_name, model.producer_version = PRODUCER, PRODUCER_VERSION
    _clear(model, "domain", "doc_string", "model_version", "metadata_props", "configuration")
    count = 0
    for graph in graphs(model.graph):
        graph.name = GRAPH_NAME
        _clear(graph, "doc_string", "metadata_props", "quantization_annotation")
        for value in [*graph.input, *graph.output]:
            _clear(value, "doc_string", "metadata_props")
            clear_type(value.type)
        for tensor in graph.initializer:
            _clear(tensor, "doc_string", "metadata_props")
        for node in graph.node:
            node.name = f"n{count}"
            count += 1
            _clear(node, "doc_string", "metadata_props", "device_configurations")
            for attribute in node.attribute:
                _clear(attribute, "doc_string")
                for tensor in [attribute.t] if attribute.HasField("t") else []:
                    _clear(tensor, "doc_string", "metadata_props")
                for tensor in attribute.tensors:
                    _clear(tensor, "doc_string", "metadata_props")


def _allowed(owner: str, field: str, value: str | bytes, parent: Any) -> bool:
    """Whether a string field left in the rewritten model is one the node wrote or checked."""
    if isinstance(value, bytes):
        if (owner, field) == ("TensorProto", "raw_data"):
            return bool(parent.data_type != TensorProto.STRING)  # numbers in their raw form
        return owner == "AttributeProto" and field in ("s", "strings") and string_value_ok(parent, value)
    rules: dict[tuple[str, str], Any] = {
        ("ModelProto", "producer_name"): lambda v: v == PRODUCER,
        ("ModelProto", "producer_version"): lambda v: v == PRODUCER_VERSION,
        ("OperatorSetIdProto", "domain"): lambda v: v in DOMAINS,
        ("GraphProto", "name"): lambda v: v == GRAPH_NAME,
        ("NodeProto", "name"): NODE_NAME.match,
        ("NodeProto", "input"): lambda v: v == "" or VALUE_NAME.match(v),
        ("NodeProto", "output"): lambda v: v == "" or VALUE_NAME.match(v),
        ("NodeProto", "op_type"): lambda v: onnx.defs.has(v, parent.domain),
        ("NodeProto", "domain"): lambda v: v in DOMAINS,
        ("AttributeProto", "name"): ATTRIBUTE_NAME.match,
        ("TensorProto", "name"): lambda v: v == "" or VALUE_NAME.match(v),
        ("ValueInfoProto", "name"): VALUE_NAME.match,
        ("Dimension", "dim_param"): DIM_NAME.match,
    }
    rule = rules.get((owner, field))
    return bool(rule and rule(value))


def leftover_text(message: Any, path: str = "model") -> Iterator[str]:
    """Paths of string fields anywhere in ``message`` that the node did not write or check."""
    from google.protobuf.descriptor import FieldDescriptor

    owner = message.DESCRIPTOR.name
    for field, value in message.ListFields():
        here = f"{path}.{field.name}"
        repeated = field.is_repeated
        values = list(value) if repeated else [value]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for i, item in enumerate(values):
                yield from leftover_text(item, f"{here}[{i}]" if repeated else here)
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) and any(
            item and not _allowed(owner, field.name, item, message) for item in values
        ):
            yield here
