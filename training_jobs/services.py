"""Training jobs as this node's users see them (``/api/v1/jobs``).

As consumer: a job is forwarded signed to the provider of its agreement (which checks and
queues it, :mod:`training_jobs.provider`), recorded here, refreshed from the provider when
read; results are downloaded once, checked against the sha256 the provider signed and
against the chain, and then served with their provenance. As provider: the jobs this node
runs, their logs, cancel, and their results.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.downloads import chain_refusal
from connector.dsp.client import PeerClient, PeerClients
from connector.models import Agreement, Participant
from contracts.verify import verify_document
from kernel.addresses import foreign_origin
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InvalidInput,
    ServiceUnavailable,
)
from kernel.outbound import OutboundClient
from kernel.storage import ObjectStore
from training_jobs import bundle as bundles
from training_jobs.joblog import read_log
from training_jobs.models import FINAL_STATES, Job
from training_jobs.provider import artifact_record
from training_jobs.spec import JobSpec
from training_jobs.states import JobStates

ARTIFACTS = ("onnx", "native")
ANCHOR_WAIT = 60.0
LOCAL_KEYS = ("fetched", "submitted_by")


class JobService:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        states: JobStates,
        *,
        address: str,
        peers: PeerClients,
        provenance: Callable[[str], dict[str, Any]],
        outbound: OutboundClient,
        chain_rpc_url: str,
    ) -> None:
        self.engine = engine
        self.outbound = outbound
        self.chain_rpc_url = chain_rpc_url
        self.store = store
        self.states = states
        self.address = address
        self.peers = peers
        self._provenance = provenance

    def submit(self, spec: JobSpec, bundle: bytes | None, actor: str) -> dict[str, Any]:
        """Forward a job to its provider and record it; a refused job is recorded too."""
        if spec.agreement is None:
            raise InvalidInput(
                "the job names no agreement (agreement: or --agreement)",
                errors=[FieldError("agreement", "required")],
            )
        agreement_id = spec.agreement.lower()
        with Session(self.engine) as session:
            agreement = fetch(
                session,
                Agreement,
                agreement_id,
                f"no agreement {agreement_id} with this node as consumer",
                where=lambda a: a.role == "consumer",
            )
            peer = session.get(Participant, agreement.provider)
        if agreement.terms.get("accessMode") != "compute":
            raise InvalidInput(
                f"agreement {agreement_id} is for {agreement.terms.get('accessMode')}, not compute: "
                "negotiate with --mode compute",
                errors=[FieldError("agreement", "not a compute agreement")],
            )
        if peer is None or not peer.trusted:
            raise InvalidInput(
                f"the agreement's provider {agreement.provider} is not a peer of this node: "
                "`agora peers add` its URL first",
                errors=[FieldError("agreement", "provider is not a peer")],
            )
        # the job goes only to the endpoint of the provider's verified identity
        endpoint = peer.endpoint.rstrip("/")
        if spec.provider:
            refused = foreign_origin(spec.provider, endpoint, "provider", "the agreement's provider's")
            if refused:
                raise InvalidInput(refused, errors=[FieldError("provider", "not the agreement's provider")])
        if spec.code.image is None:
            if bundle is None:
                raise InvalidInput("a bundle job needs its bundle", errors=[FieldError("bundle", "required")])
            bundles.list_members(bundle)
            spec.code.digest = bundles.digest(bundle)
        job_id = f"urn:uuid:{uuid.uuid4()}"
        reply = self._client(endpoint, agreement.provider).post(
            "/jobs",
            {
                "@type": "agora:JobRequestMessage",
                "consumerPid": job_id,
                "agreementId": agreement_id,
                "spec": spec.wire(),
                "bundle": base64.b64encode(bundle).decode() if bundle is not None else None,
            },
        )[0]
        job = Job(
            id=job_id,
            role="consumer",
            peer_pid=str(reply.get("providerPid") or ""),
            counterparty=agreement.provider,
            counterparty_endpoint=endpoint,
            name=spec.name,
            agreement_id=agreement_id,
            offering_id=agreement.offering_id,
            dataset_sha256=str(agreement.terms.get("sha256", "")),
            spec=spec.wire(),
            code_digest=spec.code.digest or "",
            parameters_hash=spec.parameters_hash,
        )
        _apply(job, reply)
        job.result = {**job.result, "submitted_by": actor}
        with transaction(self.engine) as session:
            session.add(job)
        return job_out(job)

    def _client(self, endpoint: str, provider: str) -> PeerClient:
        """The provider's node at the DSP base it advertises (``endpoint`` is its node URL)."""
        return self.peers.to(provider)

    def _job(self, job_id: str) -> Job:
        with Session(self.engine) as session:
            return fetch(session, Job, job_id, f"no job {job_id}")

    def get(self, job_id: str, *, refresh: bool = True) -> dict[str, Any]:
        """The job; a consumer's copy is refreshed from the provider while it is not final
        (when the provider cannot be reached, the last known state, marked stale)."""
        job = self._job(job_id)
        out = job_out(job)
        if job.role == "consumer" and refresh and job.state not in FINAL_STATES:
            try:
                reply = self._ask(job, "status", {})
            except ServiceUnavailable as exc:
                out["stale"] = f"the provider could not be reached: {exc.detail}"
                return out
            except InvalidInput as exc:  # e.g. the provider is no longer a peer of this node
                out["stale"] = f"the provider cannot be asked: {exc.detail}"
                return out
            with transaction(self.engine) as session:
                fresh = session.get(Job, job.id, with_for_update=True)
                assert fresh is not None
                _apply(fresh, reply)
                session.add(fresh)
                session.flush()
                out = job_out(fresh)
        return out

    def _ask(self, job: Job, what: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._client(job.counterparty_endpoint, job.counterparty).post(
            f"/jobs/{job.peer_pid}/{what}", body
        )[0]

    def list_all(self, state: str | None = None) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            query = select(Job).order_by(col(Job.created_at).desc()).limit(500)
            if state:
                query = query.where(Job.state == state.upper())
            return [job_out(j) for j in session.exec(query).all()]

    def logs(self, job_id: str, *, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        job = self._job(job_id)
        if job.role == "provider":
            return read_log(self.engine, job.id, after=after, limit=limit)
        return self._ask(job, "logs", {"after": after, "limit": limit})

    def cancel(self, job_id: str, actor: str) -> dict[str, Any]:
        job = self._job(job_id)
        if job.role == "provider":
            return job_out(self.states.request_cancel(job.id, f"cancelled by {actor} (provider)"))
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} has already ended ({job.state})")
        self._ask(job, "cancel", {})
        return self.get(job_id)

    def result(self, job_id: str, artifact: str = "onnx") -> tuple[dict[str, Any], dict[str, Any]]:
        """The artifact's record and provenance, downloaded (once) from the provider and checked."""
        if artifact not in ARTIFACTS:
            raise InvalidInput(
                f"artifact must be one of {', '.join(ARTIFACTS)}", errors=[FieldError("artifact", "unknown")]
            )
        job = self._job(job_id)
        if job.role == "provider":
            record = artifact_record(job, artifact, own=True)
            return record, self._provenance(str(record["asset_id"]))
        if job.state != "COMPLETED":
            job = self._job(self.get(job_id)["id"])
        record = artifact_record(job, artifact)
        fetched = (job.result.get("fetched") or {}).get(artifact)
        if fetched and self.store.exists(record["sha256"]):
            return record, fetched["provenance"]
        doc = self._anchored_provenance(job, artifact)
        refusal = chain_refusal(doc, job.counterparty_endpoint, self.chain_rpc_url)
        if refusal:
            raise Forbidden(refusal)
        self._download(job, artifact, record)
        reason = verify_document(doc, str(record["sha256"]), outbound=self.outbound)
        if reason is not None:
            raise Forbidden(f"the {artifact} model does not verify against the chain: {reason}")
        with transaction(self.engine) as session:
            fresh = session.get(Job, job.id, with_for_update=True)
            assert fresh is not None
            fetched_all = dict(fresh.result.get("fetched") or {})
            fetched_all[artifact] = {"at": utcnow().isoformat(), "provenance": doc}
            fresh.result = {**fresh.result, "fetched": fetched_all}
            session.add(fresh)
        return record, doc

    def _anchored_provenance(self, job: Job, artifact: str) -> dict[str, Any]:
        """The artifact's provenance once its whole lineage is on chain (the provider anchors
        it right after the job completes); waits up to ``ANCHOR_WAIT`` seconds."""
        deadline = time.monotonic() + ANCHOR_WAIT
        while True:
            doc = self._ask(job, f"provenance/{artifact}", {})
            pending = _pending(doc)
            if pending is None:
                return doc
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"the result's lineage is not on chain yet ({pending}); try again in a moment"
                )
            time.sleep(0.5)

    def _download(self, job: Job, artifact: str, record: dict[str, Any]) -> None:
        client = self._client(job.counterparty_endpoint, job.counterparty)
        size = int(record["size"])
        with (
            # the stream is cut off (and refused) past the size the provider announced
            client.stream(f"/jobs/{job.peer_pid}/artifacts/{artifact}", {}, max_bytes=size) as chunks,
            self.store.stage() as staged,
        ):
            for chunk in chunks:
                staged.write(chunk)
            staged.finish()
            if staged.sha256 != record["sha256"]:
                raise Forbidden(
                    f"the {artifact} model's sha256 {staged.sha256} is not the {record['sha256']} "
                    "the provider signed"
                )
            self.store.commit(staged)

    def read(self, sha256: str) -> Iterator[bytes]:
        return self.store.read(sha256)


