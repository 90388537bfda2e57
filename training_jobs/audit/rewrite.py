"""The released ONNX model is written by the node: what is refused, and what is rewritten.

Everything in an ONNX file that is not a number or a standard operator is text the consumer
chose, and text can carry rows. So the node

* refuses: operators outside the default and ``ai.onnx.ml`` domains, model-local functions,
  ``training_info``, sparse tensors, external data, string tensors, string attributes other
  than the standard enumerations (``auto_pad``, ``post_transform`` …), non-tensor graph
  inputs and outputs, attributes the operator's schema does not define;
* rewrites: producer, domain, version, graph name, every node name, every value name
  (inputs, outputs, initializers, node inputs and outputs, subgraphs), symbolic dimension
  names, an ``Einsum`` equation's letters; drops every doc string, metadata entry,
  denotation, quantization annotation and intermediate ``value_info``;
* then walks every string field the protobuf holds and refuses the model if one is left
  that the node did not write (:func:`leftover_text`): a field added by a later ONNX
  version is refused, not released.

Reasons (:class:`Refused`) never quote the model: an operator or attribute name chosen by
the consumer would otherwise travel back in the job's reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

PRODUCER = "agora"
PRODUCER_VERSION = "1"
GRAPH_NAME = "agora_model"
INPUT_NAME = "input"
ML_DOMAIN = "ai.onnx.ml"
DOMAINS = ("", "ai.onnx", ML_DOMAIN)
# ai.onnx.ml operators whose parameters are training rows (support vectors)
STORED_EXAMPLE_OPS = frozenset({"SVMClassifier", "SVMRegressor"})
NODE_NAME = re.compile(r"^n[0-9]+$")
VALUE_NAME = re.compile(r"^(input|output|label|probabilities|output_[0-9]+|t[0-9]+)$")
DIM_NAME = re.compile(r"^d[0-9]+$")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")  # and defined by the schema
EINSUM = re.compile(r"^[A-Za-z.,\->]{1,128}$")
EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ATTRIBUTE_FIELDS = {
    AttributeProto.FLOAT: "f",
    AttributeProto.INT: "i",
    AttributeProto.STRING: "s",
    AttributeProto.TENSOR: "t",
    AttributeProto.GRAPH: "g",
    AttributeProto.TYPE_PROTO: "tp",
    AttributeProto.FLOATS: "floats",
    AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors",
    AttributeProto.GRAPHS: "graphs",
    AttributeProto.TYPE_PROTOS: "type_protos",
}
REPEATED_ATTRIBUTES = frozenset(
    {
        AttributeProto.FLOATS,
        AttributeProto.INTS,
        AttributeProto.STRINGS,
        AttributeProto.TENSORS,
        AttributeProto.GRAPHS,
        AttributeProto.TYPE_PROTOS,
    }
)
# the string attributes of standard operators that are enumerations, with their values
ENUMERATIONS: dict[str, frozenset[str]] = {
    name: frozenset(values.split())
    for name, values in {
        "activations": "Relu Tanh Sigmoid Affine LeakyRelu ThresholdedRelu ScaledTanh HardSigmoid Elu "
        "Softsign Softplus",
        "approximate": "none tanh",
        "auto_pad": "NOTSET SAME_UPPER SAME_LOWER VALID",
        "coordinate_transformation_mode": "half_pixel half_pixel_symmetric pytorch_half_pixel "
        "align_corners asymmetric tf_crop_and_resize output_half_pixel",
        "direction": "forward reverse bidirectional LEFT RIGHT",
        "keep_aspect_ratio_policy": "stretch not_larger not_smaller",
        "mode": "DCR CRD constant reflect edge wrap nearest linear cubic bilinear bicubic avg max",
        "nearest_mode": "round_prefer_floor round_prefer_ceil floor ceil",
        "padding_mode": "zeros border reflection",
        "reduction": "none sum mean add mul max min",
        "aggregate_function": "AVERAGE SUM MIN MAX",
        "kernel_type": "LINEAR POLY RBF SIGMOID",
        "nodes_modes": "BRANCH_LEQ BRANCH_LT BRANCH_GTE BRANCH_GT BRANCH_EQ BRANCH_NEQ LEAF",
        "norm": "MAX L1 L2",
        "post_transform": "NONE SOFTMAX LOGISTIC SOFTMAX_ZERO PROBIT",
    }.items()
}


class Refused(Exception):
    """The model is not released. ``reason`` is the node's sentence for the consumer (it never
    quotes the model); ``detail`` may, and goes only to the provider's log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True)
