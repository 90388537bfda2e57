"""The notarization outbox: every asset this node notarizes, and where it stands.

A row is written in the same transaction as the record it notarizes (an offering version,
later a job result or an agreement), so nothing is registered without being queued and
nothing is queued for a record that does not exist. The notary worker drains the outbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from kernel.db import utcnow

PENDING = "PENDING"  # waiting for the next batch
SUBMITTED = "SUBMITTED"  # root and proof fixed, transaction sent or about to be (resent until mined)
ANCHORED = "ANCHORED"  # on chain, with transaction and block
ATTESTED = "ATTESTED"  # a result hash recorded on chain for an anchored asset
FAILED = "FAILED"  # refused by the registry for a reason a retry cannot fix


class Notarization(SQLModel, table=True):
    __tablename__ = "notarization"

    id: int | None = Field(default=None, primary_key=True)
    asset_id: str = Field(max_length=66, unique=True, description="registry id: keccak(owner, kind, content)")
    kind: str = Field(max_length=20)
    content_hash: str = Field(max_length=64, index=True, description="sha256 hex of the bytes")
    metadata_hash: str = Field(max_length=64, description="sha256 hex of the canonical metadata")
    owner: str = Field(max_length=42)
    parents: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    mode: str = Field(default="batch", max_length=10, description="batch (Merkle root) or direct")
    status: str = Field(default=PENDING, max_length=20, index=True)
    batch_root: str | None = Field(default=None, max_length=66, index=True)
    batch_size: int | None = None
    proof: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    tx_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = None
    chain_id: int | None = None
    registry_address: str | None = Field(default=None, max_length=42)
    attempts: int = 0
    last_error: str = Field(default="", max_length=2000)
    metadata_doc: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False), description="what metadata_hash covers"
    )
    result_hash: str | None = Field(
        default=None, max_length=64, description="sha256 of result_doc, attested once after the anchor"
    )
    result_doc: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True), description="the verification report attested"
    )
    attestation: str | None = Field(default=None, max_length=12, description="PENDING, ATTESTED or FAILED")
    attest_tx: str | None = Field(default=None, max_length=66)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    anchored_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
