"""Running one accepted job on the provider, stage by stage, until it is COMPLETED or FAILED.

1. PROVISIONING: the bundle is unpacked from the object store; the dataset is split
   (:mod:`training_jobs.holdout`) and only the training part is written for the job; the
   node writes its probe inputs (training rows and inputs it draws itself).
2. RUNNING: the consumer's code runs in the sandbox (no network, data read-only, one
   writable ``/out``); only the declared model and metrics files are taken out of it, and
   the metrics only as a few named numbers (:mod:`training_jobs.job_metrics`). With
   ``verification.rerun`` it runs twice and the two models must have the same sha256.
3. VERIFYING: the export run (:mod:`training_jobs.verification`) loads the model — which may
   execute consumer code — in a sandbox that does not hold the held-out rows, translates it
   to ONNX and writes its outputs on the probe inputs.
4. TRANSLATING: the audit run, node code only, in a sandbox with limits: refuses and rewrites
   what the ONNX file carries besides numbers and standard operators, refuses weights that
   hold the provider's rows, compares ONNX Runtime with the native outputs on the probe
   inputs and measures accuracy on the held-out rows. The node process parses only its report.
5. COMPLETED: the native model and the released ONNX model go into the object store, then one
   transaction marks the job done and queues its lineage (:mod:`training_jobs.lineage`).

Job misbehaviour becomes FAILED with a reason the node wrote (:mod:`training_jobs.failures`);
details that might echo the job's output go only to the provider's log (stage
``node-private``). A failure on the provider's side gives the agreement's use back. The node
keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from kernel.db import transaction
from kernel.hashing import sha256_file
from kernel.storage import ObjectStore
from marketplace.terms import ComputeTerms
from training_jobs import bundle as bundles
from training_jobs import holdout
from training_jobs.failures import JobCancelled, JobFailed, ProviderFault, ended, output_problem
from training_jobs.job_metrics import read_metrics
from training_jobs.joblog import JobLogSink
from training_jobs.lineage import JobLineage
from training_jobs.models import COMPLETED, RUNNING, TRANSLATING, VERIFYING, Job
from training_jobs.release import native_release
from training_jobs.sandbox import (
    Limits,
    Mount,
    OutputRejected,
    Sandbox,
    SandboxRun,
    SandboxUnavailable,
    collect_outputs,
)
from training_jobs.sandbox.base import fmt_bytes
from training_jobs.spec import JobSpec
from training_jobs.states import JobStates
from training_jobs.verification import Audited, Verification

log = logging.getLogger("agora.jobs")
PROGRESS = re.compile(r"^##agora progress=([0-9]*\.?[0-9]+)\s*$")
PROGRESS_STEP = 0.01  # a job's progress is shown in whole percent and only ever rises
# where the job's progress bar stands when each stage begins
STAGE_START = {RUNNING: 0.05, VERIFYING: 0.7, TRANSLATING: 0.85}
# the job's working directories: what each sandbox run mounts, and where it writes
WORKDIRS = (
    "job", "data", "holdout", "probe", "out", "rerun", "model", "export-code", "export", "exported",
    "audit-code", "released",
)  # fmt: skip
__all__ = ["JobCancelled", "JobFailed", "JobRunner", "RunnerConfig"]


@dataclass(frozen=True)
class RunnerConfig:
    jobs_dir: Path
    holdout_fraction: float = 0.2
    # podman / docker / Kubernetes: an image with torch, skl2onnx, onnx and onnxruntime
    evaluator_image: str | None = None


def job_dirs(workdir: Path) -> dict[str, Path]:
    """Fresh, empty working directories of one job."""
    shutil.rmtree(workdir, ignore_errors=True)
    dirs = {name: workdir / name for name in WORKDIRS}
    for path in dirs.values():
        path.mkdir(parents=True)
    return dirs


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
        compute_terms: Callable[[str], ComputeTerms] = lambda offering_id: ComputeTerms(),
        give_back: Callable[[str, str], object] = lambda agreement_id, reason: None,
        wake_notary: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.sandbox = sandbox
        self.address = address
        self.config = config
        self.states = states
        self.verification = Verification(sandbox, config.evaluator_image)
        self._offering_kind = offering_kind
        self._compute_terms = compute_terms
        self._give_back = give_back
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
            self._fail(job, exc.reason, exc.detail, sink, provider_fault=exc.provider_fault)
        except SandboxUnavailable as exc:
            self._fail(job, "this node's sandbox stopped working, so the job could not run", exc.detail, sink)
        except Exception as exc:  # a node-side fault: the job fails with it, the worker lives on
            reference = uuid.uuid4().hex[:8]
            log.exception("job %s: internal error (reference %s)", job_id, reference)
            reason = (
                f"internal error on the provider's node (reference {reference}); its operator has the details"
            )
            self._fail(job, reason, f"internal error {reference}: {type(exc).__name__}: {exc}", sink)
        finally:
            sink.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def _fail(
        self, job: Job, reason: str, detail: str, sink: JobLogSink, *, provider_fault: bool = True
    ) -> None:
        """End the job FAILED with the node's reason; the detail only in the provider's log;
        a failure on the provider's side gives the agreement's use back."""
        if detail:
            log.warning("job %s failed: %s (%s)", job.id, reason, detail[:2000])
            sink.private(detail)
        sink.node(f"failed: {reason}")
        if not self.states.finish(job.id, "FAILED", reason) or not provider_fault:
            return
        try:
            self._give_back(job.agreement_id, f"job {job.id} failed on the provider's side: {reason}")
        except Exception:  # the failure stands; the operator can see the use was not returned
            log.exception("job %s: could not give the agreement's use back", job.id)
            return
        sink.node("the failure was on the provider's side: the agreement's use was given back")

    # Stages ---------------------------------------------------------------------------

    def _run(self, job: Job, spec: JobSpec, workdir: Path, sink: JobLogSink, cancel: threading.Event) -> None:
        terms = self._compute_terms(job.offering_id)
        dirs = self._provision(job, spec, workdir, sink)
        self._advance(job.id, RUNNING, "running the job's code in the sandbox", cancel, sink)
        model_path, metrics = self._train(job, spec, dirs, sink, cancel)
        self._advance(
            job.id,
            VERIFYING,
            "translating the model to ONNX in a sandbox that does not hold the held-out rows",
            cancel,
            sink,
        )
        exported = self.verification.export(spec, dirs, model_path, sink.export, cancel)
        self._advance(
            job.id, TRANSLATING, "the node's audit: checking and rewriting the ONNX model", cancel, sink
        )
        # the audit run reads the held-out rows: whatever it prints (ONNX Runtime's own errors
        # quote values the consumer's graph computed) stays with the provider
        audited = self.verification.audit(spec, dirs, exported, terms, sink.private, cancel)
        report = audited.report
        sink.node(
            f"audit passed: {report.reason}; ONNX accuracy on {report.holdout_rows} held-out rows "
            + (f"{report.onnx_accuracy:.4f}" if report.onnx_accuracy is not None else "not measured")
        )
        # the terms as they are now: a provider who tightened them meanwhile is obeyed
        self._complete(job, spec, model_path, metrics, audited, self._compute_terms(job.offering_id), sink)

    def _advance(self, job_id: str, state: str, note: str, cancel: threading.Event, sink: JobLogSink) -> None:
        if cancel.is_set():
            raise JobCancelled()
        sink.node(note)
        if not self.states.advance(job_id, state, note, progress=STAGE_START[state]):
            raise JobCancelled()

    def _provision(self, job: Job, spec: JobSpec, workdir: Path, sink: JobLogSink) -> dict[str, Path]:
        # the dataset first: a version that cannot be trained on fails the job before any of its code
        if not self.store.exists(job.dataset_sha256):
            raise ProviderFault(f"the dataset version {job.dataset_sha256[:12]}… is no longer on this node")
        try:
            rows = holdout.load(self.engine, self.store, job.offering_id, job.dataset_sha256)
        except holdout.Untrained as exc:  # the reason shown with the version since its registration
            raise ProviderFault(exc.detail) from None
        except holdout.UnusableDataset as exc:
            raise ProviderFault(
                "the provider's dataset cannot be read as a training set", exc.detail
            ) from None
        for note in rows.notes:  # counts and column names only
            sink.node(f"dataset: {note}")
        self.verification.image()  # a node that cannot verify runs no job code
        dirs = job_dirs(workdir)
        if spec.code.image is None:
            data = b"".join(self.store.read(job.code_digest))
            names = bundles.unpack(data, dirs["job"])
            if spec.code.entrypoint not in names:
                raise JobFailed(f"the bundle has no entrypoint {spec.code.entrypoint}")
        split = holdout.split(
            rows.features, rows.labels, fraction=self.config.holdout_fraction, seed_hex=job.dataset_sha256
        )
        split.write(dirs["data"] / "train.npz", dirs["holdout"] / "holdout.npz")
        (dirs["data"] / "params.json").write_text(json.dumps(spec.parameters))
        probes = self.verification.write_probe(spec, split, dirs["probe"] / "probe.npy")
        sink.node(
            f"dataset {job.dataset_sha256[:12]}…: {len(split.train_y)} rows for training, "
            f"{len(split.holdout_y)} held back by the node; {probes} probe inputs written by the node"
        )
        return dirs

    def _train(
        self, job: Job, spec: JobSpec, dirs: dict[str, Path], sink: JobLogSink, cancel: threading.Event
    ) -> tuple[Path, dict[str, float]]:
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
                    "the re-run produced another model: the job is not deterministic",
                    f"sha256 {first} then {second}",
                )
            sink.node("the re-run produced the same model")
        metrics: dict[str, float] = {}
        if spec.output.metrics and spec.output.metrics in outputs:
            metrics = read_metrics(outputs[spec.output.metrics], spec.output.metric_names)
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
        limits = Limits(
            cpu_seconds=resources.cpu_seconds,
            memory_bytes=int(resources.memory),
            wall_seconds=resources.wall_time,
            max_output_bytes=int(resources.max_output),
            max_processes=resources.max_processes,
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
            limits=limits,
            image=spec.code.image,
            name=f"agora-{job.id.rsplit(':', 1)[-1][:18]}",
        )
        shown = [start]

        def on_output(line: str) -> None:
            match = PROGRESS.match(line)
            if match:
                share = min(max(float(match.group(1)), 0.0), 1.0)
                # whole percent, never back: the bar must not become a channel for numbers
                value = round((start + (end - start) * share) / PROGRESS_STEP) * PROGRESS_STEP
                if value > shown[0]:
                    shown[0] = value
                    self.states.progress(job.id, value)
            sink.job(line)

        outcome = self.sandbox.run(run, on_output=on_output, cancel=cancel)
        if cancel.is_set():
            raise JobCancelled()
        said = f"the job's code {ended(outcome, limits)}"
        sink.node(f"{said} after {outcome.wall_seconds:.0f} s")
        if not outcome.ok:
            raise JobFailed(said, outcome.reason)
        # the metrics file is optional: leave it out when the job wrote none
        wanted = [name for name in declared if name == spec.output.path or os.path.lexists(out / name)]
        return _collect(out, wanted, int(resources.max_output))

    # Completion -----------------------------------------------------------------------

    def _complete(
        self,
        job: Job,
        spec: JobSpec,
        model: Path,
        metrics: dict[str, float],
        audited: Audited,
        terms: ComputeTerms,
        sink: JobLogSink,
    ) -> None:
        """Store the models, then in one transaction end the job and queue its lineage."""
        report = audited.report
        native = self.store.put_file(model)
        onnx = self.store.put_file(audited.model)
        lineage = JobLineage(self.address, job, spec, self.sandbox.kind, self._offering_kind(job.offering_id))
        ids = lineage.ids(native.sha256, onnx.sha256)
        released, why = native_release(spec, job.result, terms)
        result = {
            "metrics": {
                "holdout_rows": report.holdout_rows,
                "onnx_accuracy": report.onnx_accuracy,
                "probe_inputs": report.probe_inputs,
                "max_abs_diff": report.max_abs_diff,
                "tolerance": report.tolerance,
            },
            "job_metrics": metrics,
            "onnx_check": report.public(),
            "artifacts": {
                "native": {
                    "sha256": native.sha256,
                    "size": native.size,
                    "asset_id": ids["model"],
                    "released": released,
                    "format": spec.output.format,
                },
                "onnx": {"sha256": onnx.sha256, "size": onnx.size, "asset_id": ids["onnx"], "released": True},
            },
            "release_native": released,
            "release_native_reason": why,
            "lineage": ids,
        }
        with transaction(self.engine) as session:
            lineage.queue(session, native.sha256, onnx.sha256, report)
            self.states.finish_in(session, job.id, COMPLETED, "completed", result=result)
        sink.node("completed")
        self._wake_notary()


def _collect(out: Path, wanted: list[str], cap: int) -> dict[str, Path]:
    """The declared outputs, or :class:`JobFailed` naming the one that cannot leave."""
    for name in wanted:
        try:
            collect_outputs(out, [name], cap)
        except OutputRejected as exc:
            raise JobFailed(f"the declared output {name} {output_problem(exc.detail)}", exc.detail) from None
    try:
        return collect_outputs(out, wanted, cap)
    except OutputRejected as exc:
        said = f"the declared outputs exceed the output cap of {fmt_bytes(cap)}"
        raise JobFailed(said, exc.detail) from None
