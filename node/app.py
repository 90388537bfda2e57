"""The Litestar application: collects each domain's routes under one node.

``/health`` and ``/.well-known/jwks.json`` need no token; everything under ``/api/v1``
passes the bearer-token guard, which also checks the scope each handler declares in its
``opt={"scope": …}`` (a handler without one needs ``admin``: the guard fails closed).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from litestar import Litestar, Router, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy import text

import connector.dcp.routes
import connector.dsp.conformance
import connector.dsp.routes
import connector.negotiation_routes
import connector.routes
import contracts.routes
import federation.routes
import marketplace.alias_routes
import marketplace.policy.routes
import marketplace.routes
import training_jobs.routes
from kernel.errors import ServiceUnavailable
from kernel.limits import bound_recursion
from node.auth import bearer_token
from node.headers import security_headers
from node.problems import exception_handlers
from node.request_limits import RequestLimits
from node.runtime import Runtime
from quality.worker import QualityWorker

log = logging.getLogger("agora.node")
VERSION = "0.1.0"
DOMAINS = (
    marketplace.routes,
    marketplace.alias_routes,
    marketplace.policy.routes,
    connector.routes,
    connector.negotiation_routes,
    connector.dsp.routes,
    connector.dcp.routes,
    connector.dsp.conformance,
    contracts.routes,
    training_jobs.routes,
    federation.routes,
)


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard of every ``/api/v1`` route: a valid bearer token holding the handler's scope."""
    runtime: Runtime = connection.app.state.runtime
    token = bearer_token(connection.headers.get("authorization"))
    connection.scope["user"] = await runtime.verifier.authorize(token, handler.opt.get("scope", "admin"))


@get("/health", tags=["node"], sync_to_thread=True)
def health(state: State) -> dict[str, Any]:
    """Liveness and what this node runs on; 503 when the database or storage is down."""
    runtime: Runtime = state.runtime
    with runtime.engine.connect() as conn:
        try:
            conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise ServiceUnavailable(f"database unavailable: {exc}") from exc
    runtime.store.check()
    settings = runtime.settings
    return {
        "status": "ok",
        "version": VERSION,
        "participant": runtime.address,
        "name": runtime.settings.name,
        "public_url": runtime.settings.public_url,
        "chain": settings.chain_url,
        "chain_rpc": settings.chain_rpc_url,
        "notary": {
            "backlog": runtime.notary.pending_count(),
            "last_error": runtime.notary.last_error or None,
        },
        "peers": runtime.catalog.freshness(),
        "storage": runtime.store.kind,
        "database": runtime.database_kind,
    }


@get("/.well-known/jwks.json", tags=["node"], sync_to_thread=False)
def jwks(state: State) -> dict[str, Any]:
    """Public keys of the tokens this node signs."""
    runtime: Runtime = state.runtime
    return runtime.issuer.public_jwks()


def _constant(value: Any) -> Any:
    def provide() -> Any:
        return value

    return provide


def create_app(runtime: Runtime) -> Litestar:
    """The node's ASGI app for a runtime (database, store and keys already opened)."""
    bound_recursion()  # before any request: a parser that recurses too deep fails, not the process
    limits = runtime.settings

    def on_startup() -> None:
        settings = runtime.settings
        from connector.dsp.identity import read_did_document

        identity = runtime.identity
        runtime.participants.ensure_self(
            address=runtime.address,
            name=settings.name,
            endpoint=settings.public_url,
            did=identity.did,
            dsp_url=settings.dsp_url,
            keys=read_did_document(identity.did, runtime.did_document()).keys,
        )
        test_peer = runtime.protocol.test_peer if runtime.protocol is not None else None
        if test_peer is not None:
            log.warning(
                "conformance test mode: requests with the configured Authorization value act as %s",
                test_peer.participant,
            )
            runtime.participants.ensure_test_peer(
                address=test_peer.address, participant=test_peer.participant, callback=test_peer.callback
            )
        removed = runtime.store.sweep_staging()
        if removed:
            log.warning("removed %d staging file(s) left by an interrupted upload", removed)
        queued = runtime.offerings.backfill_notarizations()
        if queued:
            log.info("queued %d offering version(s) registered before notarization", queued)
        runtime.notary.start()
        if settings.quality_worker and runtime.validations is not None:
            runtime.quality_worker = QualityWorker(runtime.validations)
            runtime.quality_worker.start()
        if runtime.crawler is not None:
            runtime.crawler.start()
        if runtime.dispatcher is not None:
            runtime.dispatcher.start()
        runtime.conformance = connector.dsp.conformance.install(runtime)
        if settings.jobs_workers > 0:
            from node.jobs import job_pool

            runtime.job_pool = job_pool(runtime, settings.jobs_workers)
            runtime.job_pool.start()
        if settings.federations_enabled:
            from node.federations import start_federation_workers

            start_federation_workers(runtime)
        # what start-up loaded lives as long as the process: keep it out of every later
        # full garbage collection (they otherwise cost ~25 ms and show in the p99)
        gc.collect()
        gc.freeze()

    api = Router(
        path="/api/v1",
        route_handlers=[h for d in DOMAINS for h in d.api_handlers],
        guards=[authenticate],
        security=[{"bearer": []}],
    )
    from litestar.plugins.jinja import JinjaTemplateEngine
    from litestar.template.config import TemplateConfig

    from node.ui.openapi_viewer import OfflineSwagger
    from node.ui.routes import TEMPLATES, ui_router

    return Litestar(
        route_handlers=[health, jwks, api, ui_router(), *[h for d in DOMAINS for h in d.public_handlers]],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        dependencies={
            name: Provide(_constant(value), sync_to_thread=False, use_cache=True)
            for name, value in {
                "offering_service": runtime.offerings,
                "validation_service": runtime.validations,
                "alias_service": runtime.aliases,
                "publish_service": runtime.publisher,
                "participant_service": runtime.participants,
                "manifest_service": runtime.manifests,
                "catalog_service": runtime.catalog,
                "negotiation_service": runtime.negotiations,
                "agreement_service": runtime.agreements,
                "transfer_service": runtime.transfers,
                "download_service": runtime.downloads,
                "provenance_service": runtime.provenance,
                "chain_getter": runtime.chain,
                "did_document": runtime.did_document,
                "dcp_service": runtime.dcp,
                "protocol_gate": runtime.protocol,
                "job_service": runtime.jobs,
                "job_provider": runtime.job_provider,
                "coordinator": runtime.coordinator,
                "federation_provider": runtime.federation_provider,
            }.items()
        },
        exception_handlers=exception_handlers,
        middleware=[
            RequestLimits(
                max_json_bytes=limits.max_json_bytes,
                max_upload_bytes=limits.max_upload_bytes,
                timeout=limits.request_timeout,
                early_guards=(authenticate,),
            )
        ],
        request_max_body_size=limits.max_json_bytes,
        state=State({"runtime": runtime}),
        on_startup=[on_startup],
        on_shutdown=[runtime.close],
        openapi_config=OpenAPIConfig(
            title="Agora node",
            version=VERSION,
            path="/schema",
            render_plugins=[OfflineSwagger(path="/")],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
        ),
        before_send=[security_headers],
        debug=False,
    )
