"""The node's own check of a translated model: the ONNX file, the probe outputs, the holdout.

``evaluate.py`` runs in a sandbox because it loads the consumer's native model; what it writes
(``model.onnx``, ``probe_inputs.npy``, ``native_outputs.npy``) is read here, in the node
process, with code that executes nothing from the files: ONNX is a protobuf, the arrays are
loaded without pickle. ONNX models that point at external data files are refused (a file
path chosen by the consumer would make ONNX Runtime read the node's own files).

The native outputs come from a sandbox that also ran the consumer's unpickling code, so an
agreement here shows only that the ONNX model matches what the sandbox reported; the figure
the node can stand behind is ``onnx_accuracy``, computed here on the node's own holdout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernel.errors import InvalidInput, PayloadTooLarge

PROBABILITIES = "probabilities"
HOLDOUT_BATCH = 512
MAX_REASON = 600


@dataclass(frozen=True)
class OnnxCheck:
    """The verdict on one ONNX model, with the figures behind it."""

    ok: bool
    reason: str
    max_abs_diff: float | None
    tolerance: float
    opset: int | None
    onnx_accuracy: float | None
    input_name: str | None
    output_names: tuple[str, ...]
    ort_version: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_names"] = list(self.output_names)
        return data


class _Rejected(Exception):
    """A step found the model wanting; the message is the human reason."""


def load_npy(path: Path, max_bytes: int) -> np.ndarray:
    """A numeric ``.npy`` array written by the sandbox, size-capped and never unpickled."""
    size = path.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"{path.name} is {size} bytes, more than the {max_bytes} allowed")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path.name} is not a readable .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise InvalidInput(f"{path.name} does not hold a numeric array")
    return array


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:MAX_REASON]


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor stored in a graph: initializers and constant attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Any) -> Iterator[Any]:
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("g"):
            yield from _tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _tensors(graph)


def _load_and_check(model_bytes: bytes) -> Any:
    """Parse, refuse external data, run the ONNX checker (with shape inference)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise _Rejected(f"onnx: the file is not an ONNX model: {_short(exc)}") from exc
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node.attribute))
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise _Rejected("onnx: the model refers to external data files; a self-contained model is required")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise _Rejected(f"onnx.checker: {_short(exc)}") from exc
    return model


