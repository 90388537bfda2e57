"""The node's model verification: evaluate.py (native model → ONNX) and check_onnx (ONNX → verdict).

The example bundles' train.py run as plain subprocesses on generated digits, evaluate.py runs
as a plain subprocess too (it is the node's trusted script; the sandbox around it is tested
elsewhere), then check_onnx judges what it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
import torch
from sklearn.neighbors import NearestCentroid

from kernel.errors import InvalidInput, PayloadTooLarge
from training_jobs import evaluate
from training_jobs.datasets import digits_npz
from training_jobs.onnx_check import OnnxCheck, check_onnx, load_npy

ROOT = Path(__file__).resolve().parents[2]
EVALUATE = ROOT / "training_jobs" / "evaluate.py"
CNN = ROOT / "examples" / "jobs" / "digits-cnn"
SKLEARN = ROOT / "examples" / "jobs" / "digits-sklearn"
CNN_SHAPE = "1,1,8,8"
FLAT_SHAPE = "1,64"
MAX_NPY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Digits:
    data: Path  # holds train.npz
    holdout: Path
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Evaluated:
    out: Path
    report: dict[str, object]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    root = tmp_path_factory.mktemp("digits")
    with np.load(digits_npz(root / "digits.npz")) as npz:
        X, y = npz["X"], npz["y"]
    order = np.random.default_rng(0).permutation(len(X))
    held, train = order[:360], order[360:]
    (root / "data").mkdir()
    np.savez(root / "data" / "train.npz", X=X[train], y=y[train])
    np.savez(root / "holdout.npz", X=X[held], y=y[held])
    return Digits(root / "data", root / "holdout.npz", X[held], y[held])


def train(bundle: Path, digits: Digits, out: Path, params: dict[str, object]) -> Path:
    out.mkdir(parents=True)
    params_file = out.parent / f"{out.name}-params.json"
    params_file.write_text(json.dumps(params))
    env = {
        **os.environ,
        "AGORA_DATA": str(digits.data),
        "AGORA_OUTPUT": str(out),
        "AGORA_PARAMS_FILE": str(params_file),
        "AGORA_SEED": "7",
        "PYTHONHASHSEED": "0",
    }
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=bundle, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return out


def run_evaluate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def evaluated(out: Path, *args: str | Path) -> Evaluated:
    out.mkdir(parents=True)
    result = run_evaluate(*args, "--out", out, "--opset", "17", "--probe-count", "32")
    assert result.returncode == 0, result.stderr
    return Evaluated(out, json.loads((out / "native_report.json").read_text()))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> dict[str, Evaluated]:
    """Each output format trained by its example bundle and evaluated by evaluate.py."""
    root = tmp_path_factory.mktemp("models")
    cnn = {"epochs": 5, "lr": 0.01, "batch_size": 64}
    scripted = train(CNN, digits, root / "torchscript", cnn)
    state = train(CNN, digits, root / "state-dict", {**cnn, "save": "state_dict"})
    fitted = train(SKLEARN, digits, root / "sklearn", {"C": 1.0, "max_iter": 500})
    holdout = ("--holdout", digits.holdout)
    return {
        "torchscript": evaluated(
            root / "eval-ts", "--format", "torchscript", "--model", scripted / "model.pt",
            *holdout, "--input-shape", CNN_SHAPE,
        ),
        "torch-state-dict": evaluated(
            root / "eval-sd", "--format", "torch-state-dict", "--model", state / "model.pt",
            "--factory", "model:make_model", "--bundle", CNN, *holdout, "--input-shape", CNN_SHAPE,
        ),
        "sklearn": evaluated(
            root / "eval-sk", "--format", "sklearn", "--model", fitted / "model.joblib",
            *holdout, "--input-shape", FLAT_SHAPE,
        ),
    }  # fmt: skip


def check(
    ev: Evaluated,
    digits: Digits,
    *,
    onnx_path: Path | None = None,
    native: np.ndarray | None = None,
    expect_opset: int | None = 17,
) -> OnnxCheck:
    return check_onnx(
        onnx_path or ev.out / "model.onnx",
        probe_inputs=load_npy(ev.out / "probe_inputs.npy", MAX_NPY),
        native_outputs=load_npy(ev.out / "native_outputs.npy", MAX_NPY) if native is None else native,
        holdout_X=digits.X,
        holdout_y=digits.y,
        tolerance=1e-4,
        expect_opset=expect_opset,
    )


@pytest.mark.parametrize("fmt", ["torchscript", "torch-state-dict", "sklearn"])
def test_each_format_translates_and_agrees_with_onnx_runtime(
    fmt: str, models: dict[str, Evaluated], digits: Digits
) -> None:
    ev = models[fmt]
    assert ev.report["format"] == fmt
    assert ev.report["n_holdout"] == len(digits.y)
    assert ev.report["opset"] == 17
    native_accuracy = ev.report["native_accuracy"]
    assert isinstance(native_accuracy, float) and native_accuracy >= 0.9
    probes = np.load(ev.out / "probe_inputs.npy")
    assert probes.dtype == np.float32 and probes.shape[0] == 32
    assert np.array_equal(probes.reshape(32, -1), digits.X[:32].reshape(32, -1))

    result = check(ev, digits)

    assert result.ok, result.reason
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    assert result.opset == 17
    assert result.input_name == ev.report["input_name"]
    assert ev.report["output_name"] in result.output_names
    assert result.onnx_accuracy is not None and result.onnx_accuracy >= 0.9
    assert result.onnx_accuracy == pytest.approx(native_accuracy, abs=1 / len(digits.y))
    assert result.as_dict()["ok"] is True


def test_the_onnx_batch_dimension_is_dynamic(models: dict[str, Evaluated]) -> None:
    graph = onnx.load(models["torchscript"].out / "model.onnx").graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 8, 8]


def test_sklearn_probabilities_are_the_compared_output(models: dict[str, Evaluated]) -> None:
    ev = models["sklearn"]
    assert ev.report["output_name"] == "probabilities"
    native = np.load(ev.out / "native_outputs.npy")
    assert native.shape == (32, 10)
    assert np.allclose(native.sum(axis=1), 1.0, atol=1e-5)


def test_truncated_onnx_file_is_rejected(
    models: dict[str, Evaluated], digits: Digits, tmp_path: Path
) -> None:
    data = (models["torchscript"].out / "model.onnx").read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 3])

    result = check(models["torchscript"], digits, onnx_path=broken)

    assert not result.ok
    assert result.reason.startswith("onnx")
    assert result.onnx_accuracy is None


def test_onnx_with_an_unknown_operator_fails_the_checker(
    models: dict[str, Evaluated], digits: Digits, tmp_path: Path
) -> None:
    model = onnx.load(models["torchscript"].out / "model.onnx")
    model.graph.node[0].op_type = "NoSuchOperator"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)

    result = check(models["torchscript"], digits, onnx_path=bad)

    assert not result.ok
    assert result.reason.startswith("onnx.checker:")
    assert "NoSuchOperator" in result.reason


def test_onnx_with_external_data_is_refused(
    models: dict[str, Evaluated], digits: Digits, tmp_path: Path
) -> None:
    model = onnx.load(models["torchscript"].out / "model.onnx")
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()

    result = check(models["torchscript"], digits, onnx_path=path)

    assert not result.ok
    assert "external data" in result.reason


def test_outputs_that_differ_by_more_than_the_tolerance_fail(
    models: dict[str, Evaluated], digits: Digits
) -> None:
    ev = models["torchscript"]
    native = np.load(ev.out / "native_outputs.npy")
    native[3, 4] += 0.1

    result = check(ev, digits, native=native)

    assert not result.ok
    assert "differ by 0.1" in result.reason and "tolerance 0.0001" in result.reason
    assert result.max_abs_diff is None
    assert result.onnx_accuracy is None


def test_nan_native_outputs_and_a_wrong_shape_fail(models: dict[str, Evaluated], digits: Digits) -> None:
    ev = models["torchscript"]
    native = np.load(ev.out / "native_outputs.npy")
    with_nan = native.copy()
    with_nan[0, 0] = np.nan

    assert "NaN" in check(ev, digits, native=with_nan).reason
    short = check(ev, digits, native=native[:-1])
    assert not short.ok and "shape" in short.reason


def test_an_unexpected_opset_fails(models: dict[str, Evaluated], digits: Digits) -> None:
    result = check(models["sklearn"], digits, expect_opset=18)

    assert not result.ok
    assert result.reason == "the ONNX model uses opset 17, the job asked for 18"


class SpectralNet(torch.nn.Module):
    """Singular values of each image as features: runs in PyTorch, has no ONNX translation."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.linalg.svdvals(x.reshape(-1, 8, 8)))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_torch_model_without_onnx_translation_exits_3(digits: Digits, tmp_path: Path) -> None:
    model_path = tmp_path / "spectral.pt"
    torch.jit.save(torch.jit.script(SpectralNet()), str(model_path))
    out = tmp_path / "out"
    out.mkdir()

    result = run_evaluate(
        "--format", "torchscript", "--model", model_path, "--holdout", digits.holdout,
        "--input-shape", CNN_SHAPE, "--out", out,
    )  # fmt: skip

    assert result.returncode == evaluate.EXIT_EXPORT, result.stderr
    report = json.loads((out / "native_report.json").read_text())
    assert "linalg_svd" in report["export_error"]
    assert report["export_error"] in result.stderr
    assert report["framework"] == "torch" and isinstance(report["native_accuracy"], float)
    assert not (out / "model.onnx").exists()
    assert not (out / "native_outputs.npy").exists()


