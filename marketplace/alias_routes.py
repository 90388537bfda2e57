"""HTTP routes of model aliases and of publishing models: ``/api/v1/offerings/{offering}/…``.

``{offering}`` is the offering's id or its name. Writes need ``offerings:write``, like every
other change to an offering; bodies are small JSON documents, parsed by the models below.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath
from pydantic import BaseModel, ConfigDict, Field

from kernel.validation import validate
from marketplace.aliases import AliasService
from marketplace.publish import PublishRequest, PublishService

MAX_ALIAS_BODY = 1024
MAX_PUBLISH_BODY = 64 * 1024


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1, strict=True, description="the published version it names")


class AliasController(Controller):
    path = "/offerings/{offering_id:str}/aliases"
    tags = ["offerings"]

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_aliases(
        self, offering_id: FromPath[str], alias_service: NamedDependency[AliasService]
    ) -> dict[str, Any]:
        """The offering's id, its latest published version and its aliases (name → version)."""
        return alias_service.describe(offering_id)

    @put("/{name:str}", opt={"scope": "offerings:write"}, request_max_body_size=MAX_ALIAS_BODY)
    async def move(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        name: FromPath[str],
        alias_service: NamedDependency[AliasService],
    ) -> dict[str, Any]:
        """Point the alias at a published version (audited and notarized)."""
        body: AliasMove = validate(AliasMove, await request.body(), what="alias move")
        return await to_thread.run_sync(
            alias_service.move, offering_id, name, body.version, request.user.subject
        )

    @delete("/{name:str}", opt={"scope": "offerings:write"}, status_code=200, sync_to_thread=True)
    def remove(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        name: FromPath[str],
        alias_service: NamedDependency[AliasService],
    ) -> dict[str, Any]:
        """Remove the alias (audited and notarized); answers the aliases left."""
        alias_service.delete(offering_id, name, request.user.subject)
        return alias_service.describe(offering_id)


class PublishController(Controller):
    path = "/offerings/{offering_id:str}/publish"
    tags = ["offerings"]

    @post("", opt={"scope": "offerings:write"}, status_code=201, request_max_body_size=MAX_PUBLISH_BODY)
    async def publish(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        publish_service: NamedDependency[PublishService],
    ) -> dict[str, Any]:
        """Register a completed job's or federation's ONNX model as a new version of a model
        offering (created with ``create`` when it does not exist), its lineage kept."""
        body: PublishRequest = validate(PublishRequest, await request.body(), what="publish request")
        return await to_thread.run_sync(publish_service.publish, offering_id, body, request.user.subject)


api_handlers = [AliasController, PublishController]
public_handlers: list[object] = []
