"""ONNX Runtime on the released model: agreement with the native outputs, held-out accuracy.

Runs on the model as the node rewrote it (one input called ``input``, outputs named by
:mod:`.rewrite`), so what is measured is what the consumer receives. The native outputs were
written by the export run, which also ran the consumer's code: they are only numbers here
(loaded without pickle, checked for shape and finiteness), and an agreement shows that the
ONNX translation computes what the native model computed on the node's probe inputs. The
figure the node attests, the accuracy, is measured here on the held-out rows, which the
export run never saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .walk import Refused

BATCH = 512
PROBABILITIES = "probabilities"


def session(model_bytes: bytes) -> Any:
    """A single-threaded CPU session with ONNX Runtime's own logging off: its error lines quote
    values the graph computed, which on held-out rows would be held-out data."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind classes (Fail, InvalidGraph, …)
        raise Refused("ONNX Runtime cannot load the model", _first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:600]


def run(sess: Any, X: np.ndarray, what: str) -> list[np.ndarray]:
    try:
        return [np.asarray(r) for r in sess.run(None, {"input": X})]
    except Exception as exc:  # ORT's pybind errors: wrong dtype or shape, failing kernels
        raise Refused(f"ONNX Runtime fails on {what}", _first_line(exc)) from None


def compared_output(sess: Any, native_rank: int) -> int:
    """The output to hold against the native one: ``probabilities`` when the model has it,
    else the first tensor output of the native outputs' rank."""
    outputs = sess.get_outputs()
    ranked = [
        i
        for i, o in enumerate(outputs)
        if str(o.type).startswith("tensor(") and isinstance(o.shape, list) and len(o.shape) == native_rank
    ]
    if not ranked:
        raise Refused(f"the ONNX model has no output of rank {native_rank} like the native outputs")
    named = [i for i in ranked if outputs[i].name == PROBABILITIES]
    return (named or ranked)[0]


def label_output(sess: Any) -> int | None:
    """The node-named ``label`` output (a scikit-learn classifier's predicted classes)."""
    for i, o in enumerate(sess.get_outputs()):
        if o.name == "label":
            return i
    return None


def max_abs_diff(onnx_out: np.ndarray, native: np.ndarray, tolerance: float) -> float:
    """The largest |ONNX - native| on the probe inputs; :class:`Refused` above ``tolerance``."""
    if onnx_out.shape != native.shape:
        raise Refused(f"ONNX Runtime's output has shape {onnx_out.shape}, the native model's {native.shape}")
    if not np.all(np.isfinite(native)):
        raise Refused("the native outputs contain NaN or infinity")
    if not np.all(np.isfinite(onnx_out)):
        raise Refused("ONNX Runtime's outputs on the probe inputs contain NaN or infinity")
    diff = float(np.max(np.abs(onnx_out.astype(np.float64) - native.astype(np.float64)), initial=0.0))
    if not diff <= tolerance:
        raise Refused(
            f"ONNX Runtime and the native model differ by {diff:.3g} on the node's probe inputs "
            f"(tolerance {tolerance:g})"
        )
    return diff


def accuracy(sess: Any, X: np.ndarray, y: np.ndarray, compared: int) -> float | None:
    """Accuracy on the held-out rows: the ``label`` output if there is one, else the argmax of
    the compared output (logits or probabilities); ``None`` for a model that gives neither."""
    label = label_output(sess)
    hits = 0
    for start in range(0, len(X), BATCH):
        results = run(sess, X[start : start + BATCH], "the held-out rows")
        if label is not None:
            predicted = results[label]
        elif results[compared].ndim == 2:
            predicted = results[compared].argmax(axis=1)
        else:
            return None
        expected = y[start : start + BATCH]
        if predicted.reshape(-1).shape != expected.shape:
            raise Refused("the ONNX model's predictions on the held-out rows do not match their count")
        hits += int(np.sum(predicted.reshape(-1) == expected))
    return hits / len(X) if len(X) else None
