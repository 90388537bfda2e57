"""Training jobs as tables: the job (as provider or consumer sees it), its history and its log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Text
from sqlmodel import Field, SQLModel

from kernel.db import utcnow
from kernel.lifecycle import Lifecycle

QUEUED = "QUEUED"
PROVISIONING = "PROVISIONING"
RUNNING = "RUNNING"
VERIFYING = "VERIFYING"
TRANSLATING = "TRANSLATING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
REJECTED = "REJECTED"
CANCELLED = "CANCELLED"
ACTIVE_STATES = (PROVISIONING, RUNNING, VERIFYING, TRANSLATING)
FINAL_STATES = (COMPLETED, FAILED, REJECTED, CANCELLED)
_ENDS = (FAILED, CANCELLED)

# a job whose worker died goes back to QUEUED from any active state (once; see states.py)
JOB_LIFECYCLE = Lifecycle.of(
    "job",
    {
        QUEUED: (PROVISIONING, *_ENDS),
        PROVISIONING: (RUNNING, QUEUED, *_ENDS),
        RUNNING: (VERIFYING, QUEUED, *_ENDS),
        VERIFYING: (TRANSLATING, QUEUED, *_ENDS),
        TRANSLATING: (COMPLETED, QUEUED, *_ENDS),
        COMPLETED: (),
        FAILED: (),
        REJECTED: (),
        CANCELLED: (),
    },
)


class Job(SQLModel, table=True):
    """One training job. The provider runs it; the consumer keeps a copy it refreshes."""

    __tablename__ = "job"

    id: str = Field(primary_key=True, max_length=64, description="this side's id (urn:uuid:…)")
    role: str = Field(max_length=10, description="provider | consumer")
    peer_pid: str | None = Field(default=None, max_length=64, index=True, description="the other side's id")
    counterparty: str = Field(max_length=42, index=True)
    counterparty_endpoint: str = Field(default="", max_length=500)
    name: str = Field(max_length=64)
    agreement_id: str = Field(max_length=66, index=True)
    offering_id: str = Field(max_length=64)
    dataset_sha256: str = Field(default="", max_length=64)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    code_digest: str = Field(default="", max_length=64, description="sha256 of the bundle, or of the image")
    parameters_hash: str = Field(default="", max_length=64)
    state: str = Field(default=QUEUED, max_length=12, index=True)
    reason: str = Field(default="", max_length=2000)
    progress: float = Field(default=0.0, description="0..1 within the whole job")
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = Field(default=None, max_length=120, description="who runs it now")
    heartbeat_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    history: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="metrics, ONNX check, artifacts (sha256, size, asset id) once completed",
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class JobLog(SQLModel, table=True):
    """Lines the job (and the node about it) printed, in order; ``seq`` lets a reader follow."""

    __tablename__ = "job_log"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    stage: str = Field(max_length=12)
    line: str = Field(sa_column=Column(Text, nullable=False))
