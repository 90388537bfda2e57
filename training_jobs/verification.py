"""The node's side of verifying a trained model: two sandbox runs, and what it believes of each.

* **export** (:mod:`training_jobs.export`): consumer code may run here — loading a pickle,
  a TorchScript archive or the bundle's factory executes it — so the run sees the native
  model, the bundle and the node's probe inputs, and never the held-out rows. It leaves an
  ONNX file and the native model's outputs on the probe inputs; the node reads neither.
* **audit** (:mod:`training_jobs.audit`): node code only — ONNX Runtime and onnx on the
  exported file, with the probe inputs, the native outputs, the training and the held-out
  rows mounted read-only. It writes the released model and a small JSON report.

The node process only copies and hashes these files and parses the report (bounded in size,
validated field by field): a consumer's graph never runs, or is even parsed, beside the
node's keys and database. The figures attested on chain come from the report alone.

The probe inputs are the node's: training rows the job already saw, and as many inputs drawn
by the node within the training data's range.

Both runs are described by a :class:`Translation` (:meth:`Verification.run_export`,
:meth:`Verification.run_audit`), so a model no job trained — a federation's global model on
its coordinator, which holds no rows — goes through the same two runs, audited without rows.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import training_jobs.audit
import training_jobs.export
from marketplace.terms import ComputeTerms
from training_jobs import holdout
from training_jobs.audit.__main__ import EXIT_NODE as AUDIT_EXIT_NODE
from training_jobs.failures import JobCancelled, JobFailed, ProviderFault, ended
from training_jobs.sandbox import Limits, Mount, OutputRejected, Sandbox, SandboxRun, collect_outputs
from training_jobs.spec import JobSpec

EXPORT_SCRIPT = Path(training_jobs.export.__file__)
AUDIT_PACKAGE = Path(training_jobs.audit.__file__).parent
AUDIT_MODULE = "agora_audit"
PROBE_TRAINING_ROWS = 32
PROBE_GENERATED = 32
REPORT_MAX_BYTES = 64 * 1024
MiB = 1024**2
GiB = 1024**3
# the least an audit gets, whatever the job asked for: importing ONNX Runtime takes a second
AUDIT_MIN_CPU_SECONDS = 30
AUDIT_MIN_WALL_SECONDS = 60.0
AUDIT_MIN_MEMORY = 1 * GiB
EXPORT_MIN_SECONDS = 120
EXPORT_MIN_MEMORY = 2 * GiB

NodeName = Annotated[str, Field(pattern=r"^(input|output|label|probabilities|output_[0-9]{1,3})$")]
Version = Annotated[str, Field(max_length=40, pattern=r"^[0-9A-Za-z.+_-]*$")]


class AuditReport(BaseModel):
    """The audit run's report, as the node accepts it (see ``training_jobs/audit/__main__.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    reason: str = Field(max_length=600, pattern=r"^[^\x00-\x1f\x7f]*$")
    detail: str | None = Field(default=None, max_length=4000)
    opset: int | None = None
    onnx_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    holdout_rows: int | None = Field(default=None, ge=0)
    probe_inputs: int | None = Field(default=None, ge=0)
    max_abs_diff: float | None = Field(default=None, ge=0.0)
    tolerance: float
    memorized_rows: int | None = Field(default=None, ge=0)
    unchecked_rows: int | None = Field(default=None, ge=0)
    memorization_tolerance: float | None = None
    stored_example_ops: list[Annotated[str, Field(pattern=r"^SVM(Classifier|Regressor)$")]] = Field(
        default_factory=list, max_length=2
    )
    output_names: list[NodeName] = Field(default_factory=list, max_length=64)
    onnx_version: Version | None = None
    onnxruntime_version: Version | None = None
    weights_expected: int | None = Field(default=None, ge=0)
    weights_found: int | None = Field(default=None, ge=0)

    def public(self) -> dict[str, object]:
        """What the consumer reads of the audit: not the provider's detail, nor the figures that
        describe the provider's data rather than the model (its scale, its blank rows)."""
        private = {"detail", "memorization_tolerance", "unchecked_rows"}
        if self.weights_expected is None:  # only asked for a model the node holds the weights of
            private |= {"weights_expected", "weights_found"}
        return {**self.model_dump(exclude=private), "input_name": "input", "rewritten_by_node": True}


