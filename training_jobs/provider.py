"""The provider's side of training jobs: what other nodes ask of it under ``/dsp/jobs…``.

A request is refused with a 4xx when it is malformed (spec, bundle, digest) and recorded as
REJECTED with the reason when the agreement or the node does not allow it (not the sender's
agreement, not a compute agreement, the offering is not offered for compute, the policy
denies a use, no working sandbox, resources above this node's limits). Accepted jobs are
QUEUED for the workers. The consumer may then read the job's status and log (its own output
only as the offering's ``job_logs`` term allows, :func:`training_jobs.joblog.read_released`),
cancel it, and fetch what was released to it with its provenance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from connector.agreements import AgreementService
from connector.models import Agreement
from kernel.db import fetch, transaction
from kernel.errors import AgoraError, Conflict, FieldError, Forbidden, InvalidInput, NotFound
from kernel.storage import ObjectStore
from kernel.validation import validate
from marketplace.terms import ComputeTerms
from training_jobs import bundle as bundles
from training_jobs.joblog import read_released
from training_jobs.models import QUEUED, REJECTED, Job
from training_jobs.release import native_release_refusal
from training_jobs.sandbox import Sandbox
from training_jobs.spec import JobSpec
from training_jobs.states import JobStates, entry


@dataclass(frozen=True)
class NodeLimits:
    """The most a job may ask of this node."""

    cpu_seconds: int = 3600
    memory_bytes: int = 8 * 1024**3
    wall_seconds: float = 3600.0
    output_bytes: int = 1024**3

    def exceeded(
        self, cpu_seconds: int, memory_bytes: int, wall_seconds: float, output_bytes: int = 0
    ) -> str:
        """What a run asks beyond these limits (``"memory 9 GiB > 8 GiB, …"``), or ``""``."""
        return ", ".join(
            f"{name} {asked} > {most}"
            for name, asked, most in (
                ("cpu_seconds", cpu_seconds, self.cpu_seconds),
                ("memory", memory_bytes, self.memory_bytes),
                ("wall_time", wall_seconds, self.wall_seconds),
                ("max_output", output_bytes, self.output_bytes),
            )
            if asked > most
        )


class ProviderJobs:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        states: JobStates,
        *,
        agreements: AgreementService,
        offering_modes: Callable[[str], list[str]],
        provenance: Callable[[str], dict[str, Any]],
        sandbox: Callable[[], Sandbox],
        limits: NodeLimits,
        offering_terms: Callable[[str], ComputeTerms] = lambda offering_id: ComputeTerms(),
        wake_workers: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.states = states
        self.agreements = agreements
        self._offering_modes = offering_modes
        self._provenance = provenance
        self._sandbox = sandbox
        self.limits = limits
        self._offering_terms = offering_terms
        self._wake = wake_workers

    def on_request(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        consumer_pid = str(body.get("consumerPid") or "")
        agreement_id = str(body.get("agreementId") or "").lower()
        if not consumer_pid or not agreement_id:
            raise InvalidInput(
                "a job request needs consumerPid and agreementId",
                errors=[FieldError("agreementId", "required")],
            )
        spec = validate(JobSpec, body.get("spec"), prefix="spec", what="job spec")
        # one indexed read before the costly part: decoding, hashing and listing the bundle
        agreement = self.agreements.as_provider(agreement_id)
        code = self._received_code(spec, body.get("bundle"))
        job = Job(
            id=f"urn:uuid:{uuid.uuid4()}",
            role="provider",
            peer_pid=consumer_pid,
            counterparty=sender,
            name=spec.name,
            agreement_id=agreement_id,
            offering_id=agreement.offering_id,
            dataset_sha256=str(agreement.terms.get("sha256", "")),
            spec=spec.model_dump(mode="json"),
            code_digest=spec.code.digest or "",
            parameters_hash=spec.parameters_hash,
        )
        refusal = self._refusal(sender, agreement, spec)
        if refusal is None:
            try:
                self.agreements.use(agreement_id, consumer=sender, mode="compute")
            except AgoraError as exc:
                refusal = exc.detail
        if refusal is None and spec.output.release_native:
            allowed, why = self.agreements.policy_allows(agreement, "download")
            job.result = {"release_native": allowed, "release_native_reason": why}
        if refusal is None and code is not None:
            self.store.put_bytes(code)
        job.state, job.reason = (REJECTED, refusal) if refusal else (QUEUED, "waiting for a worker")
        job.history = [entry(job.state, job.reason)]
        with transaction(self.engine) as session:
            session.add(job)
        if refusal is None:
            self._wake()
        return self._status(job)

    def _received_code(self, spec: JobSpec, encoded: Any) -> bytes | None:
        if spec.code.image is not None:
            if encoded:
                raise InvalidInput(
                    "a job with an image carries no bundle", errors=[FieldError("bundle", "unexpected")]
                )
            return None
        if not encoded or not spec.code.digest:
            raise InvalidInput(
                "a bundle job needs the bundle (base64) and its sha256 in spec.code.digest",
                errors=[FieldError("bundle", "required")],
            )
        data = bundles.decode(encoded)
        if bundles.digest(data) != spec.code.digest:
            raise InvalidInput(
                "the bundle's sha256 does not match spec.code.digest",
                errors=[FieldError("spec.code.digest", "mismatch")],
            )
        names = bundles.list_members(data)
        if spec.code.entrypoint not in names:
            raise InvalidInput(
                f"the bundle has no entrypoint {spec.code.entrypoint}",
                errors=[FieldError("spec.code.entrypoint", "not in the bundle")],
            )
        return data

    def _refusal(self, sender: str, agreement: Agreement, spec: JobSpec) -> str | None:
        if agreement.consumer.lower() != sender.lower():
            return f"agreement {agreement.id} is not {sender}'s"
        if spec.dataset and spec.dataset != agreement.offering_id:
            return f"agreement {agreement.id} covers offering {agreement.offering_id}, not {spec.dataset}"
        modes = self._offering_modes(agreement.offering_id)
        if "compute" not in modes:
            return f"the offering is not offered for compute (its access modes: {', '.join(modes)})"
        refused = native_release_refusal(spec, self._offering_terms(agreement.offering_id))
        if refused:
            return refused
        resources = spec.resources
        over = self.limits.exceeded(
            resources.cpu_seconds, int(resources.memory), resources.wall_time, int(resources.max_output)
        )
        if over:
            return f"the job asks for more than this node allows: {over}"
        try:
            sandbox = self._sandbox()
            sandbox.check()
        except AgoraError as exc:
            return f"this node cannot run jobs now: {exc.detail}"
        if spec.code.image is None and sandbox.kind != "bubblewrap":
            return f"this node's {sandbox.kind} sandbox runs OCI images only; send code.image"
        if spec.code.image is not None and sandbox.kind == "bubblewrap":
            return "this node's bubblewrap sandbox runs Python bundles, not OCI images; send code.bundle"
        return None

    def _provider_job(self, sender: str, job_id: str) -> Job:
        with Session(self.engine) as session:
            return fetch(
                session,
                Job,
                job_id,
                f"no job {job_id} of yours on this node",
                where=lambda j: j.role == "provider" and j.counterparty.lower() == sender.lower(),
            )

    def on_status(self, sender: str, job_id: str) -> dict[str, Any]:
        return self._status(self._provider_job(sender, job_id))

    def on_logs(self, sender: str, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The log as the consumer may read it: the node's lines, and the job's own output as
        far as the offering's terms allow them now (``job_logs``, read from its row here)."""
        job = self._provider_job(sender, job_id)
        return read_released(
            self.engine,
            job.id,
            self._offering_terms(job.offering_id).job_logs,
            after=int_param(body.get("after")),
            limit=int_param(body.get("limit"), 1000),
        )

    def on_cancel(self, sender: str, job_id: str) -> dict[str, Any]:
        job = self._provider_job(sender, job_id)
        return self._status(self.states.request_cancel(job.id, "cancelled by the consumer"))

    def released(self, sender: str, job_id: str, artifact: str) -> dict[str, Any]:
        """The artifact record a consumer may download (``onnx`` or, when granted, ``native``)."""
        job = self._provider_job(sender, job_id)
        return artifact_record(job, artifact)

    def artifact_provenance(self, sender: str, job_id: str, artifact: str) -> dict[str, Any]:
        return self._provenance(str(self.released(sender, job_id, artifact)["asset_id"]))

    @staticmethod
    def _status(job: Job) -> dict[str, Any]:
        return {
            "@type": "agora:JobStatus",
            "providerPid": job.id,
            "consumerPid": job.peer_pid,
            "state": job.state,
            "reason": job.reason,
            "progress": job.progress,
            "history": job.history,
            "result": job.result,
        }


def artifact_record(job: Job, artifact: str, *, own: bool = False) -> dict[str, Any]:
    """A completed job's ``onnx`` or ``native`` model record; unless ``own`` (the provider's
    users), only what was released to the consumer."""
    if job.state != "COMPLETED":
        raise Conflict(f"job {job.id} is {job.state}; results exist once it is COMPLETED")
    record = (job.result.get("artifacts") or {}).get(artifact)
    if not record:
        why = (job.result.get("onnx_check") or {}).get("reason") if artifact == "onnx" else None
        raise NotFound(f"job {job.id} has no {artifact} model" + (f": {why}" if why else ""))
    if not own and not record.get("released"):
        reason = (
            job.result.get("release_native_reason") or "the job did not ask for it (output.release_native)"
        )
        raise Forbidden(f"the native model stays with the provider: {reason}")
    return dict(record)


def int_param(value: Any, default: int = 0) -> int:
    """An integer field of a protocol message, or :class:`InvalidInput`."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise InvalidInput(f"expected an integer, got {value!r}") from None
