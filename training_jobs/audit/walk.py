"""Walking an ONNX model's parts, and the refusal every step of the audit raises.

:mod:`.structure` (what is refused), :mod:`.rewrite` (what is rewritten) and the
memorization check (fed with :func:`weights`) all see the model through these walkers, so a
subgraph (an ``If`` branch, a ``Loop`` or ``Scan`` body) is never skipped by one step and
seen by another.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper


class Refused(Exception):
    """The model is not released. ``reason`` is the node's sentence for the consumer (it never
    quotes the model); ``detail`` may, and goes only to the provider's log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


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


def tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every dense tensor of the model: initializers and tensor attributes, subgraphs included."""
    for graph in graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


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
