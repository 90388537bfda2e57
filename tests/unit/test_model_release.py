"""The node's rewrite of a consumer's ONNX model and its memorization check, in-process and fast.

Hostile models are built with ``onnx.helper``: rows of the digits dataset hidden in names, doc
strings, metadata, unused protobuf fields and weights. What the node releases must hold none
of them (the bytes are searched for the text, the numbers for the rows), and must still
compute what the original computed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from training_jobs.audit.memorization import STRIDE, WINDOW, find_memorized, tolerance_for
from training_jobs.audit.rewrite import leftover_text, rewrite
from training_jobs.audit.walk import Refused, weights

ROWS = np.random.default_rng(5).integers(0, 17, size=(400, 64)).astype(np.float64) / 16.0
SECRET = "ROW17:" + ",".join(f"{v:.4f}" for v in ROWS[17][:8])


def linear_model(**extra: object) -> onnx.ModelProto:
    """x (N, 64) @ W (64, 10) + b, with consumer-chosen names everywhere."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), f"W_{SECRET}")
    b = numpy_helper.from_array(rng.normal(size=(10,)).astype(np.float32), "bias")
    nodes = [
        helper.make_node(
            "MatMul", [f"x_{SECRET}", W.name], ["h"], name=f"matmul_{SECRET}", doc_string=SECRET
        ),
        helper.make_node("Add", ["h", "bias"], ["logits"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        f"graph_{SECRET}",
        [helper.make_tensor_value_info(f"x_{SECRET}", TensorProto.FLOAT, [f"batch_{SECRET}", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [f"batch_{SECRET}", 10])],
        [W, b],
        doc_string=SECRET,
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, 10])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=SECRET, doc_string=SECRET, **extra
    )
    helper.set_model_props(model, {"rows": SECRET})
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: X})[0])


def test_the_rewrite_leaves_no_text_of_the_consumer_and_computes_the_same() -> None:
    original = linear_model()
    X = ROWS[:5].astype(np.float32)
    before = run(original, X)

    released = rewrite(linear_model()).model

    data = released.SerializeToString()
    assert SECRET.encode() not in data and b"ROW17" not in data
    assert list(leftover_text(released)) == []
    assert released.producer_name == "agora" and not released.doc_string and not released.metadata_props
    assert released.graph.name == "agora_model" and not released.graph.doc_string
    assert [i.name for i in released.graph.input] == ["input"]
    assert [o.name for o in released.graph.output] == ["output"]
    assert [n.name for n in released.graph.node] == ["n0", "n1"]
    assert not released.graph.value_info
    assert released.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "d0"
    onnx.checker.check_model(released, full_check=True)
    assert np.array_equal(run(released, X), before)


def test_names_inside_subgraphs_are_rewritten_too() -> None:
    """A Loop body with the consumer's names, reading a value of the outer graph by name."""
    body = helper.make_graph(
        [
            helper.make_node(
                "Add", [f"acc_{SECRET}", "outer_w"], [f"next_{SECRET}"], name=SECRET, doc_string=SECRET
            )
        ],
        f"body_{SECRET}",
        [
            helper.make_tensor_value_info(f"i_{SECRET}", TensorProto.INT64, []),
            helper.make_tensor_value_info(f"c_{SECRET}", TensorProto.BOOL, []),
            helper.make_tensor_value_info(f"acc_{SECRET}", TensorProto.FLOAT, [None, 10]),
        ],
        [
            helper.make_tensor_value_info(f"c_{SECRET}", TensorProto.BOOL, []),
            helper.make_tensor_value_info(f"next_{SECRET}", TensorProto.FLOAT, [None, 10]),
        ],
    )
    model = linear_model()
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.full((10,), 0.5, dtype=np.float32), "outer_w"),
            numpy_helper.from_array(np.array(3, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "go"),
        ]
    )
    graph.node.append(helper.make_node("Loop", ["trips", "go", "logits"], ["looped"], body=body))
    graph.output[0].name = "looped"
    X = ROWS[:4].astype(np.float32)
    before = run(model, X)

    released = rewrite(model).model

    assert SECRET.encode() not in released.SerializeToString()
    assert list(leftover_text(released)) == []
    onnx.checker.check_model(released, full_check=True)
    assert np.array_equal(run(released, X), before)


def test_a_classifiers_outputs_are_named_label_and_probabilities() -> None:
    model = linear_model()
    graph = model.graph
    graph.node.append(helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0))
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("cls", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10]),
        ]
    )
    assert rewrite(model).output_names == ("label", "probabilities")


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [
        (lambda m: m.opset_import.append(helper.make_opsetid("com.example", 1)), "custom operator set"),
        (lambda m: setattr(m.graph.node[1], "domain", "com.example"), "outside the standard"),
        (lambda m: setattr(m.graph.node[1], "op_type", f"Op_{SECRET[:20]}"), "not a standard operator"),
        (lambda m: m.training_info.add(), "training information"),
        (lambda m: m.functions.add(name="f", domain="x"), "defines its own functions"),
        (
            lambda m: m.graph.initializer.append(
                helper.make_tensor("s", TensorProto.STRING, [1], [SECRET.encode()])
            ),
            "string tensor",
        ),
        (
            lambda m: m.graph.node.append(helper.make_node("Constant", [], ["c"], value_string=SECRET)),
            "text other than a standard enumeration",
        ),
        (
            lambda m: m.graph.node[0].attribute.append(helper.make_attribute("note", SECRET)),
            "attribute its schema does not define",
        ),
    ],
)
def test_what_the_node_will_not_release_is_refused_without_quoting_the_model(break_it, reason) -> None:  # type: ignore[no-untyped-def]
    model = linear_model()
    break_it(model)

    with pytest.raises(Refused) as refused:
        rewrite(model)

    assert reason in refused.value.reason
    assert "ROW17" not in refused.value.reason and "Op_" not in refused.value.reason


