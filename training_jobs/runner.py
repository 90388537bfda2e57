"""Running one accepted job on the provider, stage by stage, until it is COMPLETED or FAILED.

1. PROVISIONING: the bundle is unpacked from the object store; the dataset is split
   (:mod:`training_jobs.holdout`) and only the training part is written for the job.
2. RUNNING: the consumer's code runs in the sandbox (no network, data read-only, one
   writable ``/out``); only the declared model and metrics files are taken out of it. With
   ``verification.rerun`` it runs twice and the two models must have the same sha256.
3. VERIFYING: the node's own script (:mod:`training_jobs.evaluate`) loads the model in a
   second sandbox run — loading a pickled or factory-built model executes code, so that
   never happens in the node process — evaluates it on the held-out rows and exports ONNX.
4. TRANSLATING: in the node process, which touches only the ONNX protobuf, ``onnx.checker``
   and ONNX Runtime check the export and compare it with the native outputs on probe inputs;
   the node computes the ONNX model's accuracy on the held-out rows itself.
5. COMPLETED: the model (and the ONNX file, when it passed) go into the object store, then one
   transaction marks the job done and queues its lineage (:mod:`training_jobs.lineage`).

Job misbehaviour becomes FAILED with the reason; the node keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import training_jobs.evaluate
from kernel.db import transaction
from kernel.errors import AgoraError
from kernel.hashing import sha256_file
from kernel.storage import ObjectStore
from training_jobs import bundle as bundles
from training_jobs import holdout
from training_jobs.joblog import JobLogSink
from training_jobs.lineage import JobLineage
from training_jobs.models import COMPLETED, RUNNING, TRANSLATING, VERIFYING, Job
from training_jobs.onnx_check import OnnxCheck, check_onnx, load_npy
from training_jobs.sandbox import Limits, Mount, OutputRejected, Sandbox, SandboxRun, collect_outputs
from training_jobs.spec import JobSpec
from training_jobs.states import JobStates

log = logging.getLogger("agora.jobs")
PROGRESS = re.compile(r"^##agora progress=([0-9]*\.?[0-9]+)\s*$")
EVALUATOR_OUTPUTS = ["model.onnx", "native_outputs.npy", "native_report.json"]
EVALUATE_SCRIPT = Path(training_jobs.evaluate.__file__)
# the share of the job's progress bar each stage ends at
# where the job's progress bar stands when each stage begins
STAGE_START = {RUNNING: 0.05, VERIFYING: 0.7, TRANSLATING: 0.85}


class JobFailed(Exception):
    """The job cannot go on; the message is the reason the consumer reads."""


class JobCancelled(Exception):
    pass


@dataclass(frozen=True)
class RunnerConfig:
    jobs_dir: Path
    holdout_fraction: float = 0.2
    evaluator_image: str | None = None  # for podman / docker / Kubernetes: an image with torch and skl2onnx


class JobRunner:
    """Runs provider jobs; one instance serves every worker thread of a process."""

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        sandbox: Sandbox,
        *,
        address: str,
        config: RunnerConfig,
        states: JobStates,
        offering_kind: Callable[[str], str],
        wake_notary: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.sandbox = sandbox
        self.address = address
        self.config = config
        self.states = states
        self._offering_kind = offering_kind
        self._wake_notary = wake_notary

    def run(self, job_id: str, cancel: threading.Event) -> None:
        """Take a claimed job (state PROVISIONING) to a final state; never raises."""
        job = self.states.get(job_id)
        workdir = self.config.jobs_dir / job_id.rsplit(":", 1)[-1]
        sink = JobLogSink(self.engine, job_id)
        try:
            spec = JobSpec.model_validate(job.spec)
            self._run(job, spec, workdir, sink, cancel)
        except JobCancelled:
            sink.node("cancelled on request; the sandbox was stopped")
            self.states.finish(job_id, "CANCELLED", "cancelled on request")
        except JobFailed as exc:
            sink.node(f"failed: {exc}")
            self.states.finish(job_id, "FAILED", str(exc))
        except Exception as exc:  # a node-side fault: the job fails with it, the worker lives on
            log.exception("job %s: internal error", job_id)
            detail = exc.detail if isinstance(exc, AgoraError) else f"{type(exc).__name__}: {exc}"
            sink.node(f"internal error: {detail}")
            self.states.finish(job_id, "FAILED", f"internal error on the provider's node: {detail}")
        finally:
            sink.close()
            shutil.rmtree(workdir, ignore_errors=True)

    # Stages ---------------------------------------------------------------------------

    def _run(self, job: Job, spec: JobSpec, workdir: Path, sink: JobLogSink, cancel: threading.Event) -> None:
        dirs, split = self._provision(job, spec, workdir, sink)
        self._advance(job.id, RUNNING, "running the job's code in the sandbox", cancel, sink)
        model_path, metrics = self._train(job, spec, dirs, sink, cancel)
        self._advance(job.id, VERIFYING, "loading the model and evaluating it on held-out data", cancel, sink)
        evaluation = self._evaluate(spec, dirs, model_path, sink, cancel)
        self._advance(job.id, TRANSLATING, "checking the ONNX translation", cancel, sink)
        check = self._translate(spec, dirs, split, evaluation, sink)
        self._complete(job, spec, model_path, metrics, evaluation, check, dirs, len(split.holdout_y), sink)

    def _advance(self, job_id: str, state: str, note: str, cancel: threading.Event, sink: JobLogSink) -> None:
        if cancel.is_set():
            raise JobCancelled()
        sink.node(note)
        if not self.states.advance(job_id, state, note, progress=STAGE_START[state]):
            raise JobCancelled()

    def _provision(
        self, job: Job, spec: JobSpec, workdir: Path, sink: JobLogSink
    ) -> tuple[dict[str, Path], holdout.Split]:
        shutil.rmtree(workdir, ignore_errors=True)
        stages = ("job", "data", "holdout", "out", "rerun", "model", "verify", "agora")
        dirs = {name: workdir / name for name in stages}
        for path in dirs.values():
            path.mkdir(parents=True)
        if spec.code.image is None:
            data = b"".join(self.store.read(job.code_digest))
            names = bundles.unpack(data, dirs["job"])
            if spec.code.entrypoint not in names:
                raise JobFailed(f"the bundle has no entrypoint {spec.code.entrypoint}")
        if not self.store.exists(job.dataset_sha256):
            raise JobFailed(f"the dataset version {job.dataset_sha256[:12]}… is no longer on this node")
        try:
            features, labels = holdout.read_dataset(b"".join(self.store.read(job.dataset_sha256)))
        except holdout.UnusableDataset as exc:
            raise JobFailed(exc.detail) from None
        split = holdout.split(
            features, labels, fraction=self.config.holdout_fraction, seed_hex=job.dataset_sha256
        )
        split.write(dirs["data"] / "train.npz", dirs["holdout"] / "holdout.npz")
        (dirs["data"] / "params.json").write_text(json.dumps(spec.parameters))
        sink.node(
            f"dataset {job.dataset_sha256[:12]}…: {len(split.train_y)} rows for training, "
            f"{len(split.holdout_y)} held back by the node"
        )
        return dirs, split

    def _train(
        self, job: Job, spec: JobSpec, dirs: dict[str, Path], sink: JobLogSink, cancel: threading.Event
    ) -> tuple[Path, dict[str, Any] | None]:
        declared = [spec.output.path] + ([spec.output.metrics] if spec.output.metrics else [])
        # RUNNING's share of the progress bar, halved between the two runs of a re-run job
        start, end = STAGE_START[RUNNING], STAGE_START[VERIFYING]
        middle = (start + end) / 2 if spec.verification.rerun else end
        outputs = self._train_once(job, spec, dirs, dirs["out"], declared, sink, cancel, start, middle)
        model = outputs[spec.output.path]
        if spec.verification.rerun:
            sink.node("re-running the job: a deterministic job must produce the same model")
            again = self._train_once(job, spec, dirs, dirs["rerun"], declared, sink, cancel, middle, end)
            first, second = sha256_file(model)[0], sha256_file(again[spec.output.path])[0]
            if first != second:
                raise JobFailed(
                    f"the re-run produced another model (sha256 {first[:12]}… then {second[:12]}…): "
                    "the job is not deterministic"
                )
            sink.node(f"the re-run produced the same model (sha256 {first[:12]}…)")
        metrics = None
        if spec.output.metrics and spec.output.metrics in outputs:
            try:
                loaded = json.loads(outputs[spec.output.metrics].read_text())
                metrics = loaded if isinstance(loaded, dict) else {"value": loaded}
            except (ValueError, UnicodeDecodeError):
                raise JobFailed(f"{spec.output.metrics} is not JSON") from None
        return model, metrics

    def _train_once(
        self,
        job: Job,
        spec: JobSpec,
        dirs: dict[str, Path],
        out: Path,
        declared: list[str],
        sink: JobLogSink,
        cancel: threading.Event,
        start: float,
        end: float,
    ) -> dict[str, Path]:
        resources = spec.resources
        command = (
            ["python", str(spec.code.entrypoint)]
            if spec.code.image is None
            else list(spec.code.command or [])
        )
        run = SandboxRun(
            command=command,
            mounts=[Mount(dirs["job"], "/job"), Mount(dirs["data"], "/data")],
            output_dir=out,
            workdir="/job",
            env={
                "AGORA_DATA": "/data",
                "AGORA_OUTPUT": "/out",
                "AGORA_PARAMS_FILE": "/data/params.json",
                "AGORA_SEED": str(int(job.dataset_sha256[:8], 16)),
                "PYTHONHASHSEED": "0",  # a re-run must be able to write byte-identical files
            },
            limits=Limits(
                cpu_seconds=resources.cpu_seconds,
                memory_bytes=int(resources.memory),
                wall_seconds=resources.wall_time,
                max_output_bytes=int(resources.max_output),
                max_processes=resources.max_processes,
            ),
            image=spec.code.image,
            name=f"agora-{job.id.rsplit(':', 1)[-1][:18]}",
        )

        def on_output(line: str) -> None:
            match = PROGRESS.match(line)
            if match:
                share = min(max(float(match.group(1)), 0.0), 1.0)
                self.states.progress(job.id, start + (end - start) * share)
            sink.job(line)

        outcome = self.sandbox.run(run, on_output=on_output, cancel=cancel)
        if cancel.is_set():
            raise JobCancelled()
        sink.node(f"the job {outcome.reason} after {outcome.wall_seconds:.1f} s")
        if not outcome.ok:
            raise JobFailed(f"the job's code {outcome.reason}")
        # the metrics file is optional: leave it out when the job wrote none
        wanted = [name for name in declared if name == spec.output.path or os.path.lexists(out / name)]
        try:
            return collect_outputs(out, wanted, int(resources.max_output))
        except OutputRejected as exc:
            raise JobFailed(exc.detail) from None

    def _evaluate(
        self, spec: JobSpec, dirs: dict[str, Path], model: Path, sink: JobLogSink, cancel: threading.Event
    ) -> dict[str, Any]:
        image = None
        if self.sandbox.kind != "bubblewrap":
            image = self.config.evaluator_image
            if not image:
                raise JobFailed(
                    f"the {self.sandbox.kind} sandbox needs an evaluator image "
                    "(AGORA_SANDBOX_EVALUATOR_IMAGE) to verify models"
                )
        shutil.copyfile(model, dirs["model"] / spec.output.path)
        # the node's own script, copied beside the job so every sandbox kind can mount it
        shutil.copyfile(EVALUATE_SCRIPT, dirs["agora"] / "evaluate.py")
        command = [
            "python",
            "/agora/evaluate.py",
            "--format",
            spec.output.format,
            "--model",
            f"/model/{spec.output.path}",
            "--holdout",
            "/holdout/holdout.npz",
            "--input-shape",
            ",".join(str(d) for d in spec.onnx.input_shape),
            "--dtype",
            spec.onnx.dtype,
            "--opset",
            str(spec.onnx.opset),
            "--out",
            "/out",
        ]
        if spec.output.factory:
            command += ["--factory", spec.output.factory, "--bundle", "/job"]
        limits = Limits(
            cpu_seconds=900,
            memory_bytes=max(int(spec.resources.memory), 2 * 1024**3),
            wall_seconds=900,
            max_output_bytes=_evaluation_output_cap(spec),
        )
        run = SandboxRun(
            command=command,
            mounts=[
                Mount(dirs["agora"], "/agora"),
                Mount(dirs["model"], "/model"),
                Mount(dirs["holdout"], "/holdout"),
                Mount(dirs["job"], "/job"),
            ],
            output_dir=dirs["verify"],
            workdir="/tmp",
            limits=limits,
            image=image,
            name="agora-evaluate",
        )
        outcome = self.sandbox.run(run, on_output=sink.verifier, cancel=cancel)
        if cancel.is_set():
            raise JobCancelled()
        report_path = dirs["verify"] / "native_report.json"
        report: dict[str, Any] = {}
        if report_path.is_file() and not report_path.is_symlink():
            try:
                report = json.loads(report_path.read_text())
            except ValueError:
                report = {}
        if outcome.exit_code == 2:
            why = report.get("error") or "see the job log"
            raise JobFailed(f"the node could not load the produced {spec.output.format} model: {why}")
        if outcome.exit_code == 3:
            report["export_error"] = report.get("export_error") or "the ONNX export failed"
        elif not outcome.ok:
            raise JobFailed(f"evaluating the model {outcome.reason}")
        if "native_accuracy" not in report:
            raise JobFailed("the evaluation wrote no report")
        sink.node(f"held-out accuracy of the native model: {report['native_accuracy']:.4f}")
        return report

    def _translate(
        self,
        spec: JobSpec,
        dirs: dict[str, Path],
        split: holdout.Split,
        evaluation: dict[str, Any],
        sink: JobLogSink,
    ) -> OnnxCheck | None:
        if evaluation.get("export_error"):
            sink.node(f"no ONNX model: {evaluation['export_error']}")
            return None
        try:
            produced = collect_outputs(dirs["verify"], EVALUATOR_OUTPUTS, _evaluation_output_cap(spec))
        except OutputRejected as exc:
            raise JobFailed(f"the evaluation's output is unusable: {exc.detail}") from None
        cap = 256 * 1024**2
        native_outputs = load_npy(produced["native_outputs.npy"], cap)
        holdout_x = split.holdout_X.reshape(-1, *spec.onnx.input_shape[1:]).astype(spec.onnx.dtype)
        # the probe inputs are the node's own first held-out rows, never a file the sandbox wrote
        check = check_onnx(
            produced["model.onnx"],
            probe_inputs=holdout_x[: len(native_outputs)],
            native_outputs=native_outputs,
            holdout_X=holdout_x,
            holdout_y=split.holdout_y,
            tolerance=spec.onnx.tolerance,
            expect_opset=spec.onnx.opset,
        )
        sink.node(("ONNX check passed: " if check.ok else "ONNX check failed: ") + check.reason)
        return check

    # Completion -----------------------------------------------------------------------

    def _complete(
        self,
        job: Job,
        spec: JobSpec,
        model: Path,
        metrics: dict[str, Any] | None,
        evaluation: dict[str, Any],
        check: OnnxCheck | None,
        dirs: dict[str, Path],
        rows: int,
        sink: JobLogSink,
    ) -> None:
        """Store the models, then in one transaction end the job and queue its lineage."""
        native = self.store.put_file(model)
        onnx = self.store.put_file(dirs["verify"] / "model.onnx") if check is not None and check.ok else None
        lineage = JobLineage(self.address, job, spec, self.sandbox.kind, self._offering_kind(job.offering_id))
        ids = lineage.ids(native.sha256, onnx.sha256 if onnx else None)
        artifacts = {
            "native": {
                "sha256": native.sha256,
                "size": native.size,
                "asset_id": ids["model"],
                "released": bool(job.result.get("release_native")),
                "format": spec.output.format,
            },
        }
        if onnx:
            artifacts["onnx"] = {
                "sha256": onnx.sha256,
                "size": onnx.size,
                "asset_id": ids["onnx"],
                "released": True,
            }
        result = {
            "metrics": {
                "holdout_rows": rows,
                "native_accuracy": evaluation.get("native_accuracy"),
                "onnx_accuracy": check.onnx_accuracy if check else None,
                "max_abs_diff": check.max_abs_diff if check else None,
                "tolerance": spec.onnx.tolerance,
                "job_reported": metrics,
            },
            "onnx_check": check.as_dict()
            if check
            else {"ok": False, "reason": evaluation.get("export_error")},
            "artifacts": artifacts,
            "lineage": ids,
        }
        reason = "completed"
        if onnx is None:
            reason += "; no ONNX model: " + str(
                evaluation.get("export_error") or (check.reason if check else "")
            )
        with transaction(self.engine) as session:
            lineage.queue(session, native.sha256, onnx.sha256 if onnx else None, evaluation, check, rows)
            self.states.finish_in(session, job.id, COMPLETED, reason, result=result)
        sink.node(reason)
        self._wake_notary()


def _evaluation_output_cap(spec: JobSpec) -> int:
    """What the verification run may write: the ONNX model and the native outputs."""
    return 4 * int(spec.resources.max_output) + 64 * 1024**2
