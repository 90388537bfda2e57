"""Request and response shapes of the offerings API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from marketplace.terms import ComputeTermFields, ComputeTerms
from quality.spec import QualityFields

Kind = Literal["dataset", "model"]
AccessMode = Literal["download", "compute", "federate"]
ACCESS_MODES: tuple[str, ...] = ("download", "compute", "federate")

_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*[a-z0-9_.-]+=[^;\s]+)*$")
Keyword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class OfferingMetadata(ComputeTermFields, QualityFields):
    """What a provider says about an offering; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$",
        description="stable key (lower-case, digits, . _ -); manifests match on it",
    )
    kind: Kind = "dataset"
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    keywords: list[Keyword] = Field(default_factory=list, max_length=32)
    license: str = Field(default="", max_length=100)
    media_type: str = Field(default="application/octet-stream", max_length=255)
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: list[AccessMode](["download"]), min_length=1
    )
    approval: Literal["auto", "manual"] = Field(
        default="auto", description="negotiations: agree automatically or wait"
    )
    policy: dict[str, Any] | None = Field(
        default=None,
        description="usage policy (template or ODRL-shaped rules); none: offered to no other party",
    )

    def descriptive(self) -> dict[str, Any]:
        """Every other field: the offering's columns of the same names."""
        return self.model_dump(exclude=set(ComputeTerms.model_fields) | set(QualityFields.model_fields))

    @field_validator("media_type")
    @classmethod
    def _media_type(cls, value: str) -> str:
        value = value.lower()
        if not MEDIA_TYPE.match(value):
            raise ValueError(f"not a media type (type/subtype): {value!r}")
        return value

    @field_validator("access_modes")
    @classmethod
    def _unique_modes(cls, value: list[AccessMode]) -> list[AccessMode]:
        if len(set(value)) != len(value):
            raise ValueError("access modes must not repeat")
        return value

    @field_validator("keywords")
    @classmethod
    def _unique_keywords(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ImportRequest(BaseModel):
    """Register a file that already sits on the node's disk, under an allowed directory."""

    model_config = ConfigDict(extra="forbid")

    metadata: OfferingMetadata
    path: str = Field(min_length=1, max_length=4096)


# Responses are msgspec structs: built for every listed row, they cost a fraction of a
# pydantic model (bench/api.py), and Litestar encodes and documents them natively.


class Anchor(msgspec.Struct, kw_only=True):
    """Where the notarization of a version stands (see contracts.notary)."""

    status: str
    asset_id: str | None = None
    chain_id: int | None = None
    registry: str | None = None
    batch_root: str | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    error: str | None = None


class VersionOut(msgspec.Struct, kw_only=True):
    version: int
    sha256: str
    size: int
    media_type: str
    created_at: datetime
    anchor: Anchor
    published: bool = True
    quality_status: str = "none"  # none | validating | passed | failed | error
    quality: dict[str, Any] | None = None  # the validation's summary (no rows)
    validation: Anchor | None = None  # the validation result's own anchor (a child of this version)
    validation_sha256: str | None = None
    schema: dict[str, Any] | None = None
    trainable: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    source: dict[str, Any] | None = None  # a DVC source: repo, path, rev, commit, md5
    aliases: list[str] = msgspec.field(default_factory=list)


class ComputeTermsOut(msgspec.Struct, kw_only=True):
    """What a compute job's consumer may receive (``marketplace.terms``)."""

    job_logs: str
    allow_native_release: bool
    allow_stored_examples: bool


class OfferingOut(msgspec.Struct, kw_only=True):
    id: str
    name: str | None
    kind: str
    title: str
    description: str
    keywords: list[str]
    license: str
    media_type: str
    access_modes: list[str]
    approval: str
    policy: dict[str, Any] | None
    compute_terms: ComputeTermsOut
    provider: str
    status: str
    version: int
    sha256: str
    size: int
    anchor: Anchor
    created_at: datetime
    updated_at: datetime
    created: bool = True  # False when these bytes were already stored
    quality_status: str = "none"  # of the version above


class OfferingDetail(OfferingOut, kw_only=True):
    versions: list[VersionOut]
    declared: dict[str, Any] = msgspec.field(
        default_factory=dict
    )  # schema, suite, on_failure, on_untrainable
    aliases: dict[str, int] = msgspec.field(default_factory=dict)  # alias name → version


class OfferingPage(msgspec.Struct, kw_only=True):
    items: list[OfferingOut]
    next_cursor: str | None