def test_text_in_fields_onnx_ignores_is_dropped() -> None:
    model = linear_model()
    gemm = model.graph.node[0]
    # an INT attribute with a string in its (unused) s field, a FLOAT tensor with unused double
    # data, and a field number no schema knows: ONNX Runtime would ignore all three
    axis = helper.make_attribute("axis", 1)
    axis.s = SECRET.encode()
    softmax = helper.make_node("Softmax", ["logits"], ["p"])
    softmax.attribute.append(axis)
    model.graph.node.append(softmax)
    model.graph.output[0].name = "p"
    model.graph.initializer[1].double_data.extend(ROWS[17])
    gemm.doc_string = ""
    unknown = gemm.SerializeToString() + b"\xba\x3e" + bytes([len(SECRET)]) + SECRET.encode()  # field 999
    gemm.ParseFromString(unknown)

    released = rewrite(model).model

    data = released.SerializeToString()
    assert SECRET.encode() not in data
    assert not find_memorized(ROWS, weights(released)).rows


def test_an_einsum_equation_is_rewritten_to_canonical_letters() -> None:
    model = linear_model()
    node = model.graph.node[0]
    del node.attribute[:]
    node.op_type = "Einsum"
    node.attribute.append(helper.make_attribute("equation", "qz,zw->qw"))
    model.graph.node[1].input[0] = "h"

    released = rewrite(model).model

    assert released.graph.node[0].attribute[0].s == b"ab,bc->ac"
    onnx.checker.check_model(released, full_check=True)


def test_an_enumeration_value_stays_and_other_values_are_refused() -> None:
    def padded(mode: str) -> onnx.ModelProto:
        model = linear_model()
        pads = numpy_helper.from_array(np.array([0, 1, 0, 1], dtype=np.int64), "pads")
        model.graph.initializer.append(pads)
        model.graph.node.append(helper.make_node("Pad", ["logits", "pads"], ["padded"], mode=mode))
        model.graph.output[0].name = "padded"
        return model

    assert rewrite(padded("reflect")).model.graph.node[2].attribute[0].s == b"reflect"
    with pytest.raises(Refused, match="standard enumeration"):
        rewrite(padded("reflect " + SECRET))


# memorization --------------------------------------------------------------------------------


def with_row(row: np.ndarray, size: int = 50_000, at: int = 12_345) -> np.ndarray:
    weights = np.random.default_rng(1).normal(scale=0.3, size=size)
    weights[at : at + len(row)] = row
    return weights


def test_a_row_stored_verbatim_in_a_weight_is_found() -> None:
    found = find_memorized(ROWS, [with_row(ROWS[42])])
    assert found.rows == {42} and found.unchecked == 0


def test_a_row_stored_in_half_precision_transposed_or_in_pieces_is_found() -> None:
    half = with_row(ROWS[3].astype(np.float16).astype(np.float64))
    table = np.random.default_rng(2).normal(size=(64, 30))
    table[:, 7] = ROWS[9]  # a column of a matrix: contiguous only in the transposed layout
    pieces = with_row(ROWS[11][:32], at=100) + 0
    pieces[9000 : 9000 + 32] = ROWS[11][32:]

    found = find_memorized(ROWS, [half, table, pieces])

    assert found.rows == {3, 9, 11}


def test_float_attributes_are_searched_too() -> None:
    model = linear_model()
    model.graph.node.append(
        helper.make_node("Constant", [], ["support"], value_floats=[float(v) for v in ROWS[250]])
    )
    assert find_memorized(ROWS, weights(rewrite(model).model)).rows == {250}


def test_weights_that_merely_resemble_the_data_are_not_flagged() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(scale=0.5, size=200_000)
    means = ROWS.mean(axis=0)  # a scaler's offsets: statistics of the rows, not a row
    off_by_more = with_row(ROWS[5] + 0.01 * np.sign(rng.normal(size=64)))
    zeros = np.zeros(10_000)

    assert not find_memorized(ROWS, [noise, means, off_by_more, zeros]).rows


def test_rows_too_short_to_recognise_are_reported_unchecked() -> None:
    short = ROWS[:, :4]
    found = find_memorized(short, [short.reshape(-1)])
    assert not found.rows and found.unchecked == len(short)


@settings(max_examples=40, deadline=None)
@given(
    row=st.integers(0, len(ROWS) - 1),
    at=st.integers(0, 5_000 - 64),
    start=st.integers(0, 64 - WINDOW),
    noise=st.floats(0.0, 0.99),
)
def test_any_stored_run_of_a_row_within_the_tolerance_is_found(
    row: int, at: int, start: int, noise: float
) -> None:
    """Against the plain reference: the stored values differ from the row by less than the
    tolerance (up to 99 % of it, so near bin edges too); the stored run is long enough."""
    tolerance = tolerance_for(ROWS)
    run = ROWS[row, start:] + noise * tolerance * np.where(np.arange(64 - start) % 2, 1, -1)
    weights = np.random.default_rng(row).normal(size=5_000)
    weights[at : at + len(run)] = run[: len(weights) - at]
    stored = min(len(run), len(weights) - at)
    found = find_memorized(ROWS, [weights])
    if stored >= WINDOW + STRIDE - 1:  # the guarantee the module states
        assert row in found.rows


def test_millions_of_random_weights_hold_no_row() -> None:
    """No false alarm on a big model (its speed is measured by bench/memorization.py)."""
    rows = np.random.default_rng(4).integers(0, 17, size=(1_800, 64)) / 16.0
    big = np.random.default_rng(5).normal(size=4_000_000)
    found = find_memorized(rows, [big])
    assert not found.rows
