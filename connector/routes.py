"""HTTP routes of the connector: ``/api/v1/participants``."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from connector.schemas import ParticipantOut
from connector.services import ParticipantService


class ParticipantController(Controller):
    path = "/participants"
    tags = ["participants"]

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_participants(
        self, participant_service: NamedDependency[ParticipantService]
    ) -> list[ParticipantOut]:
        """The participants this node knows (itself first)."""
        return participant_service.list()


api_handlers = [ParticipantController]
public_handlers: list[object] = []
