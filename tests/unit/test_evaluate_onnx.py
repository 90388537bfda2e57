"""The node's model verification: export.py (native model → ONNX, outputs on the node's probe
inputs) and the audit (ONNX → rewritten model + verdict).

The example bundles' train.py run as plain subprocesses on generated digits; export.py and the
audit run as plain subprocesses too (the sandboxes around them are tested elsewhere). The
export never gets the held-out rows: only the audit, the node's own code, reads them.
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

from training_jobs import export
from training_jobs.datasets import digits_npz
from training_jobs.job_metrics import MetricsRejected, read_metrics
from training_jobs.verification import AuditReport

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "training_jobs" / "export.py"
CNN = ROOT / "examples" / "jobs" / "digits-cnn"
SKLEARN = ROOT / "examples" / "jobs" / "digits-sklearn"
CNN_SHAPE = "1,1,8,8"
FLAT_SHAPE = "1,64"


@dataclass(frozen=True)
class Digits:
    data: Path  # holds train.npz
    holdout: Path
    probe: Path  # training rows and drawn inputs, as the node writes them
    X: np.ndarray  # held-out rows
    y: np.ndarray


@dataclass(frozen=True)
class Audited:
    out: Path
    report: AuditReport


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
    drawn = np.random.default_rng(1).uniform(0, 1, size=(16, 1, 8, 8)).astype(np.float32)
    np.save(root / "probe.npy", np.concatenate([X[train][:16], drawn]))
    return Digits(root / "data", root / "holdout.npz", root / "probe.npy", X[held], y[held])


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


def run_export(out: Path, *args: str | Path, probe: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(EXPORT), *map(str, args), "--probe", str(probe), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_audit(
    exported: Path,
    digits: Digits,
    out: Path,
    *,
    shape: str,
    model: Path | None = None,
    native: Path | None = None,
    opset: int = 17,
    extra: tuple[str, ...] = (),
) -> Audited:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training_jobs.audit",
            "--model",
            str(model or exported / "model.onnx"),
            "--native-outputs",
            str(native or exported / "native_outputs.npy"),
            "--probe",
            str(digits.probe),
            "--holdout",
            str(digits.holdout),
            "--train",
            str(digits.data / "train.npz"),
            "--input-shape",
            shape,
            "--opset",
            str(opset),
            "--tolerance",
            "1e-4",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = AuditReport.model_validate(json.loads((out / "audit_report.json").read_text()))
    return Audited(out, report)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> dict[str, Path]:
    """Each output format trained by its example bundle and exported by export.py."""
    root = tmp_path_factory.mktemp("models")
    cnn = {"epochs": 5, "lr": 0.01, "batch_size": 64}
    scripted = train(CNN, digits, root / "torchscript", cnn)
    state = train(CNN, digits, root / "state-dict", {**cnn, "save": "state_dict"})
    fitted = train(SKLEARN, digits, root / "sklearn", {"C": 1.0, "max_iter": 500})
    runs = {
        "torchscript": ("--format", "torchscript", "--model", scripted / "model.pt", "--input-shape", CNN_SHAPE),
        "torch-state-dict": (
            "--format", "torch-state-dict", "--model", state / "model.pt", "--factory", "model:make_model",
            "--bundle", CNN, "--input-shape", CNN_SHAPE,
        ),
        "sklearn": ("--format", "sklearn", "--model", fitted / "model.joblib", "--input-shape", FLAT_SHAPE),
    }  # fmt: skip
    out = {}
    for fmt, args in runs.items():
        result = run_export(root / f"export-{fmt}", *args, probe=digits.probe)
        assert result.returncode == 0, result.stderr
        out[fmt] = root / f"export-{fmt}"
    return out


SHAPES = {"torchscript": CNN_SHAPE, "torch-state-dict": CNN_SHAPE, "sklearn": FLAT_SHAPE}


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, exported: dict[str, Path], digits: Digits
) -> dict[str, Audited]:
    root = tmp_path_factory.mktemp("audits")
    return {fmt: run_audit(path, digits, root / fmt, shape=SHAPES[fmt]) for fmt, path in exported.items()}


@pytest.mark.parametrize("fmt", ["torchscript", "torch-state-dict", "sklearn"])
def test_each_format_translates_and_passes_the_audit(
    fmt: str, exported: dict[str, Path], audited: dict[str, Audited], digits: Digits
) -> None:
    native = np.load(exported[fmt] / "native_outputs.npy")
    assert native.dtype == np.float32 and native.shape[0] == 32  # the probe inputs, not the held-out rows

    report = audited[fmt].report

    assert report.ok, report.reason
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-5
    assert report.opset == 17 and report.probe_inputs == 32 and report.holdout_rows == len(digits.y)
    assert report.onnx_accuracy is not None and report.onnx_accuracy >= 0.9
    assert report.memorized_rows == 0 and report.unchecked_rows == 0
    released = onnx.load(audited[fmt].out / "model.onnx")
    assert released.producer_name == "agora" and [i.name for i in released.graph.input] == ["input"]
    assert list(report.output_names) == [o.name for o in released.graph.output]


def test_the_released_batch_dimension_is_dynamic(audited: dict[str, Audited]) -> None:
    graph = onnx.load(audited["torchscript"].out / "model.onnx").graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "d0" and not batch.HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 8, 8]


def test_sklearn_outputs_are_label_and_probabilities(
    exported: dict[str, Path], audited: dict[str, Audited]
) -> None:
    assert audited["sklearn"].report.output_names == ["label", "probabilities"]
    native = np.load(exported["sklearn"] / "native_outputs.npy")
    assert native.shape == (32, 10) and np.allclose(native.sum(axis=1), 1.0, atol=1e-5)


def test_a_truncated_onnx_file_is_refused(exported: dict[str, Path], digits: Digits, tmp_path: Path) -> None:
    data = (exported["torchscript"] / "model.onnx").read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 3])

    report = run_audit(
        exported["torchscript"], digits, tmp_path / "out", shape=CNN_SHAPE, model=broken
    ).report

    assert not report.ok and report.reason == "the exported file is not an ONNX model"
    assert report.onnx_accuracy is None and not (tmp_path / "out" / "model.onnx").exists()


def test_an_unknown_operator_is_refused_without_its_name(
    exported: dict[str, Path], digits: Digits, tmp_path: Path
) -> None:
    model = onnx.load(exported["torchscript"] / "model.onnx")
    model.graph.node[0].op_type = "Row_0_0p3125_0p8125"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)

    report = run_audit(exported["torchscript"], digits, tmp_path / "out", shape=CNN_SHAPE, model=bad).report

    assert not report.ok and "not a standard operator" in report.reason
    assert "Row_0" not in report.reason and "Row_0" in (report.detail or "")  # the provider's log only


def test_onnx_with_external_data_is_refused(
    exported: dict[str, Path], digits: Digits, tmp_path: Path
) -> None:
    model = onnx.load(exported["torchscript"] / "model.onnx")
    path = tmp_path / "external.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()

    report = run_audit(exported["torchscript"], digits, tmp_path / "out", shape=CNN_SHAPE, model=path).report

    assert not report.ok and "external data" in report.reason


def test_outputs_that_differ_by_more_than_the_tolerance_fail(
    exported: dict[str, Path], digits: Digits, tmp_path: Path
) -> None:
    native = np.load(exported["torchscript"] / "native_outputs.npy")
    native[3, 4] += 0.1
    np.save(tmp_path / "native.npy", native)

    report = run_audit(
        exported["torchscript"], digits, tmp_path / "out", shape=CNN_SHAPE, native=tmp_path / "native.npy"
    ).report

    assert not report.ok
    assert "differ by 0.1" in report.reason and "tolerance 0.0001" in report.reason
    assert report.max_abs_diff is None and report.onnx_accuracy is None


def test_nan_or_misshapen_native_outputs_and_pickles_fail(
    exported: dict[str, Path], digits: Digits, tmp_path: Path
) -> None:
    native = np.load(exported["torchscript"] / "native_outputs.npy")
    cases = {
        "nan": (np.where(np.arange(native.size).reshape(native.shape) == 0, np.nan, native), "NaN"),
        "short": (native[:-1], "shape"),
    }
    for name, (array, said) in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        report = run_audit(
            exported["torchscript"], digits, tmp_path / name, shape=CNN_SHAPE, native=tmp_path / f"{name}.npy"
        ).report
        assert not report.ok and said in report.reason, (name, report.reason)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    report = run_audit(
        exported["torchscript"],
        digits,
        tmp_path / "pickled",
        shape=CNN_SHAPE,
        native=tmp_path / "pickled.npy",
    ).report
    assert not report.ok and "not a readable array" in report.reason


def test_an_unexpected_opset_fails(exported: dict[str, Path], digits: Digits, tmp_path: Path) -> None:
    report = run_audit(exported["sklearn"], digits, tmp_path / "out", shape=FLAT_SHAPE, opset=18).report

    assert not report.ok and report.reason == "the ONNX model uses opset 17, the job asked for 18"


def test_a_knn_model_holds_the_rows_and_is_refused_unless_allowed(digits: Digits, tmp_path: Path) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    with np.load(digits.data / "train.npz") as data:
        X, y = data["X"].reshape(len(data["X"]), -1), data["y"]
    joblib.dump(KNeighborsClassifier(3).fit(X, y), tmp_path / "knn.joblib")
    args = ("--format", "sklearn", "--model", tmp_path / "knn.joblib", "--input-shape", FLAT_SHAPE)
    assert run_export(tmp_path / "export", *args, probe=digits.probe).returncode == 0

    refused = run_audit(tmp_path / "export", digits, tmp_path / "refused", shape=FLAT_SHAPE).report
    allowed = run_audit(
        tmp_path / "export",
        digits,
        tmp_path / "allowed",
        shape=FLAT_SHAPE,
        extra=("--allow-stored-examples",),
    ).report

    assert not refused.ok and "rows of the provider's data" in refused.reason
    assert refused.memorized_rows is not None and refused.memorized_rows >= len(X)
    assert allowed.ok and allowed.memorized_rows == refused.memorized_rows


def test_the_audit_says_when_the_nodes_own_inputs_are_unreadable(
    exported: dict[str, Path], digits: Digits, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training_jobs.audit",
            "--model",
            str(exported["sklearn"] / "model.onnx"),
            "--native-outputs",
            str(exported["sklearn"] / "native_outputs.npy"),
            "--probe",
            str(digits.probe),
            "--holdout",
            str(tmp_path / "missing.npz"),
            "--train",
            str(digits.data / "train.npz"),
            "--input-shape",
            FLAT_SHAPE,
            "--opset",
            "17",
            "--tolerance",
            "1e-4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 4, result.stderr
    report = json.loads((out / "audit_report.json").read_text())
    assert report["reason"] == "the node's audit could not read its own inputs" and not report["ok"]


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

    result = run_export(
        tmp_path / "out", "--format", "torchscript", "--model", model_path, "--input-shape", CNN_SHAPE,
        probe=digits.probe,
    )  # fmt: skip

    assert result.returncode == export.EXIT_EXPORT, result.stderr
    assert "linalg_svd" in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not (tmp_path / "out" / "native_outputs.npy").exists()


def test_an_sklearn_estimator_without_converter_exits_3(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_path = tmp_path / "centroid.joblib"
    joblib.dump(NearestCentroid().fit(digits.X.reshape(len(digits.X), -1), digits.y), model_path)
    (tmp_path / "out").mkdir()

    code = export.main(
        ["--format", "sklearn", "--model", str(model_path), "--probe", str(digits.probe),
         "--input-shape", FLAT_SHAPE, "--out", str(tmp_path / "out")]
    )  # fmt: skip

    assert code == export.EXIT_EXPORT
    said = capsys.readouterr().err
    assert "skl2onnx:" in said and "NearestCentroid" in said


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

    result = run_export(
        tmp_path / "out", "--format", "torch-state-dict", "--model", weights, "--factory", factory,
        "--bundle", CNN, "--input-shape", CNN_SHAPE, probe=digits.probe,
    )  # fmt: skip

    assert result.returncode == export.EXIT_LOAD
    assert reason in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_corrupt_model_file_exits_2(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_path = tmp_path / "model.joblib"
    model_path.write_bytes(b"not a pickle")

    code = export.main(
        ["--format", "sklearn", "--model", str(model_path), "--probe", str(digits.probe),
         "--input-shape", FLAT_SHAPE, "--out", str(tmp_path)]
    )  # fmt: skip

    assert code == export.EXIT_LOAD
    assert "cannot load the sklearn model" in capsys.readouterr().err


def test_probe_inputs_that_do_not_fit_the_input_shape_are_a_usage_error(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = export.main(
        ["--format", "sklearn", "--model", str(tmp_path / "unused.joblib"), "--probe", str(digits.probe),
         "--input-shape", "1,63", "--out", str(tmp_path)]
    )  # fmt: skip

    assert code == export.EXIT_USAGE
    assert "do not fit the input shape" in capsys.readouterr().err


def test_the_cnn_training_is_reproducible_and_reports_named_numbers(digits: Digits, tmp_path: Path) -> None:
    params = {"epochs": 1, "save": "state_dict"}
    first = train(CNN, digits, tmp_path / "a", params)
    second = train(CNN, digits, tmp_path / "b", params)

    assert (first / "model.pt").read_bytes() == (second / "model.pt").read_bytes()
    names = ["train_loss", "train_accuracy", "epochs", "n_train", "seed", "seconds"]
    metrics = read_metrics(first / "metrics.json", names)
    assert metrics["seed"] == 7 and metrics["epochs"] == 1 and list(metrics) == names


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"loss": 0.123456789, "acc": 12345678}', None),
        ('{"loss": "0.1"}', "is not a number"),
        ('{"loss": true}', "is not a number"),
        ('{"loss": NaN}', "not a finite number"),
        ('{"loss": 1e999}', "not a finite number"),
        ('{"loss": {"rows": [0.5, 0.25]}}', "is not a number"),
        ('{"loss": [0.5, 0.25]}', "is not a number"),
        ('{"row_0_0p5_0p25": 1}', "not a metric the job spec declared"),
        ('{"loss": 1, "loss": 2}', "names one metric twice"),
        ("[0.5, 0.25]", "not a JSON object"),
        ("not json", "not JSON"),
        ("{" + ", ".join(f'"m{i}": {i}' for i in range(9)) + "}", "more than 8 entries"),
        ('{"loss": 0.5, "pad": "' + "x" * 5000 + '"}', "larger than 4096 bytes"),
    ],
)
def test_job_metrics_are_a_few_declared_numbers(text: str, reason: str | None, tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    declared = ["loss", "acc", *(f"m{i}" for i in range(9))]
    if reason is None:
        assert read_metrics(path, declared) == {"loss": 0.1235, "acc": 12350000.0}
        return
    with pytest.raises(MetricsRejected) as rejected:
        read_metrics(path, declared)
    assert reason in rejected.value.reason
    assert "row_0" not in rejected.value.reason and "rows" not in rejected.value.reason