class Rewritten:
    """The model as the node releases it, and what the node noticed on the way."""

    model: ModelProto
    output_names: tuple[str, ...]
    stored_example_ops: tuple[str, ...]


def graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """``graph`` and every subgraph inside it (``If`` branches, ``Loop`` and ``Scan`` bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from graphs(attribute.g)
            for sub in attribute.graphs:
                yield from graphs(sub)


def nodes(model: ModelProto) -> Iterator[NodeProto]:
    for graph in graphs(model.graph):
        yield from graph.node


def rewrite(model: ModelProto) -> Rewritten:
    """Refuse or rewrite ``model`` in place (see the module docstring); raises :class:`Refused`."""
    model.DiscardUnknownFields()  # fields no schema names: the protobuf keeps and re-writes them
    opsets = _opsets(model)
    _refuse_structure(model)
    for graph in graphs(model.graph):
        clean = [_canonical_tensor(t) for t in graph.initializer]
        del graph.initializer[:]
        graph.initializer.extend(clean)
    stored = sorted({node.op_type for node in nodes(model) if _stored_examples(node)})
    for node in nodes(model):
        _check_node(node, opsets)
    output_names = _rename_values(model)
    _rename_dimensions(model)
    _clear_text(model)
    left = list(leftover_text(model))
    if left:
        raise Refused(
            "the ONNX model holds text the node does not write", f"unexpected text in {', '.join(left[:5])}"
        )
    return Rewritten(model, output_names, tuple(stored))


def _stored_examples(node: NodeProto) -> bool:
    return node.domain == ML_DOMAIN and node.op_type in STORED_EXAMPLE_OPS


def _opsets(model: ModelProto) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        if entry.domain not in DOMAINS:
            raise Refused(
                "the ONNX model imports a custom operator set; only the standard and ai.onnx.ml "
                "operators are accepted",
                f"opset_import domain {entry.domain!r}",
            )
        opsets["" if entry.domain == "ai.onnx" else entry.domain] = int(entry.version)
    if "" not in opsets:
        raise Refused("the ONNX model imports no standard operator set")
    return opsets


def _refuse_structure(model: ModelProto) -> None:
    if len(model.training_info):
        raise Refused("the ONNX model carries training information (training_info); it is not released")
    if len(model.functions):
        raise Refused("the ONNX model defines its own functions; only standard operators are accepted")
    for graph in graphs(model.graph):
        if len(graph.sparse_initializer):
            raise Refused("the ONNX model holds sparse initializers; dense tensors are required")
        for value in [*graph.input, *graph.output]:
            if value.type.WhichOneof("value") != "tensor_type":
                raise Refused("a graph input or output of the ONNX model is not a tensor")
    initializers = {t.name for t in model.graph.initializer}
    feeds = [i for i in model.graph.input if i.name not in initializers]
    if len(feeds) != 1:
        raise Refused(f"the ONNX model takes {len(feeds)} inputs; one is required")
    for tensor in tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise Refused("the ONNX model refers to external data files; a self-contained model is required")
        if tensor.data_type == TensorProto.STRING:
            raise Refused("the ONNX model holds a string tensor; text is not released")


def tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every dense tensor of the model: initializers and tensor attributes, subgraphs included."""
    for graph in graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _check_node(node: NodeProto, opsets: dict[str, int]) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in DOMAINS:
        raise Refused(
            "an operator of the ONNX model is outside the standard and ai.onnx.ml domains",
            f"node domain {node.domain!r}",
        )
    if domain not in opsets:
        raise Refused("an operator's domain is not among the ONNX model's imported operator sets")
    if node.overload:
        raise Refused("an operator of the ONNX model names a function overload")
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        raise Refused(
            f"an operator of the ONNX model is not a standard operator of opset {opsets[domain]}",
            f"op_type {node.op_type[:80]!r} in domain {domain!r}",
        ) from None
    seen: set[str] = set()
    for attribute in node.attribute:
        if attribute.name not in schema.attributes or attribute.name in seen:
            raise Refused(
                "an operator of the ONNX model has an attribute its schema does not define",
                f"attribute {attribute.name[:80]!r} of {node.op_type}",
            )
        seen.add(attribute.name)
        if attribute.ref_attr_name:
            raise Refused("an attribute of the ONNX model refers to a function attribute")
        if attribute.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
            raise Refused("the ONNX model holds sparse tensors; dense tensors are required")
        if attribute.type in (AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS):
            for proto in [attribute.tp, *attribute.type_protos]:
                _clear_type(proto)
        if attribute.type in (AttributeProto.STRING, AttributeProto.STRINGS):
            if node.op_type == "Einsum" and attribute.name == "equation":
                attribute.s = _canonical_einsum(attribute.s)
            values = [attribute.s] if attribute.type == AttributeProto.STRING else list(attribute.strings)
            if not all(_string_value_ok(attribute, value) for value in values):
                raise Refused(
                    "an attribute of the ONNX model holds text other than a standard enumeration value",
                    f"attribute {attribute.name} of {node.op_type}",
                )
    normalized = [_only_its_value(attribute) for attribute in node.attribute]
    del node.attribute[:]
    node.attribute.extend(normalized)


