"""The federated model's ONNX translation on the coordinator, under real bubblewrap.

The coordinator holds the bundle (the digits CNN of ``examples/federation/digits-cnn``, packed
and stored as a federation stores it) and the final global weights (here the CNN trained
briefly by the test itself, which is node code); :func:`federation.onnx_export.translator`
exports and audits it in the sandbox. What comes back is checked here with onnx and ONNX
Runtime against torch on inputs the test draws; bad input is refused before any sandbox runs.
The hostile bundles are in ``tests/security/test_fl_onnx_hostile.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation import tensors
from federation.onnx_export import TranslationFailed, translator
from tests.fl_onnx import (
    EXAMPLE,
    TOLERANCE,
    Digits,
    Host,
    federation,
    load_digits,
    make_host,
    torch_outputs,
    train,
)
from training_jobs import bundle as bundles


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    return make_host(tmp_path_factory.mktemp("coordinator"))


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits: Digits) -> tensors.Weights:
    """The CNN after three epochs on the digits: weights that mean something."""
    return train(digits)


@dataclass
class Translated:
    onnx: bytes
    report: dict[str, Any]


@pytest.fixture(scope="module")
def translated(host: Host, trained: tensors.Weights) -> Translated:
    fed, blob = federation(host, EXAMPLE, trained)
    onnx_bytes, report = translator(host)(fed, blob)
    return Translated(onnx_bytes, report)


def test_onnx_runtime_computes_what_torch_computes_with_the_global_weights(
    translated: Translated, trained: tensors.Weights, digits: Digits
) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(translated.onnx, providers=["CPUExecutionProvider"])
    drawn = np.random.default_rng(5).uniform(0, 1, size=(200, 1, 8, 8)).astype(np.float32)
    for X in (digits.X, drawn):
        expected = torch_outputs(trained, X)
        (got,) = session.run(None, {"input": X})
        assert got.shape == expected.shape == (len(X), 10)
        assert float(np.abs(got - expected).max()) <= TOLERANCE
    (logits,) = session.run(None, {"input": digits.X})
    accuracy = float((logits.argmax(axis=1) == digits.y).mean())
    print(f"\nONNX accuracy on the 1,797 digits after three epochs: {accuracy:.4f}")
    assert accuracy > 0.9


def test_the_report_says_what_was_checked_and_what_could_not_be(translated: Translated) -> None:
    report = translated.report
    print(f"\nreport: {report}")
    assert report["onnx_sha256"] == hashlib.sha256(translated.onnx).hexdigest()
    assert report["opset"] == 17 and report["tolerance"] == TOLERANCE
    assert report["probe_inputs"] == 64
    assert 0.0 <= report["max_abs_diff"] <= TOLERANCE
    assert report["weights_expected"] == report["weights_found"] == 6  # 3 weights, 3 biases
    assert report["onnx_accuracy"] is None and report["memorization_checked"] is False
    assert "accuracy not measured" in report["summary"] and "64 probe inputs" in report["summary"]


def test_the_released_model_is_written_by_the_node(
    translated: Translated, trained: tensors.Weights, host: Host
) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(translated.onnx)
    onnx.checker.check_model(model, full_check=True)
    assert (model.producer_name, model.producer_version, model.graph.name) == ("agora", "1", "agora_model")
    assert not model.doc_string and not model.metadata_props and not model.domain
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == [
        "output"
    ]
    assert all(node.name.startswith("n") and not node.doc_string for node in model.graph.node)
    assert all(
        t.data_location == onnx.TensorProto.DEFAULT and not t.external_data for t in model.graph.initializer
    )
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    stored = [numpy_helper.to_array(t) for t in model.graph.initializer]
    linear = trained["6.weight"]
    assert any(a.shape == linear.shape and np.array_equal(a, linear) for a in stored)
    assert list(host.settings.jobs_dir.iterdir()) == []  # nothing is left of the two runs


@pytest.fixture
def node_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="agora.federation"):
        yield caplog


def test_bad_input_is_refused_before_any_sandbox_run(
    host: Host, trained: tensors.Weights, tmp_path: Path, node_log: pytest.LogCaptureFixture
) -> None:
    fed, blob = federation(host, EXAMPLE, trained)
    translate = translator(host)
    no_shape = fed.model_copy(update={"spec": {**fed.spec, "model": {"factory": "model:make_model"}}})
    with pytest.raises(TranslationFailed, match=r"names no model\.input_shape"):
        translate(no_shape, blob)
    huge = fed.model_copy(
        update={"spec": {**fed.spec, "model": {**fed.spec["model"], "input_shape": [3, 9000, 9000]}}}
    )
    with pytest.raises(TranslationFailed, match="not one the node can draw"):
        translate(huge, blob)
    bad_opset = fed.model_copy(update={"spec": {**fed.spec, "onnx": {"opset": 99}}})
    with pytest.raises(TranslationFailed, match=r"onnx\.opset"):
        translate(bad_opset, blob)
    other = {**trained, "6.bias": np.zeros(11, dtype=np.float32)}
    with pytest.raises(tensors.UpdateRejected, match=r"6\.bias has shape"):
        translate(fed, tensors.encode(other))
    with pytest.raises(tensors.UpdateRejected, match="not a safetensors file"):
        translate(fed, b"not weights")
    with pytest.raises(bundles.BundleRejected):
        translate(fed.model_copy(update={"code_digest": host.store.put_bytes(b"no tar").sha256}), blob)
    corrupt = fed.model_copy(update={"code_digest": host.store.put_bytes(b"a stored bundle").sha256})
    (host.store.root / corrupt.code_digest[:2] / corrupt.code_digest).write_bytes(b"changed on disk")
    with pytest.raises(TranslationFailed, match="does not hash to the federation's code digest"):
        translate(corrupt, blob)
    assert not any("onnx export" in r.getMessage() for r in node_log.records)