def test_an_sklearn_estimator_without_converter_exits_3(digits: Digits, tmp_path: Path) -> None:
    model_path = tmp_path / "centroid.joblib"
    joblib.dump(NearestCentroid().fit(digits.X.reshape(len(digits.X), -1), digits.y), model_path)
    out = tmp_path / "out"
    out.mkdir()

    code = evaluate.main(
        ["--format", "sklearn", "--model", str(model_path), "--holdout", str(digits.holdout),
         "--input-shape", FLAT_SHAPE, "--out", str(out)]
    )  # fmt: skip

    assert code == evaluate.EXIT_EXPORT
    report = json.loads((out / "native_report.json").read_text())
    assert report["export_error"].startswith("skl2onnx:")
    assert "NearestCentroid" in report["export_error"]
    assert report["n_holdout"] == len(digits.y)
    assert report["native_accuracy"] > 0.8  # measured before the export was attempted


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("missing_module:make_model", "No module named 'missing_module'"),
        ("model:no_such_factory", "no_such_factory"),
    ],
)
def test_a_state_dict_whose_factory_is_missing_exits_2(
    factory: str, reason: str, digits: Digits, tmp_path: Path
) -> None:
    weights = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(64, 10).state_dict(), weights)
    out = tmp_path / "out"
    out.mkdir()

    result = run_evaluate(
        "--format", "torch-state-dict", "--model", weights, "--factory", factory, "--bundle", CNN,
        "--holdout", digits.holdout, "--input-shape", CNN_SHAPE, "--out", out,
    )  # fmt: skip

    assert result.returncode == evaluate.EXIT_LOAD
    report = json.loads((out / "native_report.json").read_text())
    assert reason in report["error"]
    assert reason in result.stderr
    assert not (out / "model.onnx").exists()


