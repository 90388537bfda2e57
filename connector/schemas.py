"""Response shapes of the participants API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ParticipantOut(BaseModel):
    address: str
    name: str
    label: str = Field(description="the name as pages show it: with the address when the name is shared")
    endpoint: str
    is_self: bool
    trusted: bool = Field(description="a peer the operator added; false: known only from the registry")
    did: str | None = Field(default=None, description="its DID (did:web)")
    kind: str = Field(
        default="agora", description="agora: an Agora node; dsp: another Dataspace Protocol connector"
    )
    dsp_url: str = Field(default="", description="the DSP base URL it advertises")
    created_at: datetime


class PeerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=500, pattern=r"^https?://")
    did: str | None = Field(
        default=None,
        max_length=500,
        pattern=r"^did:web:[^\s]+$",
        description="another connector's DID (default: the did:web of the URL, as an Agora node's is)",
    )
    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="another connector's name (default: its DID)"
    )
