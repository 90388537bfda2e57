"""Participants: organisations identified by their checksummed Ethereum address."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, String, UniqueConstraint, false
from sqlmodel import Field, SQLModel

from kernel.db import utcnow


class Participant(SQLModel, table=True):
    __tablename__ = "participant"
    __table_args__ = (UniqueConstraint("did", name="uq_participant_did"),)

    address: str = Field(primary_key=True, max_length=42, description="checksummed address")
    name: str = Field(max_length=200)
    endpoint: str = Field(max_length=500, description="protocol endpoint URL")
    is_self: bool = Field(default=False, index=True)
    trusted: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, server_default=false(), index=True),
        description="a peer the operator added (crawled, shown); registry-only senders are not",
    )
    did: str | None = Field(
        default=None,
        sa_column=Column(String(500), nullable=True),
        description="its DID (did:web); its tokens are checked against the document's keys",
    )
    kind: str = Field(
        default="agora",
        sa_column=Column(String(10), nullable=False, server_default="agora"),
        description="agora (an Agora node: co-signed, on-chain agreements) | dsp (another DSP connector)",
    )
    dsp_url: str = Field(
        default="",
        sa_column=Column(String(500), nullable=False),
        description="the DSP base URL it advertises at /.well-known/dspace-version",
    )
    keys: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=True),
        description="verification method id -> public JWK, from its DID document",
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class SeenNonce(SQLModel, table=True):
    """Nonces of accepted protocol messages, kept for the replay window."""

    __tablename__ = "seen_nonce"
    __table_args__ = (UniqueConstraint("sender", "nonce", name="uq_seen_nonce"),)

    id: int | None = Field(default=None, primary_key=True)
    sender: str = Field(max_length=42)
    nonce: str = Field(max_length=128)
    seen_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class Negotiation(SQLModel, table=True):
    """One contract negotiation, as this node sees it (it is the consumer or the provider)."""

    __tablename__ = "negotiation"

    id: str = Field(primary_key=True, max_length=64, description="this side's pid (urn:uuid:…)")
    role: str = Field(max_length=10, description="consumer | provider")
    peer_pid: str | None = Field(default=None, max_length=64, index=True, description="the other side's pid")
    counterparty: str = Field(max_length=42, index=True)
    counterparty_endpoint: str = Field(max_length=500)
    state: str = Field(max_length=12, index=True)
    offering_id: str = Field(max_length=64)
    purpose: str = Field(max_length=200)
    access_mode: str = Field(max_length=10)
    offer: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    agreement_id: str | None = Field(default=None, max_length=66)
    reason: str = Field(default="", max_length=2000)
    options: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=True),
        description="the choices DSP leaves to this side (e.g. accept a counter-offer automatically)",
    )
    deadline: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class NegotiationEvent(SQLModel, table=True):
    """Every transition, with the message that caused it, who signed it and why."""

    __tablename__ = "negotiation_event"

    id: int | None = Field(default=None, primary_key=True)
    negotiation_id: str = Field(foreign_key="negotiation.id", index=True, max_length=64)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    from_state: str | None = Field(default=None, max_length=12)
    to_state: str = Field(max_length=12)
    message_type: str = Field(max_length=60)
    signer: str = Field(max_length=42)
    reason: str = Field(default="", max_length=2000)
    accepted: bool = Field(default=True, description="False: a message refused in this state")
    message: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Agreement(SQLModel, table=True):
    """The signed outcome of a negotiation; the provider enforces it."""

    __tablename__ = "agreement"

    id: str = Field(primary_key=True, max_length=66, description="0x + 32-byte agreement id")
    negotiation_id: str = Field(max_length=64, index=True)
    role: str = Field(max_length=10)
    provider: str = Field(max_length=42, index=True)
    consumer: str = Field(max_length=42, index=True)
    offering_id: str = Field(max_length=64)
    terms: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    terms_hash: str = Field(max_length=64)
    valid_until: int = Field(default=0, description="unix time; 0 = no end")
    provider_signature: str = Field(max_length=140)
    consumer_signature: str = Field(default="", max_length=140)
    chain_id: int
    registry_address: str = Field(max_length=42)
    tx_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = None
    finalized: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, server_default=false()),
        description="the negotiation reached FINALIZED (on chain between Agora nodes; by DSP alone else)",
    )
    peer_agreement_id: str = Field(
        default="",
        sa_column=Column(String(500), nullable=False),
        description="the agreement's id as a plain DSP provider named it (transfers name it so)",
    )
    uses: int = 0
    max_uses: int | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class UsageRecord(SQLModel, table=True):
    """One use of an agreement: granted or refused, with the reason (the usage-log duty)."""

    __tablename__ = "usage_record"

    id: int | None = Field(default=None, primary_key=True)
    agreement_id: str = Field(max_length=66, index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    mode: str = Field(max_length=10)
    purpose: str = Field(max_length=200)
    granted: bool
    reason: str = Field(default="", max_length=2000)


class OutboundMessage(SQLModel, table=True):
    """A protocol message to send, written with the state change that calls for it; the
    dispatcher delivers it with retries, so a restart or an unreachable peer loses nothing."""

    __tablename__ = "outbound_message"

    id: int | None = Field(default=None, primary_key=True)
    negotiation_id: str | None = Field(default=None, max_length=64, index=True)
    recipient: str = Field(max_length=42)
    url: str = Field(max_length=600)
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="PENDING", max_length=10, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    last_error: str = Field(default="", max_length=2000)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class TransferProcess(SQLModel, table=True):
    """A transfer of an offering's bytes under an agreement (Dataspace Protocol states)."""

    __tablename__ = "transfer_process"

    id: str = Field(primary_key=True, max_length=64, description="this side's pid")
    role: str = Field(max_length=10)
    peer_pid: str | None = Field(default=None, max_length=64)
    counterparty: str = Field(max_length=42)
    agreement_id: str = Field(max_length=66, index=True)
    state: str = Field(max_length=12, index=True)
    sha256: str = Field(default="", max_length=64)
    size: int = 0
    reason: str = Field(default="", max_length=2000)
    provenance: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    callback: str = Field(
        default="",
        sa_column=Column(String(600), nullable=False),
        description="where the other side's messages about this transfer go (its callbackAddress)",
    )
    format: str = Field(default="", sa_column=Column(String(60), nullable=False))
    data_address: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=True),
        description="consumer: the data address of the start message (endpoint, short-lived token)",
    )
    history: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=True), description="the transition log"
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