def test_a_corrupt_model_file_exits_2(digits: Digits, tmp_path: Path) -> None:
    model_path = tmp_path / "model.joblib"
    model_path.write_bytes(b"not a pickle")
    out = tmp_path / "out"
    out.mkdir()

    code = evaluate.main(
        ["--format", "sklearn", "--model", str(model_path), "--holdout", str(digits.holdout),
         "--input-shape", FLAT_SHAPE, "--out", str(out)]
    )  # fmt: skip

    assert code == evaluate.EXIT_LOAD
    assert "cannot load the sklearn model" in json.loads((out / "native_report.json").read_text())["error"]


def test_a_holdout_that_does_not_fit_the_input_shape_is_a_usage_error(digits: Digits, tmp_path: Path) -> None:
    code = evaluate.main(
        ["--format", "sklearn", "--model", str(tmp_path / "unused.joblib"), "--holdout", str(digits.holdout),
         "--input-shape", "1,63", "--out", str(tmp_path)]
    )  # fmt: skip

    assert code == evaluate.EXIT_USAGE
    assert (
        "does not fit the input shape" in json.loads((tmp_path / "native_report.json").read_text())["error"]
    )


def test_the_cnn_training_is_reproducible(digits: Digits, tmp_path: Path) -> None:
    params = {"epochs": 1, "save": "state_dict"}
    first = train(CNN, digits, tmp_path / "a", params)
    second = train(CNN, digits, tmp_path / "b", params)

    assert (first / "model.pt").read_bytes() == (second / "model.pt").read_bytes()
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["seed"] == 7 and len(metrics["epochs"]) == 1


def test_load_npy_refuses_pickles_and_oversized_files(tmp_path: Path) -> None:
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput):
        load_npy(pickled, MAX_NPY)

    big = tmp_path / "big.npy"
    np.save(big, np.zeros(1000, dtype=np.float32))
    with pytest.raises(PayloadTooLarge):
        load_npy(big, 1000)
    assert load_npy(big, 10_000).shape == (1000,)