def _pending(doc: dict[str, Any]) -> str | None:
    """What in a provenance tree still waits for the chain, or None."""
    asset, anchor = doc.get("asset") or {}, doc.get("anchor") or {}
    if anchor.get("status") != "ANCHORED":
        return f"{asset.get('kind')} {str(asset.get('id'))[:12]}… is {anchor.get('status')}"
    if (doc.get("attestation") or {}).get("status") == "PENDING":
        return f"the result of {asset.get('kind')} {str(asset.get('id'))[:12]}… is not attested yet"
    for parent in doc.get("parents") or []:
        found = _pending(parent)
        if found:
            return found
    return None


def _apply(job: Job, reply: dict[str, Any]) -> None:
    """The provider's signed status, copied onto this side's record of the job."""
    job.state = str(reply.get("state") or job.state)
    job.reason = str(reply.get("reason") or "")[:2000]
    job.progress = float(reply.get("progress") or 0.0)
    job.history = list(reply.get("history") or job.history)
    own = {key: job.result[key] for key in LOCAL_KEYS if key in job.result}  # what only this side knows
    job.result = {**dict(reply.get("result") or {}), **own}
    job.updated_at = utcnow()


def job_out(job: Job) -> dict[str, Any]:
    result = {k: v for k, v in job.result.items() if k != "fetched"}
    return {
        "id": job.id,
        "role": job.role,
        "peer_pid": job.peer_pid,
        "counterparty": job.counterparty,
        "name": job.name,
        "agreement_id": job.agreement_id,
        "offering_id": job.offering_id,
        "dataset_sha256": job.dataset_sha256,
        "code_digest": job.code_digest,
        "parameters_hash": job.parameters_hash,
        "state": job.state,
        "reason": job.reason,
        "progress": round(job.progress, 3),
        "history": job.history,
        "result": result,
        "fetched": sorted((job.result.get("fetched") or {}).keys()),
        "spec": job.spec,
        "created_at": as_utc(job.created_at).isoformat(),
        "updated_at": as_utc(job.updated_at).isoformat(),
    }
