"""Participants: organisations identified by their checksummed Ethereum address."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from kernel.db import utcnow


class Participant(SQLModel, table=True):
    __tablename__ = "participant"

    address: str = Field(primary_key=True, max_length=42, description="checksummed address")
    name: str = Field(max_length=200)
    endpoint: str = Field(max_length=500, description="protocol endpoint URL")
    is_self: bool = Field(default=False, index=True)
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
