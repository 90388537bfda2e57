"""The manifest's shape (``apiVersion: agora/v1``); its JSON Schema is published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kernel.errors import InvalidInput
from marketplace.schemas import MEDIA_TYPE, AccessMode, Keyword, Kind
from marketplace.terms import ComputeTermFields
from quality import dvc_source
from quality.spec import QualityFields

AliasName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]  # as marketplace.aliases

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


class ManifestOffering(ComputeTermFields, QualityFields):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$", description="stable key: plan/apply match on it"
    )
    kind: Kind = "dataset"
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    keywords: list[Keyword] = Field(default_factory=list, max_length=32)
    license: str = Field(default="", max_length=100)
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="file, relative to the manifest, or absolute on the node; or "
        "dvc://<repository path or git URL>/<path>@<rev>",
    )
    media_type: str | None = Field(
        default=None, max_length=255, description="default: guessed from the source"
    )
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: list[AccessMode](["download"]), min_length=1
    )
    approval: Literal["auto", "manual"] = "auto"
    policy: dict[str, Any] | None = Field(
        default=None, description="a named template with params, or explicit rules"
    )
    aliases: dict[AliasName, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        max_length=32,
        description="model offerings: alias name → version (e.g. champion: 3)",
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: dict[str, int]) -> dict[str, int]:
        if "latest" in value:
            raise ValueError("'latest' is reserved: it always names the newest published version")
        return value

    @field_validator("source")
    @classmethod
    def _dvc_source(cls, value: str) -> str:
        if dvc_source.is_dvc(value):
            try:
                dvc_source.parse(value)
            except InvalidInput as exc:
                raise ValueError(exc.detail) from None
        return value

    @field_validator("media_type")
    @classmethod
    def _media_type(cls, value: str | None) -> str | None:
        if value is not None and not MEDIA_TYPE.match(value.lower()):
            raise ValueError(f"not a media type (type/subtype): {value!r}")
        return value.lower() if value else value

    @field_validator("access_modes")
    @classmethod
    def _unique_modes(cls, value: list[AccessMode]) -> list[AccessMode]:
        if len(set(value)) != len(value):
            raise ValueError("access modes must not repeat")
        return value


class ManifestPeer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=500)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["agora/v1"] = Field(alias="apiVersion")
    offerings: list[ManifestOffering] = Field(default_factory=list)
    peers: list[ManifestPeer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        seen: set[str] = set()
        for offering in self.offerings:
            if offering.name in seen:
                raise ValueError(f"offering name {offering.name!r} appears twice")
            seen.add(offering.name)
        return self


def manifest_json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$id"] = "https://agora.dev/schemas/manifest-v1.json"
    schema["title"] = "Agora manifest (apiVersion agora/v1)"
    return schema


def write_json_schema() -> Path:
    SCHEMA_FILE.write_text(json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n")
    return SCHEMA_FILE
