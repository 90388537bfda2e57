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
    created_at: datetime


class PeerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=500, pattern=r"^https?://")