@dataclass(frozen=True)
class Translation:
    """What the export and audit runs are told of a model, whoever trained it: a job (from its
    spec, :meth:`of_job`) or a federation (its bundle's factory and the global weights)."""

    format: str  # torchscript | torch-state-dict | sklearn
    model_file: str  # the native model's file name under /model
    input_shape: tuple[int, ...]  # batch first
    dtype: str
    opset: int
    tolerance: float
    factory: str | None = None
    bundle: bool = True  # the code bundle is mounted at /job (not for an OCI-image job)

    @classmethod
    def of_job(cls, spec: JobSpec) -> Translation:
        return cls(
            format=spec.output.format,
            model_file=spec.output.path,
            input_shape=tuple(spec.onnx.input_shape),
            dtype=spec.onnx.dtype,
            opset=spec.onnx.opset,
            tolerance=spec.onnx.tolerance,
            factory=spec.output.factory,
            bundle=spec.code.image is None,
        )


@dataclass(frozen=True)
class Audited:
    report: AuditReport
    model: Path  # the released ONNX model


class Verification:
    """Runs the export and the audit of one job's model; one instance serves every job."""

    def __init__(self, sandbox: Sandbox, evaluator_image: str | None) -> None:
        self.sandbox = sandbox
        self.evaluator_image = evaluator_image

    def image(self) -> str | None:
        """The image the two runs use; for containers the node needs one configured."""
        if self.sandbox.kind == "bubblewrap":
            return None
        if not self.evaluator_image:
            raise ProviderFault(
                f"this node's {self.sandbox.kind} sandbox has no evaluator image configured, so it "
                "cannot verify models",
                "AGORA_SANDBOX_EVALUATOR_IMAGE is not set",
            )
        return self.evaluator_image

    # probe inputs -----------------------------------------------------------------------

    @staticmethod
    def write_probe(spec: JobSpec, split: holdout.Split, path: Path) -> int:
        """Training rows the job saw, and inputs drawn by the node inside their range."""
        dtype = np.dtype(spec.onnx.dtype)
        row_shape = tuple(spec.onnx.input_shape[1:])
        try:
            train = split.train_X.reshape((-1, *row_shape))
        except ValueError:
            raise JobFailed(
                f"the dataset's rows do not fit the job's onnx.input_shape {spec.onnx.input_shape}"
            ) from None
        low, high = train.min(axis=0), train.max(axis=0)
        drawn = np.random.default_rng().uniform(low, high, size=(PROBE_GENERATED, *row_shape))
        probe = np.concatenate([train[:PROBE_TRAINING_ROWS], drawn])
        probe = np.rint(probe) if dtype.kind == "i" else probe
        np.save(path, np.ascontiguousarray(probe.astype(dtype)))
        return len(probe)

    # export -----------------------------------------------------------------------------

    def export(
        self,
        spec: JobSpec,
        dirs: dict[str, Path],
        model: Path,
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> dict[str, Path]:
        """The exported ONNX file and native outputs, copied out of the run; or :class:`JobFailed`."""
        resources = spec.resources
        limits = Limits(
            cpu_seconds=max(resources.cpu_seconds, EXPORT_MIN_SECONDS),
            memory_bytes=max(int(resources.memory), EXPORT_MIN_MEMORY),
            wall_seconds=max(resources.wall_time, EXPORT_MIN_SECONDS),
            max_output_bytes=export_output_cap(spec),
            max_processes=resources.max_processes,
        )
        return self.run_export(Translation.of_job(spec), dirs, model, limits, on_output, cancel)

    def run_export(
        self,
        task: Translation,
        dirs: dict[str, Path],
        model: Path,
        limits: Limits,
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> dict[str, Path]:
        """The export run of ``model`` (copied to ``/model``) with the bundle in ``dirs["job"]``
        and the probe inputs in ``dirs["probe"]``; what it left, copied to ``dirs["exported"]``."""
        image = self.image()
        shutil.copyfile(model, dirs["model"] / task.model_file)
        shutil.copyfile(EXPORT_SCRIPT, dirs["export-code"] / "export.py")
        command = [
            "python", "/agora/export.py",
            "--format", task.format,
            "--model", f"/model/{task.model_file}",
            "--probe", "/probe/probe.npy",
            "--input-shape", ",".join(str(d) for d in task.input_shape),
            "--dtype", task.dtype,
            "--opset", str(task.opset),
            "--out", "/out",
        ]  # fmt: skip
        if task.bundle:
            command += ["--bundle", "/job"]
        if task.factory:
            command += ["--factory", task.factory]
        run = SandboxRun(
            command=command,
            mounts=[
                Mount(dirs["export-code"], "/agora"),
                Mount(dirs["model"], "/model"),
                Mount(dirs["probe"], "/probe"),
                Mount(dirs["job"], "/job"),
            ],
            output_dir=dirs["export"],
            workdir="/tmp",
            limits=limits,
            image=image,
            name="agora-export",
        )
        outcome = self.sandbox.run(run, on_output=on_output, cancel=cancel)
        if cancel.is_set():
            raise JobCancelled()
        if outcome.exit_code == training_jobs.export.EXIT_EXPORT:
            raise JobFailed("the model could not be translated to ONNX, so the node cannot verify it")
        if outcome.exit_code == training_jobs.export.EXIT_LOAD:
            raise JobFailed(
                f"the node could not load or run the {task.format} model on its probe inputs, "
                "so it cannot verify it"
            )
        if not outcome.ok:
            said = f"translating the model to ONNX {ended(outcome, limits)}; the node cannot verify it"
            raise JobFailed(said, outcome.reason)
        try:
            produced = collect_outputs(
                dirs["export"], ["model.onnx", "native_outputs.npy"], limits.max_output_bytes
            )
        except OutputRejected as exc:
            said = "the export left no usable ONNX model, so the node cannot verify it"
            raise JobFailed(said, exc.detail) from None
        copies = {}
        for name, path in produced.items():
            copies[name] = dirs["exported"] / name
            shutil.copyfile(path, copies[name])
        return copies

    # audit ------------------------------------------------------------------------------

    def audit(
        self,
        spec: JobSpec,
        dirs: dict[str, Path],
        exported: dict[str, Path],
        terms: ComputeTerms,
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> Audited:
        """The audit run's verdict and the released model; :class:`JobFailed` when it fails."""
        resources = spec.resources
        budget = Limits(
            cpu_seconds=resources.cpu_seconds,
            memory_bytes=int(resources.memory),
            wall_seconds=resources.wall_time,
        )
        return self.run_audit(
            Translation.of_job(spec),
            dirs,
            exported,
            budget,
            on_output,
            cancel,
            allow_stored_examples=terms.allow_stored_examples,
        )

    def run_audit(
        self,
        task: Translation,
        dirs: dict[str, Path],
        exported: dict[str, Path],
        budget: Limits,
        on_output: Callable[[str], None],
        cancel: threading.Event,
        *,
        allow_stored_examples: bool = False,
        with_rows: bool = True,
        expected_weights: str | None = None,
    ) -> Audited:
        """The audit of ``exported`` within ``budget`` (raised to the audit's least CPU, wall time
        and memory). ``with_rows`` mounts the training and held-out rows (``dirs["data"]``,
        ``dirs["holdout"]``) for the memorization check and the accuracy; a node that holds no
        rows (a federation's coordinator) audits without them, and the report has neither.
        ``expected_weights`` names an ``.npz`` in ``dirs["probe"]`` of the weights the model was
        to be built from: the audit counts those it finds in the ONNX model, and refuses a model
        that holds none of them."""
        image = self.image()
        code = dirs["audit-code"] / AUDIT_MODULE
        shutil.rmtree(code, ignore_errors=True)
        shutil.copytree(AUDIT_PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        onnx_size = exported["model.onnx"].stat().st_size
        command = [
            "python", "-m", AUDIT_MODULE,
            "--model", "/exported/model.onnx",
            "--native-outputs", "/exported/native_outputs.npy",
            "--probe", "/probe/probe.npy",
            "--input-shape", ",".join(str(d) for d in task.input_shape),
            "--dtype", task.dtype,
            "--opset", str(task.opset),
            "--tolerance", repr(task.tolerance),
            "--max-model-bytes", str(onnx_size),
            "--out", "/out",
        ]  # fmt: skip
        mounts = [
            Mount(dirs["audit-code"], "/agora"),
            Mount(dirs["exported"], "/exported"),
            Mount(dirs["probe"], "/probe"),
        ]
        if with_rows:
            command += ["--holdout", "/holdout/holdout.npz", "--train", "/data/train.npz"]
            mounts += [Mount(dirs["holdout"], "/holdout"), Mount(dirs["data"], "/data")]
        if allow_stored_examples:
            command.append("--allow-stored-examples")
        if expected_weights:
            command += ["--expect-weights", f"/probe/{expected_weights}"]
        limits = Limits(
            cpu_seconds=max(budget.cpu_seconds, AUDIT_MIN_CPU_SECONDS),
            memory_bytes=max(budget.memory_bytes, AUDIT_MIN_MEMORY),
            wall_seconds=max(budget.wall_seconds, AUDIT_MIN_WALL_SECONDS),
            # tensors are re-encoded as raw data: small integers kept as varints grow up to 8x
            max_output_bytes=8 * onnx_size + REPORT_MAX_BYTES + MiB,
            max_processes=16,
        )
        run = SandboxRun(
            command=command,
            mounts=mounts,
            output_dir=dirs["released"],
            workdir="/tmp",
            env={"PYTHONPATH": "/agora"},
            limits=limits,
            image=image,
            name="agora-audit",
        )
        outcome = self.sandbox.run(run, on_output=on_output, cancel=cancel)
        if cancel.is_set():
            raise JobCancelled()
        if outcome.killed_by is not None or (outcome.exit_code or 0) > 128:
            said = f"the audit of the ONNX model {ended(outcome, limits)}; the node cannot verify it"
            raise JobFailed(said, outcome.reason)
        report = self._report(dirs["released"], outcome.exit_code)
        if outcome.exit_code == AUDIT_EXIT_NODE:  # only the node's own inputs failing is the node's fault
            raise ProviderFault(
                "the node could not audit the model (a fault on the provider's side)",
                (report.detail if report else None) or f"the audit {ended(outcome, limits)} without a report",
            )
        if outcome.exit_code != 0 or report is None:
            raise JobFailed(
                "the node cannot audit this model; it cannot verify it",
                (report.detail if report else None) or f"the audit {ended(outcome, limits)} without a report",
            )
        assert report is not None
        if not report.ok:
            raise JobFailed(report.reason, report.detail or "")
        try:
            released = collect_outputs(dirs["released"], ["model.onnx"], limits.max_output_bytes)
        except OutputRejected as exc:
            raise ProviderFault("the node's audit left no released model", exc.detail) from None
        return Audited(report, released["model.onnx"])

    @staticmethod
    def _report(out: Path, exit_code: int | None) -> AuditReport | None:
        """The report, bounded and validated; ``None`` when there is none (the run crashed)."""
        try:
            path = collect_outputs(out, ["audit_report.json"], REPORT_MAX_BYTES)["audit_report.json"]
            return AuditReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except OutputRejected:
            return None
        except (ValueError, UnicodeDecodeError, ValidationError) as exc:
            if exit_code == 0:
                said = "the node's audit wrote a report it cannot read"
                raise ProviderFault(said, str(exc)[:2000]) from None
            return None


def export_output_cap(spec: JobSpec) -> int:
    """What the export run may write: the ONNX model and the native outputs."""
    return 4 * int(spec.resources.max_output) + 64 * MiB
