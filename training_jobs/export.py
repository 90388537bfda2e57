"""Load a job's native model and translate it to ONNX — in the export sandbox, away from the held-out rows.

Loading an untrusted native model executes code (a pickle, a TorchScript archive, a state
dict with the consumer's own factory), so the node runs this script in a sandbox that holds
the model, the job's bundle and the node's probe inputs — and not the held-out rows, which
consumer code never meets. Nothing this run writes is believed: the ONNX file and the
native outputs go, as files, to the node's audit run (``training_jobs.audit``), which
checks and rewrites the model with node code alone::

    python /agora/export.py --format torchscript --model /model/model.pt --probe /probe/probe.npy \\
        --input-shape 1,1,8,8 --dtype float32 --opset 17 --out /out
    python /agora/export.py --format torch-state-dict --model /model/model.pt \\
        --factory model:make_model --bundle /job --probe /probe/probe.npy ...
    python /agora/export.py --format sklearn --model /model/model.joblib --input-shape 1,64 ...

A ``torch-state-dict`` model is a weights-only ``torch.save`` file, or a ``.safetensors`` file
(a federation's global weights as they were anchored).

The probe inputs (written by the node: training rows the job already saw and inputs the
node generated) are reshaped to ``(-1, *input_shape[1:])`` and cast to ``--dtype``. Written
to ``--out``:

* ``model.onnx`` — the translation (batch dimension dynamic, opset ``--opset``);
* ``native_outputs.npy`` — the native model's outputs on the probe inputs (float32): the raw
  output of a torch model, ``predict_proba`` of a scikit-learn classifier (else ``predict``).

What went wrong, and the exporter's warnings, are printed (the job log's ``export`` lines).
Exit codes: 0 success; 2 the model cannot be loaded or run on the probe inputs; 3 it runs
but cannot be exported to ONNX; 4 bad invocation or unreadable probe inputs.

Only the standard library, numpy, torch, scikit-learn, skl2onnx, onnx, joblib and
safetensors may be imported here: the repository's packages are not visible inside the sandbox.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

EXIT_OK = 0
EXIT_LOAD = 2
EXIT_EXPORT = 3
EXIT_USAGE = 4

FORMATS = ("torchscript", "torch-state-dict", "sklearn")
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
ONNX_FILE = "model.onnx"
NATIVE_OUTPUTS_FILE = "native_outputs.npy"
INPUT_NAME = "input"
TORCH_OUTPUT_NAME = "output"
BATCH = 256
MAX_REASON = 600
MAX_WARNINGS = 10


class Failure(Exception):
    """A step failed: ``code`` is the exit status, ``reason`` what is printed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _load_failure(reason: str) -> Failure:
    return Failure(EXIT_LOAD, reason)


def _export_failure(reason: str) -> Failure:
    return Failure(EXIT_EXPORT, reason)


def _usage_failure(reason: str) -> Failure:
    return Failure(EXIT_USAGE, reason)


def _describe(exc: BaseException) -> str:
    """One line: exporters append whole graph dumps to their messages."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line[:MAX_REASON]


@dataclass(frozen=True)
class Native:
    """The loaded model and its outputs on the probe inputs."""

    model: Any
    framework: str
    framework_version: str
    outputs: np.ndarray
    probabilistic: bool = False


def load_probe(path: Path, input_shape: Sequence[int], dtype: str) -> np.ndarray:
    """The node's probe inputs shaped to the model input and cast."""
    try:
        probe = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _usage_failure(f"cannot read the probe inputs {path}: {_describe(exc)}") from exc
    try:
        probe = np.ascontiguousarray(probe.reshape((-1, *input_shape[1:])).astype(DTYPES[dtype]))
    except ValueError as exc:
        raise _usage_failure(
            f"the probe inputs of shape {probe.shape} do not fit the input shape {list(input_shape)}"
        ) from exc
    if len(probe) == 0:
        raise _usage_failure("there are no probe inputs")
    return probe


def _configure_torch() -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)


def load_torch_model(fmt: str, model_path: Path, factory: str | None, bundle: Path | None) -> Any:
    """A TorchScript archive, or the consumer's factory filled with a weights-only state dict."""
    import torch

    try:
        if fmt == "torchscript":
            model = torch.jit.load(str(model_path), map_location="cpu")  # type: ignore[no-untyped-call]
        else:
            if not factory or ":" not in factory:
                raise _usage_failure("a torch-state-dict model needs --factory module:function")
            module_name, _, function_name = factory.partition(":")
            build = getattr(importlib.import_module(module_name), function_name)
            model = build()
            if not isinstance(model, torch.nn.Module):
                raise _load_failure(
                    f"the factory {factory} returned {type(model).__name__}, not an nn.Module"
                )
            model.load_state_dict(_state_dict(model_path))
    except Failure:
        raise
    except Exception as exc:  # the consumer's files and code: any error means "cannot load"
        raise _load_failure(f"cannot load the {fmt} model: {_describe(exc)}") from exc
    model.eval()
    return model


def _state_dict(model_path: Path) -> Any:
    """Tensors only, whichever of the two files: neither loader executes anything it reads."""
    import torch

    if model_path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(model_path), device="cpu")
    return torch.load(str(model_path), map_location="cpu", weights_only=True)


