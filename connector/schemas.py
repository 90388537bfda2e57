"""Response shapes of the participants API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ParticipantOut(BaseModel):
    address: str
    name: str
    endpoint: str
    is_self: bool
    created_at: datetime