def _default_opset(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind classes (Fail, InvalidGraph, …), all Exception
        raise _Rejected(f"ONNX Runtime cannot load the model: {_short(exc)}") from exc


def _compared_output(outputs: list[Any], native_rank: int) -> int:
    """The output to hold against the native one: ``probabilities`` for a scikit-learn
    classifier, else the first tensor output of the native outputs' rank."""
    ranked = [
        i
        for i, o in enumerate(outputs)
        if str(o.type).startswith("tensor(") and isinstance(o.shape, list) and len(o.shape) == native_rank
    ]
    if not ranked:
        raise _Rejected(f"the ONNX model has no output of rank {native_rank} like the native outputs")
    named = [i for i in ranked if outputs[i].name == PROBABILITIES]
    return (named or ranked)[0]


def _label_output(outputs: list[Any]) -> int | None:
    """A rank-1 integer output (scikit-learn's ``label``): the predicted classes themselves."""
    for i, o in enumerate(outputs):
        if (
            str(o.type) in ("tensor(int64)", "tensor(int32)")
            and isinstance(o.shape, list)
            and len(o.shape) == 1
        ):
            return i
    return None


def _run(session: Any, input_name: str, X: np.ndarray, what: str) -> list[np.ndarray]:
    try:
        return [np.asarray(r) for r in session.run(None, {input_name: X})]
    except Exception as exc:  # ORT's pybind errors: wrong dtype or shape, failing kernels
        raise _Rejected(f"ONNX Runtime fails on {what}: {_short(exc)}") from exc


def _compare(onnx_out: np.ndarray, native: np.ndarray, tolerance: float) -> float:
    if onnx_out.shape != native.shape:
        raise _Rejected(
            f"ONNX Runtime's output has shape {onnx_out.shape}, the native model's {native.shape}"
        )
    if not np.all(np.isfinite(native)):
        raise _Rejected("the native outputs contain NaN or infinity")
    if not np.all(np.isfinite(onnx_out)):
        raise _Rejected("ONNX Runtime's outputs on the probe inputs contain NaN or infinity")
    diff = float(np.max(np.abs(onnx_out.astype(np.float64) - native.astype(np.float64)), initial=0.0))
    if not diff <= tolerance:
        raise _Rejected(
            f"ONNX Runtime and the native model differ by {diff:.3g} on the probe inputs "
            f"(tolerance {tolerance:g})"
        )
    return diff


def _accuracy(
    session: Any,
    input_name: str,
    X: np.ndarray,
    y: np.ndarray,
    compared: int,
    label: int | None,
) -> float | None:
    """Accuracy on the holdout: the label output if there is one, else the argmax of the
    compared output (logits or probabilities); ``None`` for a non-classifier."""
    hits = 0
    for start in range(0, len(X), HOLDOUT_BATCH):
        results = _run(session, input_name, X[start : start + HOLDOUT_BATCH], "the holdout")
        if label is not None:
            predicted = results[label]
        elif results[compared].ndim == 2:
            predicted = results[compared].argmax(axis=1)
        else:
            return None
        hits += int(np.sum(predicted.reshape(-1) == y[start : start + HOLDOUT_BATCH]))
    return hits / len(X) if len(X) else None


def check_onnx(
    onnx_path: Path,
    *,
    probe_inputs: np.ndarray,
    native_outputs: np.ndarray,
    holdout_X: np.ndarray,
    holdout_y: np.ndarray,
    tolerance: float,
    expect_opset: int | None,
) -> OnnxCheck:
    """Check an ONNX model and hold it against the native model's outputs.

    Runs the ONNX checker, loads the model in ONNX Runtime (CPU), compares its output on
    ``probe_inputs`` with ``native_outputs`` (the same shape, every |difference| at most
    ``tolerance``, nothing NaN or infinite), then measures accuracy on the holdout (``holdout_X``
    is reshaped to the probe inputs' row shape and dtype). A bad model gives ``ok=False``
    with the reason; this never raises for one (only for a holdout whose X and y disagree).
    """
    import onnxruntime as ort

    if len(holdout_X) != len(holdout_y):
        raise ValueError(f"the holdout has {len(holdout_X)} rows and {len(holdout_y)} labels")

    opset: int | None = None
    input_name: str | None = None
    output_names: tuple[str, ...] = ()
    max_abs_diff: float | None = None
    accuracy: float | None = None

    def verdict(ok: bool, reason: str) -> OnnxCheck:
        return OnnxCheck(
            ok, reason, max_abs_diff, tolerance, opset, accuracy, input_name, output_names, ort.__version__
        )

    try:
        model_bytes = onnx_path.read_bytes()
        model = _load_and_check(model_bytes)
        opset = _default_opset(model)
        if expect_opset is not None and opset != expect_opset:
            raise _Rejected(f"the ONNX model uses opset {opset}, the job asked for {expect_opset}")
        session = _session(model_bytes)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        output_names = tuple(o.name for o in outputs)
        if len(inputs) != 1:
            raise _Rejected(f"the ONNX model takes {len(inputs)} inputs; one is required")
        input_name = str(inputs[0].name)
        compared = _compared_output(outputs, native_outputs.ndim)
        probe_results = _run(session, input_name, np.ascontiguousarray(probe_inputs), "the probe inputs")
        max_abs_diff = _compare(probe_results[compared], native_outputs, tolerance)
        try:
            X = np.ascontiguousarray(
                holdout_X.reshape((-1, *probe_inputs.shape[1:])), dtype=probe_inputs.dtype
            )
        except ValueError as exc:
            raise _Rejected(
                f"the holdout rows of shape {holdout_X.shape[1:]} do not fit the probe inputs' "
                f"{probe_inputs.shape[1:]}"
            ) from exc
        label = _label_output(outputs)
        accuracy = _accuracy(session, input_name, X, holdout_y.reshape(-1), compared, label)
    except _Rejected as rejected:
        return verdict(False, str(rejected))
    except OSError as exc:
        return verdict(False, f"cannot read {onnx_path.name}: {_short(exc)}")
    return verdict(True, f"ONNX Runtime agrees with the native model within {tolerance:g}")
