"""HTTP routes of training jobs.

Management (``/api/v1/jobs``, bearer tokens): submit (consumer), list, show (refreshed from
the provider), logs, cancel, the result (ONNX or native model bytes) and its provenance,
the job spec's JSON Schema. Protocol (``/dsp/jobs``, signed envelopes): what a consumer's
node asks of the provider's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from anyio import to_thread
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from pydantic import BaseModel, ConfigDict, Field

from connector.dsp import open_request
from connector.dsp.gate import ProtocolGate
from kernel.hashing import repr_digest
from kernel.limits import JSON
from kernel.validation import validate
from training_jobs.bundle import MAX_BUNDLE_BYTES, decode
from training_jobs.provider import ProviderJobs
from training_jobs.services import JobService
from training_jobs.spec import SCHEMA_FILE, JobSpec

MAX_JOB_MESSAGE = MAX_BUNDLE_BYTES * 4 // 3 + 1024 * 1024  # the bundle travels base64-encoded
JOB_JSON = JSON.with_max_string(MAX_JOB_MESSAGE)  # one string, the bundle, may be that long


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    bundle: str | None = Field(default=None, description="the packed bundle (.tar.gz), base64")


class JobController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @post("", opt={"scope": "jobs:write"}, status_code=201, request_max_body_size=MAX_JOB_MESSAGE)
    async def submit(
        self, request: Request[Any, Any, Any], job_service: NamedDependency[JobService]
    ) -> dict[str, Any]:
        """Consumer: send a job to the provider of its agreement (201 also when the provider
        rejected it: the job is recorded with the reason)."""
        body: JobSubmit = validate(JobSubmit, await request.body(), what="job", limits=JOB_JSON)
        bundle = decode(body.bundle) if body.bundle is not None else None
        return await to_thread.run_sync(job_service.submit, body.spec, bundle, request.user.subject)

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_jobs(
        self,
        job_service: NamedDependency[JobService],
        in_state: Annotated[str | None, QueryParameter(name="state")] = None,
    ) -> list[dict[str, Any]]:
        """Jobs this node runs (provider) or sent (consumer), newest first."""
        return job_service.list_all(in_state)

    @get("/schema", opt={"scope": "catalog:read"}, sync_to_thread=False)
    def schema(self) -> Response[bytes]:
        """The job spec's JSON Schema."""
        return Response(SCHEMA_FILE.read_bytes(), media_type="application/schema+json")

    @get("/{job_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(self, job_id: FromPath[str], job_service: NamedDependency[JobService]) -> dict[str, Any]:
        """State with its reason, progress, history, metrics and artifacts."""
        return job_service.get(job_id)

    @get("/{job_id:str}/logs", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def logs(
        self,
        job_id: FromPath[str],
        job_service: NamedDependency[JobService],
        after: Annotated[int, QueryParameter(ge=0)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 1000,
    ) -> dict[str, Any]:
        """Log lines after sequence ``after``; poll with ``next`` to follow."""
        return job_service.logs(job_id, after=after, limit=limit)

    @post("/{job_id:str}/cancel", opt={"scope": "jobs:write"}, status_code=200, sync_to_thread=True)
    def cancel(
        self, request: Request[Any, Any, Any], job_id: FromPath[str], job_service: NamedDependency[JobService]
    ) -> dict[str, Any]:
        return job_service.cancel(job_id, request.user.subject)

    @get("/{job_id:str}/result", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def result(
        self,
        job_id: FromPath[str],
        job_service: NamedDependency[JobService],
        artifact: Annotated[str, QueryParameter(pattern="^(onnx|native)$")] = "onnx",
    ) -> Stream:
        """The model's bytes (ONNX by default), fetched from the provider and checked first."""
        record, _ = job_service.result(job_id, artifact)
        return Stream(
            job_service.read(str(record["sha256"])),
            media_type="application/octet-stream",
            headers={
                "Content-Length": str(record["size"]),
                "Repr-Digest": repr_digest(str(record["sha256"])),
            },
        )

    @get("/{job_id:str}/result/provenance", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def result_provenance(
        self,
        job_id: FromPath[str],
        job_service: NamedDependency[JobService],
        artifact: Annotated[str, QueryParameter(pattern="^(onnx|native)$")] = "onnx",
    ) -> dict[str, Any]:
        """The provenance document of the result: the model's whole lineage."""
        return job_service.result(job_id, artifact)[1]


# Protocol endpoints ------------------------------------------------------------------------


@post("/dsp/jobs", tags=["protocol"], status_code=201, request_max_body_size=MAX_JOB_MESSAGE)
async def job_request(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    job_provider: NamedDependency[ProviderJobs],
) -> dict[str, Any]:
    opened = await open_request(request, protocol_gate, max_bytes=MAX_JOB_MESSAGE)
    reply = await to_thread.run_sync(job_provider.on_request, opened.sender, opened.body)
    return reply


@post(
    ["/dsp/jobs/{pid:str}/status", "/dsp/jobs/{pid:str}/logs", "/dsp/jobs/{pid:str}/cancel"],
    tags=["protocol"],
    status_code=200,
)
async def job_message(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    job_provider: NamedDependency[ProviderJobs],
) -> dict[str, Any]:
    opened = await open_request(request, protocol_gate)
    kind = request.url.path.rsplit("/", 1)[-1]
    if kind == "status":
        reply = await to_thread.run_sync(job_provider.on_status, opened.sender, pid)
    elif kind == "logs":
        reply = await to_thread.run_sync(job_provider.on_logs, opened.sender, pid, opened.body)
    else:
        reply = await to_thread.run_sync(job_provider.on_cancel, opened.sender, pid)
    return reply


@post("/dsp/jobs/{pid:str}/provenance/{artifact:str}", tags=["protocol"], status_code=200)
async def job_provenance(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    artifact: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    job_provider: NamedDependency[ProviderJobs],
) -> dict[str, Any]:
    opened = await open_request(request, protocol_gate)
    reply = await to_thread.run_sync(job_provider.artifact_provenance, opened.sender, pid, artifact)
    return reply


@post("/dsp/jobs/{pid:str}/artifacts/{artifact:str}", tags=["protocol"], status_code=200)
async def job_artifact(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    artifact: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    job_provider: NamedDependency[ProviderJobs],
) -> Stream:
    """The bytes of a released result, for the job's consumer; their sha256 is in the signed
    status, and their provenance on chain."""
    opened = await open_request(request, protocol_gate)
    record = await to_thread.run_sync(job_provider.released, opened.sender, pid, artifact)
    return Stream(
        job_provider.store.read(str(record["sha256"])),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(record["size"]),
            "Repr-Digest": repr_digest(str(record["sha256"])),
            "Agora-Record": json.dumps({"sha256": record["sha256"], "asset_id": record.get("asset_id")}),
        },
    )


api_handlers = [JobController]
public_handlers: list[object] = [job_request, job_message, job_provenance, job_artifact]
