"""What the node refuses in a consumer's ONNX model, and the numbers it re-encodes on the way.

A released model may hold only standard operators, numbers and the node's own text, so
:func:`check_structure` refuses

* operators outside the default and ``ai.onnx.ml`` domains, function overloads, model-local
  functions, ``training_info``;
* sparse tensors, external data, string tensors, non-tensor graph inputs and outputs, a
  model that does not take exactly one input;
* attributes the operator's schema does not define (or defines twice), references to
  function attributes, opaque types, and string attributes other than the standard
  enumerations (``auto_pad``, ``post_transform`` …) and a plain ``Einsum`` equation.

What passes is re-encoded so that only its value is left: every tensor is rebuilt from its
numbers (:func:`canonical_tensor`), every attribute keeps only the field its type names, an
``Einsum`` equation's letters are renamed in order of appearance. The names, doc strings and
metadata are :mod:`.rewrite`'s part.

Reasons (:class:`~.walk.Refused`) never quote the model: an operator or attribute name chosen
by the consumer would otherwise travel back in the job's reason.
"""

from __future__ import annotations

import re

import onnx
from onnx import AttributeProto, ModelProto, NodeProto, TensorProto, numpy_helper

from .walk import Refused, graphs, nodes, tensors

ML_DOMAIN = "ai.onnx.ml"
DOMAINS = ("", "ai.onnx", ML_DOMAIN)
# ai.onnx.ml operators whose parameters are training rows (support vectors)
STORED_EXAMPLE_OPS = frozenset({"SVMClassifier", "SVMRegressor"})
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


def check_structure(model: ModelProto) -> tuple[str, ...]:
    """Refuse what ``model`` may not hold and re-encode the rest in place (see the module
    docstring); the operators found that store training examples, sorted. Raises
    :class:`~.walk.Refused`."""
    opsets = _opsets(model)
    _refuse_structure(model)
    for graph in graphs(model.graph):
        clean = [canonical_tensor(t) for t in graph.initializer]
        del graph.initializer[:]
        graph.initializer.extend(clean)
    stored = sorted({node.op_type for node in nodes(model) if _stored_examples(node)})
    for node in nodes(model):
        _check_node(node, opsets)
    return tuple(stored)


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
                clear_type(proto)
        if attribute.type in (AttributeProto.STRING, AttributeProto.STRINGS):
            if node.op_type == "Einsum" and attribute.name == "equation":
                attribute.s = _canonical_einsum(attribute.s)
            values = [attribute.s] if attribute.type == AttributeProto.STRING else list(attribute.strings)
            if not all(string_value_ok(attribute, value) for value in values):
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
        clean.tensors.extend(canonical_tensor(t) for t in value)
    elif attribute.type in REPEATED_ATTRIBUTES:
        getattr(clean, field).extend(value)
    elif field == "t":
        clean.t.CopyFrom(canonical_tensor(value))
    elif field in ("g", "tp"):
        getattr(clean, field).CopyFrom(value)
    else:
        setattr(clean, field, value)
    return clean


def canonical_tensor(tensor: TensorProto) -> TensorProto:
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


def string_value_ok(attribute: AttributeProto, value: bytes) -> bool:
    """Whether ``value`` of a string attribute is one the node lets through: a standard
    enumeration value of that attribute, or an ``Einsum`` equation already canonical."""
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


def clear_type(proto: onnx.TypeProto) -> None:
    """Drop the type's denotations (free text) at every level; an opaque type is refused.
    Here because a type attribute is cleared when its node is checked; :mod:`.rewrite`
    clears the graph inputs' and outputs' types with it."""
    proto.ClearField("denotation")
    kind = proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        for dim in getattr(proto, kind).shape.dim:
            dim.ClearField("denotation")
    elif kind in ("sequence_type", "optional_type"):
        clear_type(getattr(proto, kind).elem_type)
    elif kind == "map_type":
        clear_type(proto.map_type.value_type)
    elif kind == "opaque_type":
        raise Refused("the ONNX model uses an opaque type")
