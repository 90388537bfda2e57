"""HTTP routes of the participants API (``/api/v1/participants``); the protocol's routes are
:mod:`connector.dsp.routes`."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency

from connector.schemas import ParticipantOut, PeerAdd
from connector.services import ParticipantService
from kernel.validation import validate


class ParticipantController(Controller):
    path = "/participants"
    tags = ["participants"]

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_participants(
        self, participant_service: NamedDependency[ParticipantService]
    ) -> list[ParticipantOut]:
        """The participants this node knows (itself first)."""
        return participant_service.list()

    @post("", opt={"scope": "admin"}, status_code=201)
    async def add_peer(
        self, request: Request[Any, Any, Any], participant_service: NamedDependency[ParticipantService]
    ) -> ParticipantOut:
        """Add a peer by URL (and, for another connector, its DID): its DID document names its
        keys, its version metadata its DSP base."""
        body = validate(PeerAdd, await request.body(), what="peer")
        return await to_thread.run_sync(
            lambda: participant_service.add_peer(body.url, request.user.subject, did=body.did, name=body.name)
        )


api_handlers = [ParticipantController]
public_handlers: list[object] = []
