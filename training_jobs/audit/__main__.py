"""The audit run: ``python -m agora_audit`` inside a sandbox that holds node code only.

::

    python -m agora_audit --model /exported/model.onnx --native-outputs /exported/native_outputs.npy \\
        --probe /probe/probe.npy --holdout /holdout/holdout.npz --train /data/train.npz \\
        --input-shape 1,64 --dtype float32 --opset 17 --tolerance 1e-4 --out /out

Without ``--holdout`` and ``--train`` (a node that holds no rows: a federation's coordinator)
the memorization check and the accuracy are not done, and their figures stay null. With
``--expect-weights`` (the weights the node asked the export to load) the audit counts the
floating-point tensors among them that the ONNX model holds (:mod:`.expected`), and refuses
a model that holds none: its factory did not load them.

Writes ``/out/audit_report.json`` (always; see :data:`REPORT_FIELDS`) and, when the model
passes, ``/out/model.onnx``: the model as the node releases it. Exit 0 whenever the report
holds the verdict; 4 when the node's own inputs (probe, held-out or training rows) cannot be
read — a fault of the node, not of the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np

EXIT_OK = 0
EXIT_NODE = 4
REPORT_FILE = "audit_report.json"
MODEL_FILE = "model.onnx"
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)"}
MAX_DETAIL = 2000
REPORT_FIELDS = (
    "ok", "reason", "detail", "opset", "onnx_accuracy", "holdout_rows", "probe_inputs", "max_abs_diff",
    "tolerance", "memorized_rows", "unchecked_rows", "memorization_tolerance", "stored_example_ops",
    "output_names", "onnx_version", "onnxruntime_version", "weights_expected", "weights_found",
)  # fmt: skip


class NodeInputs(Exception):
    """The node's own files cannot be read (exit 4)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_NODE, f"{self.prog}: error: {message}\n")


