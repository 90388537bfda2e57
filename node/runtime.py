"""Everything a running node holds, built once from the settings and passed around."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine

from connector.services import ParticipantService
from contracts.chain import Chain
from contracts.notary import Notary, NotaryConfig
from contracts.provenance import ProvenanceService
from contracts.registry import Registry
from kernel.db import backend_name, make_engine
from kernel.storage import ObjectStore
from marketplace.services import OfferingService
from node.auth import TokenIssuer, TokenVerifier
from node.identity import org_private_key, participant_address, token_signing_key
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
    notary: Notary
    provenance: ProvenanceService
    _chain: Chain | None = None
    _chain_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def database_kind(self) -> str:
        return backend_name(self.settings.effective_database_url)

    def chain(self) -> Chain:
        """The chain connection, opened on first use (the node starts while the chain is down)."""
        with self._chain_lock:
            if self._chain is None:
                from eth_account import Account

                from contracts.chain import open_chain

                settings = self.settings
                self._chain = open_chain(
                    settings.chain_url,
                    data_dir=settings.chain_dir,
                    account=Account.from_key(org_private_key(settings)),
                    registry=settings.chain_registry or None,
                    expected_chain_id=settings.chain_id,
                    confirmations=settings.chain_confirmations,
                )
            return self._chain

    def registry(self) -> Registry:
        return Registry(self.chain())

    def close(self) -> None:
        self.notary.stop()
        if self._chain is not None:
            self._chain.close()
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
    notary = Notary(
        engine,
        lambda: runtime.registry(),  # bound late: the runtime below owns the chain connection
        participant_name=settings.name,
        endpoint=settings.public_url,
        config=NotaryConfig(batch_size=settings.anchor_batch_size, max_delay=settings.anchor_max_delay),
    )
    offerings = OfferingService(
        engine,
        store,
        address,
        import_dirs=settings.import_dirs,
        max_upload_bytes=settings.max_upload_bytes,
        on_queued=notary.wake,
    )
    runtime = Runtime(
        settings=settings,
        address=address,
        engine=engine,
        store=store,
        issuer=issuer,
        verifier=verifier,
        offerings=offerings,
        participants=ParticipantService(engine),
        notary=notary,
        provenance=ProvenanceService(engine, chain_rpc_url=settings.chain_rpc_url),
    )
    return runtime
