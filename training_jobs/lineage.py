"""What a completed job leaves on chain, and the reports its models carry.

* the agreement, as an asset (content: the agreement id), so the model can name it;
* the job run (content: the canonical hash of who ran which code, with which parameters and
  resources, in which sandbox, on which dataset version under which agreement);
* the trained model, anchored directly with its parents (dataset version, the version's
  validation result when its offering has a suite, agreement, job run) and its verification
  report attested once (``attestResult``);
* the ONNX model the node released, parent the trained model, with its audit report attested.

Every figure attested comes from the node's audit run (:mod:`training_jobs.audit`), which ran
node code only; nothing a sandbox holding consumer code wrote is attested. There is no
held-out accuracy of the native model: measuring it would put the held-out rows beside the
consumer's code. What is attested is the ONNX model's accuracy on the held-out rows and its
agreement with the native model on the node's probe inputs.

The job-run record also names the dataset version the job read — its number, its DVC source
(commit, path, md5) and its validation outcome (status, counts, the result's sha256) — looked
up by the offering and the job's dataset sha256, so ``agora verify`` can tell a model trained on
version 3 from one trained on version 2.

Everything is queued in the caller's transaction (the one that marks the job COMPLETED);
the notary anchors it, so a crash leaves either all of it queued or none.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlmodel import Session, col, select

from contracts.notary import enqueue
from contracts.registry import asset_id
from kernel.canonical import canonical_hash
from marketplace.models import OfferingVersion
from training_jobs.models import Job
from training_jobs.spec import JobSpec
from training_jobs.verification import AuditReport


class JobLineage:
    def __init__(self, address: str, job: Job, spec: JobSpec, sandbox_kind: str, dataset_kind: str) -> None:
        self.address = address
        self.job = job
        self.spec = spec
        self.dataset_kind = dataset_kind
        self.run = self._run_record(sandbox_kind)

    def ids(self, model_sha: str, onnx_sha: str) -> dict[str, str]:
        """The asset ids of the lineage (what :meth:`queue` notarizes)."""
        job = self.job
        ids = {
            "dataset": self._id(self.dataset_kind, job.dataset_sha256),
            "agreement": self._id("agreement", job.agreement_id.removeprefix("0x")),
            "run": self._id("job-result", canonical_hash(self.run)),
            "model": self._id("model", model_sha),
            "onnx": self._id("onnx-model", onnx_sha),
        }
        return ids

    def queue(self, session: Session, model_sha: str, onnx_sha: str, audit: AuditReport) -> None:
        job, spec = self.job, self.spec
        ids = self.ids(model_sha, onnx_sha)
        model_report, onnx_report = reports(spec, model_sha, audit)
        notarize = partial(enqueue, session, owner=self.address)
        notarize(
            kind="agreement",
            content_hash=job.agreement_id.removeprefix("0x"),
            metadata={
                "title": f"agreement {job.agreement_id[:10]}…",
                "agreement": job.agreement_id,
                "offering": job.offering_id,
                "provider": self.address,
                "consumer": job.counterparty,
            },
        )
        evidence, validation_id = dataset_version(session, job)
        notarize(
            kind="job-result",
            content_hash=canonical_hash(self.run),
            metadata={**self.run, **({"dataset_version": evidence} if evidence else {})},
        )
        notarize(
            kind="model",
            content_hash=model_sha,
            metadata={
                "title": f"{spec.name} (trained by job {job.id.rsplit(':', 1)[-1][:8]})",
                "job": job.id,
                "format": spec.output.format,
                "dataset_sha256": job.dataset_sha256,
                **({"dataset_version": evidence["version"]} if evidence else {}),
                "agreement": job.agreement_id,
                "code_digest": job.code_digest,
                "parameters_hash": job.parameters_hash,
            },
            parents=[
                ids["dataset"],
                *([validation_id] if validation_id else []),
                ids["agreement"],
                ids["run"],
            ],
            result=model_report,
        )
        notarize(
            kind="onnx-model",
            content_hash=onnx_sha,
            metadata={
                "title": f"{spec.name} (ONNX)",
                "job": job.id,
                "opset": spec.onnx.opset,
                "input_shape": spec.onnx.input_shape,
                "dtype": spec.onnx.dtype,
            },
            parents=[ids["model"]],
            result=onnx_report,
        )

    def _id(self, kind: str, content_hash: str) -> str:
        return "0x" + asset_id(self.address, kind, bytes.fromhex(content_hash)).hex()

    def _run_record(self, sandbox_kind: str) -> dict[str, Any]:
        """What the job-run asset covers: who ran which code with which parameters on what."""
        job, spec = self.job, self.spec
        return {
            "title": f"training job {spec.name}",
            "job": job.id,
            "consumer": job.counterparty,
            "agreement": job.agreement_id,
            "dataset_sha256": job.dataset_sha256,
            "code_digest": job.code_digest,
            "image": spec.code.image,
            "entrypoint": spec.code.entrypoint,
            "parameters": spec.parameters,
            "parameters_hash": job.parameters_hash,
            "resources": spec.resources.model_dump(mode="json"),
            "sandbox": sandbox_kind,
        }


def dataset_version(session: Session, job: Job) -> tuple[dict[str, Any] | None, str | None]:
    """The dataset version a job read (by its offering and sha256; the newest such version when
    the same bytes came back later) as the job-run record names it, and the asset id of its
    validation result (None when its offering has no suite or it was not notarized)."""
    from contracts.models import Notarization

    version = session.exec(
        select(OfferingVersion)
        .where(
            OfferingVersion.offering_id == job.offering_id,
            OfferingVersion.asset_sha256 == job.dataset_sha256,
        )
        .order_by(col(OfferingVersion.version).desc())
        .limit(1)
    ).first()
    if version is None:
        return None, None
    record: dict[str, Any] = {"version": version.version}
    if version.source:
        record["source"] = {
            k: version.source[k] for k in ("kind", "path", "rev", "commit", "md5") if k in version.source
        }
    anchor = (
        session.get(Notarization, version.validation_notarization_id)
        if version.validation_notarization_id
        else None
    )
    if version.quality_status != "none":
        summary = version.quality or {}
        record["validation"] = {
            "status": version.quality_status,
            **{k: summary[k] for k in ("evaluated", "passed", "failed", "failing_columns") if k in summary},
            **({"sha256": version.validation_sha256} if version.validation_sha256 else {}),
            **({"asset_id": anchor.asset_id} if anchor else {}),
        }
    return record, anchor.asset_id if anchor else None


def reports(spec: JobSpec, model_sha: str, audit: AuditReport) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reports attested on chain: the trained model's and the released ONNX model's."""
    accuracy = (
        f"ONNX Runtime accuracy {audit.onnx_accuracy:.4f}"
        if audit.onnx_accuracy is not None
        else "no accuracy (not a classifier)"
    )
    agreement = (
        f"max |ONNX - native| {audit.max_abs_diff:.2e} <= {audit.tolerance:g} "
        f"on {audit.probe_inputs} probe inputs"
    )
    model_report = {
        "summary": (
            f"translated to ONNX and checked by the provider's node: {accuracy} on {audit.holdout_rows} "
            f"held-out rows; {agreement}"
        ),
        "model_sha256": model_sha,
        "format": spec.output.format,
        "holdout_rows": audit.holdout_rows,
        "onnx_accuracy": audit.onnx_accuracy,
        "probe_inputs": audit.probe_inputs,
        "max_abs_diff": audit.max_abs_diff,
        "tolerance": audit.tolerance,
        "rerun_checked": spec.verification.rerun,
    }
    onnx_report = {
        "summary": (
            f"{accuracy} on {audit.holdout_rows} held-out rows; {agreement}; names, text and metadata "
            "rewritten by the node; no stored rows of the provider's data"
            if not audit.memorized_rows
            else f"{accuracy} on {audit.holdout_rows} held-out rows; {agreement}; names, text and "
            f"metadata rewritten by the node; {audit.memorized_rows} stored rows, allowed by the offering"
        ),
        **audit.public(),
    }
    return model_report, onnx_report