def torch_outputs(model: Any, X: np.ndarray) -> np.ndarray:
    """The model's raw output on every row, in batches, as float32."""
    import torch

    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(X), BATCH):
                out = model(torch.from_numpy(X[start : start + BATCH]))
                if not isinstance(out, torch.Tensor):
                    raise _load_failure(f"the model returned {type(out).__name__}; a single tensor is needed")
                chunks.append(out.detach().to(torch.float32).cpu().numpy())
    except Failure:
        raise
    except Exception as exc:  # the consumer's forward()
        raise _load_failure(f"the model fails on the probe inputs: {_describe(exc)}") from exc
    outputs = np.concatenate(chunks)
    if outputs.ndim == 0 or outputs.shape[0] != len(X):
        raise _load_failure(f"the model's output of shape {outputs.shape} has no batch dimension")
    return outputs


def export_torch(model: Any, probe: np.ndarray, opset: int, onnx_path: Path) -> list[str]:
    """Export with the TorchScript-based exporter (``dynamo=False``); the exporter's warnings.

    The dynamo exporter needs onnxscript, which the node does not install, and cannot take
    a TorchScript archive as it is. Warnings are printed because a tracer warning (Python
    control flow frozen at export) explains an ONNX/native mismatch later.
    """
    import torch

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                model,
                (torch.from_numpy(probe),),
                str(onnx_path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[TORCH_OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, TORCH_OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:  # unsupported operators, dynamic Python, shape errors …
        raise _export_failure(f"torch.onnx.export: {_describe(exc)}") from exc
    notes: list[str] = []
    for warning in caught:
        # the legacy exporter announces its own deprecation on every call
        if issubclass(warning.category, (DeprecationWarning, FutureWarning)):
            continue
        note = str(warning.message).splitlines()[0][:MAX_REASON] if str(warning.message) else ""
        if "skipping _decide_input_format" in note:  # a ScriptModule has no Python signature
            continue
        if note and note not in notes:
            notes.append(note)
    return notes[:MAX_WARNINGS]


def run_torch(args: argparse.Namespace, probe: np.ndarray) -> Native:
    import torch

    _configure_torch()
    model = load_torch_model(args.format, args.model, args.factory, args.bundle)
    return Native(model, "torch", torch.__version__, torch_outputs(model, probe))


def run_sklearn(args: argparse.Namespace, probe: np.ndarray) -> Native:
    """``predict_proba`` on the probe inputs if the estimator has it (else ``predict``)."""
    import joblib
    import sklearn

    if len(args.input_shape) != 2:
        raise _usage_failure(
            f"a scikit-learn model takes rows of features: input shape [1, n], not {args.input_shape}"
        )
    try:
        model = joblib.load(args.model)
    except Exception as exc:  # an untrusted pickle: anything can go wrong
        raise _load_failure(f"cannot load the sklearn model: {_describe(exc)}") from exc
    if not callable(getattr(model, "predict", None)):
        raise _load_failure(f"the loaded {type(model).__name__} has no predict method")
    probabilistic = callable(getattr(model, "predict_proba", None))
    try:
        outputs = np.asarray(model.predict_proba(probe) if probabilistic else model.predict(probe))
        outputs = outputs.astype(np.float32)
    except Exception as exc:  # the consumer's estimator
        raise _load_failure(f"the model fails on the probe inputs: {_describe(exc)}") from exc
    return Native(model, "sklearn", sklearn.__version__, outputs, probabilistic)


def _onnx_tensor_type(dtype: str, n_features: int) -> Any:
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    types = {"float32": FloatTensorType, "float64": DoubleTensorType, "int64": Int64TensorType}
    return types[dtype]([None, n_features])


def export_sklearn(native: Native, args: argparse.Namespace, onnx_path: Path) -> None:
    """skl2onnx with plain tensor outputs (no ZipMap): ``label`` and ``probabilities``."""
    from sklearn.base import is_classifier

    model = native.model
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        from skl2onnx import to_onnx

        onx = to_onnx(
            model,
            initial_types=[(INPUT_NAME, _onnx_tensor_type(args.dtype, args.input_shape[1]))],
            options=options,
            target_opset=args.opset,
        )
    except Exception as exc:  # unsupported estimators, options or operator sets
        raise _export_failure(f"skl2onnx: {_describe(exc)}") from exc
    onnx_path.write_bytes(onx.SerializeToString())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a shape such as 1,1,8,8: {text!r}") from exc
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive: {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--model", required=True, type=Path, help="the native model file")
    parser.add_argument("--factory", help="module:function building the nn.Module (torch-state-dict)")
    parser.add_argument("--bundle", type=Path, help="the job's code bundle, importable while loading")
    parser.add_argument("--probe", required=True, type=Path, help="the node's probe inputs (.npy)")
    parser.add_argument("--input-shape", required=True, type=_shape, help="e.g. 1,1,8,8 (batch first)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    onnx_path = args.out / ONNX_FILE
    try:
        if not args.out.is_dir():
            raise _usage_failure(f"the output directory {args.out} does not exist")
        probe = load_probe(args.probe, args.input_shape, args.dtype)
        if args.bundle is not None:
            sys.path.insert(0, str(args.bundle))  # a factory or a pickled class may live there
        if args.format == "sklearn":
            native = run_sklearn(args, probe)
            export_sklearn(native, args, onnx_path)
            notes: list[str] = []
        else:
            native = run_torch(args, probe)
            notes = export_torch(native.model, probe, args.opset, onnx_path)
    except Failure as failure:
        if args.out.is_dir():
            onnx_path.unlink(missing_ok=True)  # never leave a half-written translation
        print(f"export.py: {failure.reason}", file=sys.stderr)
        return failure.code
    np.save(args.out / NATIVE_OUTPUTS_FILE, np.ascontiguousarray(native.outputs, dtype=np.float32))
    summary = {"framework": native.framework, "version": native.framework_version, "probe_inputs": len(probe)}
    print("export.py: exported " + json.dumps(summary, sort_keys=True))
    for note in notes:
        print(f"export.py: exporter warning: {note}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
