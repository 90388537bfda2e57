"""``/api/v1/manifests/plan`` and ``/api/v1/manifests/apply``."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import FieldError, InvalidInput, PayloadTooLarge
from kernel.uploads import receive_multipart
from kernel.validation import validate
from marketplace.manifests.loader import load_manifest
from marketplace.manifests.plan import SourceInfo
from marketplace.manifests.service import ManifestService
from marketplace.streaming import body_chunks

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_REQUEST_BYTES = 4 * MAX_MANIFEST_BYTES  # the manifest as a JSON string, its sources and suites
SOURCE_PREFIX = "source:"


class ManifestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        min_length=1, max_length=MAX_MANIFEST_BYTES, description="the manifest, YAML or JSON text"
    )
    source_name: str = Field(
        default="manifest", max_length=500, description="file name used in error messages"
    )
    sources: dict[str, SourceInfo] = Field(
        default_factory=dict,
        description="offering name -> sha256 and size (and, for a dvc:// source, what it resolved to)",
    )
    suites: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        max_length=500,
        description="offering name -> the expectation suite its suite file holds (GX suite JSON)",
    )


async def _json_request(request: Request[Any, Any, Any]) -> ManifestRequest:
    body = await request.body()
    if len(body) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"the manifest request is over {MAX_REQUEST_BYTES} bytes")
    return validate(ManifestRequest, body, what="manifest request")


class ManifestController(Controller):
    path = "/manifests"
    tags = ["manifests"]

    @post("/plan", opt={"scope": "offerings:write"}, status_code=200, request_max_body_size=MAX_REQUEST_BYTES)
    async def plan(
        self, request: Request[Any, Any, Any], manifest_service: NamedDependency[ManifestService]
    ) -> dict[str, Any]:
        """What applying the manifest would change; changes nothing."""
        req = await _json_request(request)
        loaded = load_manifest(req.manifest, req.source_name)
        plan = await to_thread.run_sync(manifest_service.plan, loaded, req.sources, req.suites)
        return plan.as_dict()

    @post(
        "/apply",
        opt={"scope": "offerings:write", "max_json_bytes": MAX_REQUEST_BYTES},
        status_code=200,
        request_max_body_size=None,
    )
    async def apply(
        self, request: Request[Any, Any, Any], manifest_service: NamedDependency[ManifestService]
    ) -> dict[str, Any]:
        """Carry the manifest out. JSON, or multipart with part ``request`` (JSON) and one part
        ``source:NAME`` per offering whose bytes the plan needs."""
        if request.headers.get("content-type", "").startswith("application/json"):
            req, files = await _json_request(request), {}
        else:
            upload = await receive_multipart(
                body_chunks(request),
                request.headers.get("content-type", ""),
                manifest_service.offerings.store,
                file_fields=lambda name: name.startswith(SOURCE_PREFIX),
                max_file_bytes=manifest_service.offerings.max_upload_bytes,
            )
            if "request" not in upload.fields:
                upload.discard()
                raise InvalidInput(
                    "multipart apply needs a 'request' part", errors=[FieldError("request", "missing")]
                )
            files = {name.removeprefix(SOURCE_PREFIX): staged for name, staged in upload.files.items()}
            try:
                req = validate(
                    ManifestRequest, upload.fields["request"], prefix="request", what="manifest request"
                )
            except BaseException:
                upload.discard()
                raise
        try:
            loaded = load_manifest(req.manifest, req.source_name)
            plan = await to_thread.run_sync(
                manifest_service.apply, loaded, req.sources, files, request.user.subject, req.suites
            )
        finally:
            for staged in files.values():
                if not staged.committed:
                    staged.discard()
        return plan.as_dict()


api_handlers = [ManifestController]