def _only_its_value(attribute: AttributeProto) -> AttributeProto:
    """A copy holding only the field its type names: protobuf lets a message carry every
    field at once, and ONNX Runtime would ignore (while the file kept) the others."""
    field = ATTRIBUTE_FIELDS.get(attribute.type)
    if field is None:
        raise Refused("an attribute of the ONNX model has no type")
    clean = AttributeProto(name=attribute.name, type=attribute.type)
    value = getattr(attribute, field)
    if attribute.type == AttributeProto.TENSORS:
        clean.tensors.extend(_canonical_tensor(t) for t in value)
    elif attribute.type in REPEATED_ATTRIBUTES:
        getattr(clean, field).extend(value)
    elif field == "t":
        clean.t.CopyFrom(_canonical_tensor(value))
    elif field in ("g", "tp"):
        getattr(clean, field).CopyFrom(value)
    else:
        setattr(clean, field, value)
    return clean


def _canonical_tensor(tensor: TensorProto) -> TensorProto:
    """The tensor re-encoded from its numbers (raw data, its name, nothing else): fields its
    data type does not use, segments and doc strings are gone."""
    if tensor.data_type == TensorProto.STRING:
        raise Refused("the ONNX model holds a string tensor; text is not released")
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        raise Refused("the ONNX model refers to external data files; a self-contained model is required")
    try:
        clean = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
    except Exception as exc:  # onnx raises ValueError, TypeError … for inconsistent tensors
        raise Refused("a tensor of the ONNX model cannot be read as numbers", str(exc)[:300]) from None
    if clean.data_type != tensor.data_type:
        raise Refused("a tensor of the ONNX model has a data type the node does not re-encode")
    return clean


def _string_value_ok(attribute: AttributeProto, value: bytes) -> bool:
    if attribute.type not in (AttributeProto.STRING, AttributeProto.STRINGS):
        return False
    text = value.decode("utf-8", "replace")
    if attribute.name == "equation":
        return bool(EINSUM.match(text)) and _canonical_einsum(value) == value
    return text in ENUMERATIONS.get(attribute.name, ())


def _canonical_einsum(equation: bytes) -> bytes:
    """The same equation with its letters renamed in order of appearance (``ij,jk->ik``)."""
    text = equation.decode("ascii", "replace").replace(" ", "")
    if not EINSUM.match(text):
        raise Refused("an Einsum equation of the ONNX model is not a plain equation")
    names: dict[str, str] = {}
    out = []
    for char in text:
        if char.isalpha():
            if char not in names:
                names[char] = EINSUM_LETTERS[len(names)]
            out.append(names[char])
        else:
            out.append(char)
    return "".join(out).encode()


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


def _clear_type(proto: onnx.TypeProto) -> None:
    proto.ClearField("denotation")
    kind = proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        for dim in getattr(proto, kind).shape.dim:
            dim.ClearField("denotation")
    elif kind in ("sequence_type", "optional_type"):
        _clear_type(getattr(proto, kind).elem_type)
    elif kind == "map_type":
        _clear_type(proto.map_type.value_type)
    elif kind == "opaque_type":
        raise Refused("the ONNX model uses an opaque type")


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
            _clear_type(value.type)
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
        return owner == "AttributeProto" and field in ("s", "strings") and _string_value_ok(parent, value)
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


def weights(model: ModelProto) -> Iterator[np.ndarray]:
    """Every number the model stores, as numpy arrays: tensors, and float or integer list
    attributes (an SVM's support vectors, a tree's thresholds)."""
    for tensor in tensors(model):
        if tensor.data_type not in (TensorProto.STRING, TensorProto.UNDEFINED):
            yield numpy_helper.to_array(tensor)
    for node in nodes(model):
        for attribute in node.attribute:
            if len(attribute.floats):
                yield np.asarray(attribute.floats, dtype=np.float64)
            if len(attribute.ints):
                yield np.asarray(attribute.ints, dtype=np.float64)