def _shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a shape such as 1,1,8,8: {text!r}") from exc
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive: {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agora_audit", description="the node's audit of a translated model")
    parser.add_argument("--model", required=True, type=Path, help="the exported ONNX file")
    parser.add_argument("--native-outputs", required=True, type=Path, help="the export run's outputs (.npy)")
    parser.add_argument("--probe", required=True, type=Path, help="the node's probe inputs (.npy)")
    parser.add_argument("--holdout", type=Path, help="held-out rows (.npz with X, y)")
    parser.add_argument("--train", type=Path, help="training rows (.npz with X)")
    parser.add_argument("--input-shape", required=True, type=_shape)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--opset", type=int, required=True)
    parser.add_argument("--tolerance", type=float, required=True)
    parser.add_argument("--allow-stored-examples", action="store_true")
    parser.add_argument(
        "--expect-weights", type=Path, help="the weights the model was built from (.npz): count them in it"
    )
    parser.add_argument("--max-model-bytes", type=int, default=1024**3)
    parser.add_argument("--out", required=True, type=Path)
    return parser


def _node_array(path: Path, key: str | None = None) -> np.ndarray:
    try:
        if key is None:
            return np.asarray(np.load(path, allow_pickle=False))
        with np.load(path, allow_pickle=False) as archive:
            return np.asarray(archive[key])
    except (OSError, KeyError, ValueError) as exc:
        raise NodeInputs(f"cannot read {path}: {exc}") from exc


def _node_weights(path: Path) -> list[np.ndarray]:
    """The node's weights file: the floating-point tensors of more than one value."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = [np.asarray(archive[name]) for name in archive.files]
    except (OSError, KeyError, ValueError) as exc:
        raise NodeInputs(f"cannot read {path}: {exc}") from exc
    return [a for a in arrays if a.dtype.kind == "f" and a.size > 1]


def _native_outputs(path: Path) -> np.ndarray:
    """The export run's numbers: no pickle, numeric, or the model is refused."""
    from .walk import Refused

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Refused("the export run's native outputs are not a readable array", str(exc)[:300]) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise Refused("the export run's native outputs are not numeric")
    return array


class Rows(NamedTuple):
    """The provider's rows: the held-out ones shaped for the model, and every row flattened."""

    X: np.ndarray
    y: np.ndarray
    all_rows: np.ndarray


def _rows(args: argparse.Namespace, row_shape: tuple[int, ...], dtype: Any) -> Rows:
    from .walk import Refused

    holdout_X, holdout_y = _node_array(args.holdout, "X"), _node_array(args.holdout, "y").reshape(-1)
    train_X = _node_array(args.train, "X")
    try:
        holdout_X = np.ascontiguousarray(holdout_X.reshape((-1, *row_shape)), dtype=dtype)
        every = np.concatenate([train_X.reshape(len(train_X), -1), holdout_X.reshape(len(holdout_X), -1)])
    except ValueError as exc:  # the shape is the job's: its fault, not the node's
        raise Refused(
            f"the provider's rows do not fit the job's onnx.input_shape {args.input_shape}", str(exc)
        ) from exc
    return Rows(holdout_X, holdout_y, every)


def audit(args: argparse.Namespace, report: dict[str, Any]) -> bytes:
    """The verdict's figures into ``report``; the released model's bytes, or :class:`Refused`."""
    import onnx
    import onnxruntime
    from google.protobuf.message import DecodeError

    from . import check
    from .expected import count_found
    from .memorization import find_memorized
    from .rewrite import rewrite
    from .walk import Refused, weights

    report["onnx_version"], report["onnxruntime_version"] = onnx.__version__, onnxruntime.__version__
    row_shape = tuple(args.input_shape[1:])
    dtype = DTYPES[args.dtype]
    try:
        probe = np.ascontiguousarray(_node_array(args.probe).reshape((-1, *row_shape)), dtype=dtype)
    except ValueError as exc:
        raise NodeInputs(f"the probe inputs do not fit the input shape {args.input_shape}: {exc}") from exc
    report["probe_inputs"] = len(probe)
    holdout = _rows(args, row_shape, dtype) if args.holdout is not None else None
    if holdout is not None:
        report["holdout_rows"] = len(holdout.y)
    native = _native_outputs(args.native_outputs)

    size = args.model.stat().st_size
    if size > args.max_model_bytes:
        raise Refused(f"the ONNX model is {size} bytes, more than the {args.max_model_bytes} allowed")
    try:
        model = onnx.load_model_from_string(args.model.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise Refused("the exported file is not an ONNX model", str(exc)[:300]) from None
    rewritten = rewrite(model)
    report["output_names"] = list(rewritten.output_names)
    report["stored_example_ops"] = list(rewritten.stored_example_ops)
    opset = next(int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx"))
    report["opset"] = opset
    if opset != args.opset:
        raise Refused(f"the ONNX model uses opset {opset}, the job asked for {args.opset}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and onnx's C++ errors as RuntimeError
        raise Refused("onnx.checker refused the model", f"{type(exc).__name__}: {exc}") from None

    if args.expect_weights is not None:
        expected = _node_weights(args.expect_weights)
        report["weights_expected"] = len(expected)
        report["weights_found"] = found = count_found(expected, list(weights(model)))
        if expected and not found:
            raise Refused(
                "the ONNX model holds none of the weights the node gave its factory to load: "
                "the factory's model did not load them"
            )
    memorized = find_memorized(holdout.all_rows, weights(model)) if holdout is not None else None
    if memorized is not None:
        report["memorized_rows"], report["unchecked_rows"] = len(memorized.rows), memorized.unchecked
        report["memorization_tolerance"] = memorized.tolerance
    if not args.allow_stored_examples:
        if rewritten.stored_example_ops:
            raise Refused(
                "the model stores training examples (support vectors); the offering's compute terms "
                "do not allow stored examples"
            )
        if memorized is not None and memorized.rows:
            raise Refused(  # how many is the provider's to read: a count tells which guesses hit
                "the model's weights hold rows of the provider's data; the offering's compute terms "
                "do not allow stored examples",
                f"{len(memorized.rows)} rows found",
            )

    released: bytes = model.SerializeToString()
    sess = check.session(released)
    inputs = sess.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "input":
        raise Refused("the rewritten model does not take exactly one input")
    if inputs[0].type != ORT_TYPES[args.dtype]:
        raise Refused(f"the ONNX model's input is not of the job's dtype {args.dtype}")
    compared = check.compared_output(sess, native.ndim)
    probe_out = check.run(sess, probe, "the node's probe inputs")
    report["max_abs_diff"] = check.max_abs_diff(probe_out[compared], native, args.tolerance)
    if holdout is not None:
        report["onnx_accuracy"] = check.accuracy(sess, holdout.X, holdout.y, compared)
    return released


def main(argv: Sequence[str] | None = None) -> int:
    from .walk import Refused

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.holdout is None) != (args.train is None):
        parser.error("--holdout and --train go together")
    report: dict[str, Any] = dict.fromkeys(REPORT_FIELDS)
    report.update(ok=False, tolerance=args.tolerance, stored_example_ops=[], output_names=[])
    code = EXIT_OK
    (args.out / MODEL_FILE).unlink(missing_ok=True)
    try:
        released = audit(args, report)
    except Refused as refused:
        report["reason"], report["detail"] = refused.reason, refused.detail[:MAX_DETAIL]
    except NodeInputs as exc:
        report["reason"] = "the node's audit could not read its own inputs"
        report["detail"] = str(exc)[:MAX_DETAIL]
        code = EXIT_NODE
    except Exception as exc:  # anything else the consumer's graph provoked is the graph's doing
        report["reason"] = "the node cannot audit this model"
        report["detail"] = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]
    else:
        (args.out / MODEL_FILE).write_bytes(released)
        report["ok"] = True
        report["reason"] = (
            f"ONNX Runtime agrees with the native model within {args.tolerance:g} on "
            f"{report['probe_inputs']} probe inputs"
        )
    (args.out / REPORT_FILE).write_text(json.dumps(report, sort_keys=True) + "\n")
    print(f"audit: {report['reason']}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
