"""The credentials this node holds and the issuers it trusts.

A held credential keeps its raw JWT (what is presented is exactly what the issuer signed) and,
beside it, the few fields a query filters on. A trusted issuer row says the operator accepts
credentials of one type (or, with an empty type, of any type) signed by that DID: as a holder
from its Storage and Offer APIs, as a verifier in a caller's presentation.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from kernel.db import utcnow


class HeldCredential(SQLModel, table=True):
    __tablename__ = "held_credential"

    id: str = Field(primary_key=True, max_length=200, description="the credential's id (vc.id or jti)")
    type: str = Field(max_length=100, index=True, description="its type besides VerifiableCredential")
    issuer: str = Field(max_length=500, description="the issuer's DID")
    subject: str = Field(max_length=500, description="credentialSubject.id: this node's DID")
    raw: str = Field(sa_column=Column(Text, nullable=False), description="the JWT as issued")
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class TrustedIssuer(SQLModel, table=True):
    __tablename__ = "trusted_issuer"
    __table_args__ = (UniqueConstraint("did", "credential_type", name="uq_trusted_issuer"),)

    id: int | None = Field(default=None, primary_key=True)
    did: str = Field(sa_column=Column(String(500), nullable=False, index=True))
    credential_type: str = Field(
        default="",
        sa_column=Column(String(100), nullable=False),
        description="the one type trusted from it; empty: every type",
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
