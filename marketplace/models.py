"""Offerings, their versions and the content-addressed assets they point at."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
    true,
)
from sqlmodel import Field, SQLModel

from kernel.db import utcnow


def _ts() -> Any:
    return Column(DateTime(timezone=True), nullable=False)


class Asset(SQLModel, table=True):
    """Bytes known by their sha256; the identity of an asset version."""

    __tablename__ = "asset"

    sha256: str = Field(primary_key=True, max_length=64, description="hex digest of the content")
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    media_type: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Offering(SQLModel, table=True):
    """A dataset or model this node offers, with its descriptive metadata."""

    __tablename__ = "offering"
    __table_args__ = (
        UniqueConstraint("provider", "name", name="uq_offering_provider_name"),
        Index("ix_offering_status_created_id", "status", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    name: str | None = Field(default=None, max_length=100, description="manifest key")
    provider: str = Field(max_length=42, foreign_key="participant.address", index=True)
    kind: str = Field(max_length=20, index=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", sa_column=Column(String, nullable=False, default=""))
    keywords: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    license: str = Field(default="", max_length=100)
    media_type: str = Field(max_length=255)
    access_modes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    policy: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="usage policy; None: offered to no one",
    )
    approval: str = Field(
        default="auto",
        sa_column=Column(String(10), nullable=False, server_default="auto"),
        description="auto | manual (negotiations)",
    )
    managed: bool = Field(
        default=False,
        sa_column=Column(Boolean, nullable=False, server_default=false()),
        description="declared in a manifest (plan/apply may retire it)",
    )
    compute_terms: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="what a compute job's consumer may receive: job_logs, allow_native_release, "
        "allow_stored_examples (marketplace.terms)",
    )
    quality_declared: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="schema, expectation suite, on_failure, on_untrainable (quality.spec.QualityFields)",
    )
    status: str = Field(default="active", max_length=20)
    latest_version: int = Field(default=1, description="the newest published version (what consumers get)")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class OfferingVersion(SQLModel, table=True):
    """One version of an offering: a pointer to an asset and to its notarization."""

    __tablename__ = "offering_version"
    __table_args__ = (UniqueConstraint("offering_id", "version", name="uq_offering_version"),)

    id: int | None = Field(default=None, primary_key=True)
    offering_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("offering.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    version: int
    asset_sha256: str = Field(max_length=64, foreign_key="asset.sha256", index=True)
    notarization_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("notarization.id", name="fk_offering_version_notarization"),
            nullable=True,
            index=True,
        ),
    )
    published: bool = Field(
        default=True,
        sa_column=Column(Boolean, nullable=False, server_default=true()),
        description="offered to consumers: False while a reject-on-failure suite runs, or once it failed",
    )
    source: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="where the bytes came from: {kind: dvc, repo, path, rev, commit, md5}",
    )
    schema_doc: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="the version's schema (columns or arrays) and whether it was declared or inferred",
    )
    trainable: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="compute/federate offerings: {ok, reason, features, label} (quality.schema)",
    )
    quality_status: str = Field(
        default="none",
        sa_column=Column(String(20), nullable=False, server_default="none"),
        description="none | validating | passed | failed | error (quality.spec)",
    )
    quality: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="the validation's summary: expectations passed and failed, failing columns",
    )
    profile: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True), description="the profile without rows"
    )
    validation_sha256: str | None = Field(
        default=None, max_length=64, description="sha256 of the stored validation result"
    )
    validation_notarization_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("notarization.id", name="fk_offering_version_validation_notarization"),
            nullable=True,
        ),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class OfferingAlias(SQLModel, table=True):
    """A name (``champion``, ``candidate``) the owner points at one version of a model offering."""

    __tablename__ = "offering_alias"
    __table_args__ = (UniqueConstraint("offering_id", "name", name="uq_offering_alias"),)

    id: int | None = Field(default=None, primary_key=True)
    offering_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("offering.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    name: str = Field(max_length=64)
    version: int
    notarization_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("notarization.id", name="fk_offering_alias_notarization"), nullable=True
        ),
    )
    moved_by: str = Field(default="", max_length=200)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class CatalogEntry(SQLModel, table=True):
    """One offering in the marketplace catalog: this node's own (kept in step with the
    offering) or a peer's (copied by the crawler). Searched with full text: SQLite FTS5 or
    PostgreSQL tsvector, both maintained by the database itself (see migration 0004)."""

    __tablename__ = "catalog_entry"
    __table_args__ = (
        UniqueConstraint("provider", "offering_id", name="uq_catalog_entry"),
        Index("ix_catalog_entry_order", "modified_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=42, index=True)
    offering_id: str = Field(max_length=100)
    local: bool = Field(default=False, index=True)
    name: str | None = Field(default=None, max_length=100)
    kind: str = Field(max_length=20, index=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", sa_column=Column(String, nullable=False, default=""))
    keywords: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    license: str = Field(default="", max_length=100, index=True)
    media_type: str = Field(default="", max_length=255)
    access_modes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    version: int = 1
    sha256: str = Field(default="", max_length=64, index=True)
    anchor_status: str = Field(default="", max_length=20)
    policy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    search_text: str = Field(default="", sa_column=Column(String, nullable=False, default=""))
    filter_tags: str = Field(
        default="",
        sa_column=Column(String, nullable=False, default=""),
        description="|kw:x|mode:y| for filters",
    )
    modified_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    fetched_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    document: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class PeerCatalogState(SQLModel, table=True):
    """How fresh the copy of a peer's catalog is."""

    __tablename__ = "peer_catalog_state"

    provider: str = Field(primary_key=True, max_length=42)
    endpoint: str = Field(max_length=500)
    modified_cursor: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_attempt_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_success_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error: str = Field(default="", max_length=2000)
    entries: int = 0
