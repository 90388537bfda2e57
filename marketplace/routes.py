"""HTTP routes of the marketplace: ``/api/v1/offerings``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.openapi.spec.operation import Operation
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from kernel.errors import FieldError, InvalidInput, PayloadTooLarge
from kernel.hashing import repr_digest
from kernel.ranges import parse_range
from kernel.uploads import receive_multipart
from kernel.validation import validate
from marketplace.catalog import CatalogFilters, CatalogService
from marketplace.manifests.routes import api_handlers as manifest_handlers
from marketplace.schemas import (
    ImportRequest,
    OfferingDetail,
    OfferingMetadata,
    OfferingOut,
    OfferingPage,
)
from marketplace.services import OfferingService
from marketplace.streaming import body_chunks
from quality.worker import ValidationRequest, Validations

MAX_JSON_BYTES = 1024 * 1024


@dataclass
class _UploadOperation(Operation):
    """OpenAPI description of the body we parse ourselves (streamed, never buffered)."""

    request_body: Any = field(
        default_factory=lambda: RequestBody(
            required=True,
            description="multipart upload, or JSON {metadata, path} for a server-side file",
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["metadata", "file"],
                        properties={
                            "metadata": Schema(
                                type=OpenAPIType.STRING, description="OfferingMetadata as JSON"
                            ),
                            "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                        },
                    )
                ),
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["metadata", "path"],
                        properties={
                            "metadata": Schema(type=OpenAPIType.OBJECT),
                            "path": Schema(type=OpenAPIType.STRING),
                        },
                    )
                ),
            },
        )
    )


async def _receive_file(request: Request[Any, Any, Any], service: OfferingService) -> Any:
    """Stream a multipart body into a staging file; returns the parsed upload."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.max_upload_bytes + 1024 * 1024:
        raise PayloadTooLarge(f"the upload exceeds this node's limit of {service.max_upload_bytes} bytes")
    upload = await receive_multipart(
        body_chunks(request),
        request.headers.get("content-type", ""),
        service.store,
        max_file_bytes=service.max_upload_bytes,
    )
    if upload.staged is None:
        raise InvalidInput("the upload has no 'file' part", errors=[FieldError("file", "missing")])
    return upload


class OfferingController(Controller):
    path = "/offerings"
    tags = ["offerings"]

    @post("", opt={"scope": "offerings:write"}, request_max_body_size=None, operation_class=_UploadOperation)
    async def create(
        self, request: Request[Any, Any, Any], offering_service: NamedDependency[OfferingService]
    ) -> OfferingOut:
        """Register a dataset or model: multipart (metadata + file) or JSON (metadata + path)."""
        actor = request.user.subject
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.body()
            if len(body) > MAX_JSON_BYTES:
                raise PayloadTooLarge(f"JSON body over {MAX_JSON_BYTES} bytes")
            req = validate(ImportRequest, body, what="import request")
            return await to_thread.run_sync(offering_service.import_path, req, actor)
        upload = await _receive_file(request, offering_service)
        with upload.staged:
            if "metadata" not in upload.fields:
                raise InvalidInput(
                    "the upload has no 'metadata' part", errors=[FieldError("metadata", "missing")]
                )
            metadata = validate(
                OfferingMetadata, upload.fields["metadata"], prefix="metadata", what="metadata"
            )
            return await to_thread.run_sync(offering_service.register, upload.staged, metadata, actor)

    @post("/{offering_id:str}/versions", opt={"scope": "offerings:write"}, request_max_body_size=None)
    async def add_version(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        offering_service: NamedDependency[OfferingService],
    ) -> OfferingOut:
        """Upload new bytes for an existing offering (multipart part 'file')."""
        upload = await _receive_file(request, offering_service)
        with upload.staged:
            return await to_thread.run_sync(
                offering_service.add_version, offering_id, upload.staged, request.user.subject
            )

    @post(
        "/{offering_id:str}/versions/{number:int}/validate",
        opt={"scope": "offerings:write"},
        status_code=202,
        sync_to_thread=True,
    )
    def validate_version(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        number: FromPath[int],
        validation_service: NamedDependency[Validations],
    ) -> ValidationRequest:
        """Validate (and profile) a dataset version again, beside the notary, when its suite failed
        or could not run; any other settled version (passed, or without a suite) is profiled
        again with its status and publication unchanged (e.g. after a column was declared an
        ``id``). 409 while it is validating."""
        return validation_service.request(offering_id, number, request.user.subject)

    # a short indexed read: on the event loop it costs less than a hop to a worker thread
    @get("", opt={"scope": "catalog:read"}, sync_to_thread=False)
    def list_offerings(
        self,
        offering_service: NamedDependency[OfferingService],
        kind: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> OfferingPage:
        """This node's active offerings, newest first; follow ``next_cursor`` for more."""
        return offering_service.list(kind=kind, cursor=cursor, limit=limit)

    @get("/{offering_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(
        self, offering_id: FromPath[str], offering_service: NamedDependency[OfferingService]
    ) -> OfferingDetail:
        return offering_service.get(offering_id)

    @get("/{offering_id:str}/download", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def download(
        self,
        request: Request[Any, Any, Any],
        offering_id: FromPath[str],
        offering_service: NamedDependency[OfferingService],
        version: FromQuery[int | None] = None,
        alias: FromQuery[str | None] = None,
    ) -> Stream:
        """The bytes of a version (latest by default, or the one ``alias`` names now); honours
        ``Range`` for resuming."""
        item = offering_service.download(offering_id, version, alias=alias)
        span = parse_range(request.headers.get("range"), item.size)
        start, end = span or (0, item.size)
        headers = {
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "Repr-Digest": repr_digest(item.sha256),
            "ETag": f'"{item.sha256}"',
            "Content-Disposition": f'attachment; filename="{item.filename}"',
        }
        if span:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{item.size}"
        return Stream(
            offering_service.read(item.sha256, start, end),
            media_type=item.media_type,
            status_code=206 if span else 200,
            headers=headers,
        )


class CatalogController(Controller):
    path = "/catalog"
    tags = ["catalog"]

    @get("", opt={"scope": "catalog:read"})
    async def search(
        self,
        catalog_service: NamedDependency[CatalogService],
        q: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        provider: FromQuery[str | None] = None,
        keyword: FromQuery[str | None] = None,
        access_mode: FromQuery[str | None] = None,
        license: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> dict[str, Any]:
        """Search this node's offerings and its peers' (as last crawled; ``stale`` when a peer is down)."""
        filters = CatalogFilters(
            q=q, kind=kind, provider=provider, keyword=keyword, access_mode=access_mode, license=license
        )
        if q:  # a full-text match takes a millisecond or more: keep it off the event loop
            return await to_thread.run_sync(
                lambda: catalog_service.search(filters, cursor=cursor, limit=limit)
            )
        # browsing is a short indexed read: inline it costs less than a hop to a worker thread
        return catalog_service.search(filters, cursor=cursor, limit=limit)


api_handlers = [OfferingController, CatalogController, *manifest_handlers]
public_handlers: list[object] = []
