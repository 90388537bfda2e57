"""Federations as tables: the federation (as coordinator or provider sees it), its members,
its rounds and each round's contributions, every one with a state, a reason and its log.

The legal moves of each are a :class:`kernel.lifecycle.Lifecycle` here; weights are never in
the database, only the sha256 of their safetensors bytes in the object store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from kernel.db import utcnow
from kernel.lifecycle import Lifecycle

# the federation
CREATED = "CREATED"  # coordinator: invitations out; provider: accepted, trainer not started
READY = "READY"  # every invited provider answered; may be started
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
REJECTED = "REJECTED"  # provider: the invitation was refused
FEDERATION = Lifecycle.of(
    "federation",
    {
        CREATED: (READY, RUNNING, FAILED, CANCELLED, REJECTED),
        READY: (RUNNING, FAILED, CANCELLED),
        RUNNING: (COMPLETED, FAILED, CANCELLED),
        COMPLETED: (),
        FAILED: (),
        CANCELLED: (),
        REJECTED: (),
    },
)

# a provider in a federation, as the coordinator sees it
INVITED = "INVITED"
JOINED = "JOINED"
REFUSED = "REFUSED"
STOPPED = "STOPPED"  # stopped contributing (privacy budget, cancelled, gone)
MEMBER = Lifecycle.of(
    "federation member",
    {INVITED: (JOINED, REFUSED, STOPPED), JOINED: (STOPPED,), REFUSED: (), STOPPED: ()},
)

# a round on the coordinator
OPEN = "OPEN"
AGGREGATING = "AGGREGATING"
DONE = "DONE"
ROUND = Lifecycle.of(
    "round",
    {
        OPEN: (
            AGGREGATING,
            DONE,
            FAILED,
            CANCELLED,
        ),  # DONE: an evaluation-only round has nothing to aggregate
        AGGREGATING: (DONE, FAILED),
        DONE: (),
        FAILED: (),
        CANCELLED: (),
    },
)

# one provider's part in one round (both sides keep one)
PENDING = "PENDING"  # coordinator: round start not yet delivered; provider: queued
TRAINING = "TRAINING"
SENDING = "SENDING"  # provider: update made, not yet acknowledged
RECEIVED = "RECEIVED"  # coordinator: the update arrived in time; provider: the coordinator has it
LATE = "LATE"
DROPPED = "DROPPED"
CONTRIBUTION = Lifecycle.of(
    "round contribution",
    {
        PENDING: (TRAINING, RECEIVED, FAILED, DROPPED, STOPPED, LATE),
        TRAINING: (SENDING, RECEIVED, FAILED, DROPPED, STOPPED, LATE, PENDING),
        SENDING: (RECEIVED, LATE, FAILED, DROPPED),
        RECEIVED: (),
        LATE: (),
        FAILED: (),
        DROPPED: (),
        STOPPED: (),
    },
)


def _json(**kwargs: Any) -> Any:
    return Field(sa_column=Column(JSON, nullable=False), **kwargs)


def _time(nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True, index=index))
    return Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=index)
    )


class Federation(SQLModel, table=True):
    """One federation. The coordinator drives it; each provider keeps its own record of it."""

    __tablename__ = "federation"

    id: str = Field(
        primary_key=True, max_length=64, description="urn:uuid:… (the coordinator's id on both sides)"
    )
    role: str = Field(max_length=12, description="coordinator | provider")
    name: str = Field(max_length=64)
    coordinator: str = Field(max_length=42, index=True)
    coordinator_endpoint: str = Field(default="", max_length=500)
    spec: dict[str, Any] = _json(default_factory=dict)
    code_digest: str = Field(default="", max_length=64)
    layout: dict[str, Any] = _json(default_factory=dict, description="name -> [shape, dtype], in model order")
    initial_sha256: str = Field(default="", max_length=64)
    global_sha256: str = Field(default="", max_length=64, description="the latest global weights")
    current_round: int = 0
    state: str = Field(default=CREATED, max_length=12, index=True)
    reason: str = Field(default="", max_length=2000)
    history: list[dict[str, Any]] = _json(default_factory=list)
    cancel_requested: bool = False
    # provider side
    agreement_id: str = Field(default="", max_length=66)
    offering_id: str = Field(default="", max_length=64)
    dataset_sha256: str = Field(default="", max_length=64)
    privacy: dict[str, Any] = _json(default_factory=dict, description="provider: the privacy ledger")
    # coordinator side: strategy state (server optimizer moments) by object sha256
    strategy_state_sha256: str = Field(default="", max_length=64)
    result: dict[str, Any] = _json(default_factory=dict, description="the final model, ONNX, asset ids")
    worker: str | None = Field(default=None, max_length=120)
    heartbeat_at: datetime | None = _time(nullable=True)
    created_at: datetime = _time(index=True)
    updated_at: datetime = _time()


class FederationMember(SQLModel, table=True):
    """A provider invited to a federation, as the coordinator sees it."""

    __tablename__ = "federation_member"

    id: int | None = Field(default=None, primary_key=True)
    federation_id: str = Field(max_length=64, index=True)
    provider: str = Field(max_length=42)
    provider_name: str = Field(default="", max_length=200)
    endpoint: str = Field(default="", max_length=500)
    agreement_id: str = Field(max_length=66)
    offering_id: str = Field(default="", max_length=64)
    dataset_sha256: str = Field(default="", max_length=64)
    num_train: int = 0
    epsilon: float | None = None
    state: str = Field(default=INVITED, max_length=12)
    reason: str = Field(default="", max_length=2000)
    history: list[dict[str, Any]] = _json(default_factory=list)
    updated_at: datetime = _time()


class FederationRound(SQLModel, table=True):
    """One round on the coordinator: the global weights it started from and produced."""

    __tablename__ = "federation_round"

    id: int | None = Field(default=None, primary_key=True)
    federation_id: str = Field(max_length=64, index=True)
    number: int
    state: str = Field(default=OPEN, max_length=12)
    reason: str = Field(default="", max_length=2000)
    history: list[dict[str, Any]] = _json(default_factory=list)
    config: dict[str, Any] = _json(default_factory=dict)
    global_in: str = Field(default="", max_length=64)
    global_out: str = Field(default="", max_length=64)
    merkle_root: str = Field(default="", max_length=64)
    participants: list[str] = _json(default_factory=list, description="whose updates were aggregated")
    metrics: dict[str, Any] = _json(
        default_factory=dict, description="federated evaluation, per provider and overall"
    )
    asset_id: str = Field(default="", max_length=66)
    deadline_at: datetime = _time()
    started_at: datetime = _time()
    ended_at: datetime | None = _time(nullable=True)
    updated_at: datetime = _time()


class Contribution(SQLModel, table=True):
    """One provider's part in one round, on the coordinator (``role`` coordinator) and on the
    provider (``role`` provider): what was asked, what was sent, and what became of it."""

    __tablename__ = "federation_contribution"

    id: int | None = Field(default=None, primary_key=True)
    federation_id: str = Field(max_length=64, index=True)
    round_number: int
    role: str = Field(max_length=12)
    provider: str = Field(max_length=42)
    state: str = Field(default=PENDING, max_length=12, index=True)
    reason: str = Field(default="", max_length=2000)
    history: list[dict[str, Any]] = _json(default_factory=list)
    global_in: str = Field(default="", max_length=64)
    update_sha256: str = Field(default="", max_length=64)
    num_examples: int = 0
    fit_metrics: dict[str, Any] = _json(default_factory=dict)
    eval_metrics: dict[str, Any] = _json(default_factory=dict)
    privacy: dict[str, Any] = _json(default_factory=dict, description="ε spent so far, δ, the mechanisms")
    config: dict[str, Any] = _json(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    train_seconds: float = 0.0
    attempts: int = 0
    next_try_at: datetime | None = _time(nullable=True, index=True)
    created_at: datetime = _time()
    updated_at: datetime = _time()
