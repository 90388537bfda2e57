"""Everything a running node holds, built once from the settings and passed around."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from connector.services import ParticipantService
from kernel.db import backend_name, make_engine
from kernel.storage import ObjectStore
from marketplace.services import OfferingService
from node.auth import TokenIssuer, TokenVerifier
from node.identity import participant_address, token_signing_key
from node.settings import Settings
from node.storage import make_object_store


@dataclass
class Runtime:
    settings: Settings
    address: str
    engine: Engine
    store: ObjectStore
    issuer: TokenIssuer
    verifier: TokenVerifier
    offerings: OfferingService
    participants: ParticipantService

    @property
    def database_kind(self) -> str:
        return backend_name(self.settings.effective_database_url)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(settings: Settings) -> Runtime:
    """Open the database, object store and keys this node's settings name."""
    address = participant_address(settings)
    key = token_signing_key(settings)
    issuer = TokenIssuer(key, settings.token_issuer, address, settings.token_ttl_max_seconds)
    verifier = TokenVerifier(
        settings.token_issuer,
        address,
        key,
        oidc_issuer=settings.oidc_issuer,
        oidc_audience=settings.oidc_audience,
        oidc_jwks_url=settings.oidc_jwks_url,
    )
    engine = make_engine(settings.effective_database_url)
    store = make_object_store(settings)
    offerings = OfferingService(
        engine,
        store,
        address,
        import_dirs=settings.import_dirs,
        max_upload_bytes=settings.max_upload_bytes,
    )
    participants = ParticipantService(engine)
    return Runtime(settings, address, engine, store, issuer, verifier, offerings, participants)
