"""HTTP routes of the connector: participants (``/api/v1/participants``) and the protocol
endpoints other nodes call (``/dsp/…``, signed envelopes, no bearer tokens)."""

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
        """Add a peer by URL: its signed identity statement names its address."""
        body = validate(PeerAdd, await request.body(), what="peer")
        return await to_thread.run_sync(participant_service.add_peer, body.url, request.user.subject)


@get("/dsp/identity", tags=["protocol"], sync_to_thread=False)
def identity(identity_statement: NamedDependency[Any]) -> dict[str, Any]:
    """This node's self-signed identity: address, name, protocol endpoint, chain."""
    statement: dict[str, Any] = identity_statement()
    return statement


api_handlers = [ParticipantController]
public_handlers: list[object] = [identity]
