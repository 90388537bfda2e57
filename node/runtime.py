"""Everything a running node holds, built once from the settings and passed around.

:func:`build_runtime` opens the database, object store, keys and outbound client, then wires
the domains: offerings, manifests and the catalog here, negotiations, agreements and
transfers with their dispatcher (:func:`_connect_negotiations`), training jobs in
:mod:`node.jobs`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

if TYPE_CHECKING:
    from federation.local import LocalRounds
    from federation.rounds import RoundDriver

from connector.agreements import AgreementService
from connector.crawler import CatalogCrawler
from connector.dcp.service import DcpService
from connector.dispatcher import Dispatcher
from connector.downloads import DownloadService
from connector.dsp.client import PeerClients, resolve_did
from connector.dsp.gate import ProtocolGate
from connector.dsp.identity import DidDocument, NodeIdentity
from connector.negotiation import NegotiationService
from connector.services import ParticipantService
from connector.transfers import TransferService
from contracts.chain import Chain
from contracts.notary import Notary, NotaryConfig
from contracts.provenance import ProvenanceService
from contracts.registry import Registry
from federation.coordinator import Coordinator
from federation.provider import ProviderFederations
from kernel.addresses import AddressRules
from kernel.db import backend_name, make_engine
from kernel.errors import AgoraError, ConfigurationError
from kernel.outbound import OutboundClient, OutboundPolicy
from kernel.storage import ObjectStore
from kernel.worker import BackgroundWorker
from marketplace.aliases import AliasService
from marketplace.catalog import CatalogService
from marketplace.manifests.service import ManifestService
from marketplace.publish import PublishService, imported_lineage
from marketplace.services import OfferingService, check_policy
from node.auth import OIDCKeyFetcher, TokenIssuer, TokenVerifier
from node.federations import connect_federations
from node.identity import org_private_key, participant_address, token_signing_key
from node.jobs import connect_jobs
from node.settings import Settings
from node.storage import make_object_store
from quality.worker import QualityWorker, Validations
from training_jobs.provider import ProviderJobs
from training_jobs.sandbox import Sandbox
from training_jobs.services import JobService
from training_jobs.worker import JobPool

log = logging.getLogger("agora.node")


@dataclass
class Runtime:
    settings: Settings
    address: str
    engine: Engine
    outbound: OutboundClient
    store: ObjectStore
    issuer: TokenIssuer
    verifier: TokenVerifier
    offerings: OfferingService
    participants: ParticipantService
    notary: Notary
    provenance: ProvenanceService
    manifests: ManifestService
    catalog: CatalogService
    aliases: AliasService
    identity: NodeIdentity
    peer_clients: PeerClients
    # what this node chooses where DSP leaves a choice, per negotiation / transfer (a
    # conformance profile adds its own): callables returning options, later ones winning
    negotiation_options: list[Callable[[str, str], dict[str, str]]] = field(default_factory=list)
    dcp: DcpService | None = None
    transfer_options: list[Callable[[str], dict[str, str]]] = field(default_factory=list)
    crawler: CatalogCrawler | None = None
    publisher: PublishService | None = None
    negotiations: NegotiationService | None = None
    agreements: AgreementService | None = None
    transfers: TransferService | None = None
    downloads: DownloadService | None = None
    dispatcher: Dispatcher | None = None
    protocol: ProtocolGate | None = None
    jobs: JobService | None = None
    job_provider: ProviderJobs | None = None
    job_pool: JobPool | None = None
    coordinator: Coordinator | None = None
    federation_provider: ProviderFederations | None = None
    round_driver: RoundDriver | None = None
    local_rounds: LocalRounds | None = None
    validations: Validations | None = None
    quality_worker: QualityWorker | None = None
    conformance: BackgroundWorker | None = None  # connector.dsp.conformance (conformance runs)
    _sandbox: Sandbox | None = None
    _chain: Chain | None = None
    _chain_lock: threading.Lock = field(default_factory=threading.Lock)
    _org_key: bytes | None = None

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
                    account=Account.from_key(self.org_key()),
                    registry=settings.chain_registry or None,
                    expected_chain_id=settings.chain_id,
                    confirmations=settings.chain_confirmations,
                )
                self._fund_on_dev_chain(self._chain)
            return self._chain

    @staticmethod
    def _fund_on_dev_chain(chain: Chain) -> None:
        """An account with no ether on a development chain (anvil, ``agora devchain``) asks it
        for some; elsewhere the operator funds the key (or the chain is gas-free)."""
        if chain.kind != "jsonrpc" or chain.account is None:
            return
        try:
            if int(chain.w3.eth.get_balance(chain.account.address)) == 0:
                chain.fund(chain.account.address)
        except AgoraError as exc:
            log.warning("the org key has no funds on the chain and could not be funded: %s", exc.detail)

    def registry(self) -> Registry:
        return Registry(self.chain())

    def sandbox(self) -> Sandbox:
        """The sandbox jobs run in (``AGORA_SANDBOX``), built on first use; ``check()`` on it
        says whether it works on this host."""
        if self._sandbox is None:
            from training_jobs.sandbox import make_sandbox

            settings = self.settings
            kind = "bubblewrap" if settings.sandbox == "bwrap" else settings.sandbox
            options: dict[str, Any] = {}
            if kind == "bubblewrap":  # no bind may ever contain the node's keys, chain or staged uploads
                secrets = (settings.keystore_path, settings.passphrase_path, settings.token_key_path)
                options = {"protected": [*secrets, settings.staging_dir, settings.chain_dir]}
            if kind == "kubernetes":
                if not settings.sandbox_volume_claim:
                    raise ConfigurationError(
                        "AGORA_SANDBOX=kubernetes needs AGORA_SANDBOX_VOLUME_CLAIM: the PVC holding "
                        f"the jobs directory ({settings.jobs_dir}), shared with the cluster"
                    )
                options = {
                    "namespace": settings.sandbox_namespace,
                    "volume_claim": settings.sandbox_volume_claim,
                    "volume_root": settings.jobs_dir,
                }
            self._sandbox = make_sandbox(kind, **options)
        return self._sandbox

    def org_key(self) -> bytes:
        """The organisation's private key, decrypted once per process."""
        if self._org_key is None:
            self._org_key = org_private_key(self.settings)
        return self._org_key

    def registered_participant(self, address: str) -> tuple[str, str] | None:
        """(name, endpoint) of a participant in the on-chain registry, or None (also when the
        chain cannot be reached: an unknown sender is then refused, never let in)."""
        try:
            registry = self.registry()
            record = registry.participant(address)
            if record is None or not registry.is_participant(address):
                return None
            return record.name, record.endpoint
        except AgoraError:
            return None

    def did_document(self) -> dict[str, object]:
        """This node's DID document, served at /.well-known/did.json."""
        from connector.dcp.presentation import credential_service_entry

        entry = credential_service_entry(self.identity.did, self.settings.public_url)
        return self.identity.document(chain_id=self.settings.chain_id, services=[entry])

    def resolve_did(self, did: str) -> DidDocument:
        return resolve_did(did, self.outbound, use_https=self.settings.did_web_use_https)

    def close(self) -> None:
        """Stop the workers and close the chain and database; safe to call twice."""
        if self.job_pool is not None:
            self.job_pool.stop()
        for worker in (self.round_driver, self.local_rounds):
            if worker is not None:
                worker.stop()
        if self.quality_worker is not None:
            self.quality_worker.stop()
        if self.conformance is not None:
            self.conformance.stop()
        self.notary.stop()
        if self.crawler is not None:
            self.crawler.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        with self._chain_lock:
            chain, self._chain = self._chain, None
        if chain is not None:
            chain.close()
        self.outbound.close()
        self.engine.dispose()


def outbound_policy(settings: Settings) -> OutboundPolicy:
    """The limits of every request this node makes to another party (``AGORA_OUTBOUND_*``)."""
    return OutboundPolicy(
        rules=AddressRules(
            allow_private=settings.outbound_allow_private,
            allow_loopback=settings.outbound_loopback_allowed,
        ),
        connect_timeout=settings.outbound_connect_timeout,
        read_timeout=settings.outbound_read_timeout,
        deadline=settings.outbound_deadline,
        max_response_bytes=int(settings.outbound_max_response_bytes),
        max_download_bytes=settings.max_upload_bytes,
    )


def build_runtime(settings: Settings) -> Runtime:
    """Open the database, object store and keys this node's settings name."""
    address = participant_address(settings)
    key = token_signing_key(settings)
    outbound = OutboundClient(outbound_policy(settings))
    issuer = TokenIssuer(key, settings.token_issuer, address, settings.token_ttl_max_seconds)
    verifier = TokenVerifier(
        settings.token_issuer,
        address,
        key,
        oidc_issuer=settings.oidc_issuer,
        oidc_audience=settings.oidc_audience,
        oidc_jwks_url=settings.oidc_jwks_url,
        # the identity provider the operator configured is exempt from the address rules
        fetcher=OIDCKeyFetcher(outbound.exempting(settings.oidc_issuer, settings.oidc_jwks_url))
        if settings.oidc_issuer
        else None,
    )
    engine = make_engine(settings.effective_database_url)
    store = make_object_store(settings)
    notary = Notary(
        engine,
        lambda: runtime.registry(),  # bound late: the runtime below owns the chain connection
        participant_name=settings.name,
        endpoint=settings.public_url,
        config=NotaryConfig(batch_size=settings.anchor_batch_size, max_delay=settings.anchor_max_delay),
        on_status=lambda assets, status: runtime.catalog.set_anchor_status(assets, status),
    )

    def registered() -> None:  # a new version: its anchor and its validation are both due
        notary.wake()
        if runtime.quality_worker is not None:
            runtime.quality_worker.wake()

    offerings = OfferingService(
        engine,
        store,
        address,
        import_dirs=settings.import_dirs,
        max_upload_bytes=settings.max_upload_bytes,
        on_queued=registered,
    )
    participants = ParticipantService(engine, outbound, lambda did: runtime.resolve_did(did))
    identity = NodeIdentity(  # the organisation key is read on first use (it is bound late)
        did=settings.effective_did,
        address=address,
        private_key=lambda: runtime.org_key(),
        url=settings.public_url,
        name=settings.name,
    )
    manifests = ManifestService(
        offerings,
        known_peer_urls=lambda: {p.endpoint for p in participants.peers()},
        add_peer=participants.add_peer,
        check_policy=check_policy,
        move_alias=lambda offering_id, name, version, actor: runtime.aliases.move(
            offering_id, name, version, actor
        ),
        aliases_of=lambda offering_id: runtime.aliases.current(offering_id),
    )
    runtime = Runtime(
        settings=settings,
        address=address,
        engine=engine,
        outbound=outbound,
        store=store,
        issuer=issuer,
        verifier=verifier,
        offerings=offerings,
        participants=participants,
        notary=notary,
        provenance=ProvenanceService(engine, chain_rpc_url=settings.chain_rpc_url, imported=imported_lineage),
        manifests=manifests,
        catalog=CatalogService(engine, self_address=address, public_url=settings.public_url),
        aliases=AliasService(engine, address, on_queued=notary.wake),
        identity=identity,
        peer_clients=PeerClients(outbound, identity, participants.get),
    )
    runtime.protocol = ProtocolGate(
        engine,
        identity=identity,
        resolve=runtime.resolve_did,
        registry_lookup=runtime.registered_participant,
        accept_registered=settings.accept_registered_participants,
    )
    runtime.dcp = DcpService.build(
        engine, identity=identity, private_key=runtime.org_key, outbound=outbound, resolve=runtime.resolve_did
    )
    runtime.peer_clients.claims = runtime.dcp.presenting
    if settings.dcp_sts_client_id:
        from connector.dcp.sts import SecureTokenService

        runtime.dcp.sts = SecureTokenService(
            identity=identity,
            signer=runtime.dcp.signer,
            client_id=settings.dcp_sts_client_id,
            client_secret=settings.dcp_sts_client_secret.get_secret_value(),
        )
    if settings.dcp_scopes:
        from connector.dcp.membership import Membership

        runtime.protocol.membership = Membership(
            settings.dcp_scopes,
            verifier=runtime.dcp.verifier,
            resolve=runtime.resolve_did,
            use_https=settings.did_web_use_https,
        )
    if settings.dsp_test_participant and settings.dsp_test_token.get_secret_value():
        from connector.dsp.gate import TestPeer
        from connector.dsp.identity import participant_id

        if not settings.dsp_test_callback:
            raise ConfigurationError(
                "AGORA_DSP_TEST_PARTICIPANT needs AGORA_DSP_TEST_CALLBACK (its DSP base)"
            )
        runtime.protocol.test_peer = TestPeer(
            participant=settings.dsp_test_participant,
            token=settings.dsp_test_token.get_secret_value(),
            callback=settings.dsp_test_callback.rstrip("/"),
            address=participant_id(settings.dsp_test_participant),
        )
    runtime.validations = Validations(
        engine,
        store,
        offerings,
        min_count=settings.profile_min_count,
        timeout=settings.quality_timeout,
        max_memory=int(settings.quality_max_memory),
        on_queued=notary.wake,
    )
    _connect_negotiations(runtime, token_key=key)
    connect_jobs(runtime)
    connect_federations(runtime)
    runtime.publisher = PublishService(
        offerings, runtime.aliases, store, jobs=runtime.jobs, coordinator=runtime.coordinator
    )
    test_peer = runtime.protocol.test_peer.address if runtime.protocol.test_peer else None
    runtime.crawler = CatalogCrawler(
        runtime.catalog,
        # a conformance suite's connector has no catalog to mirror (the TCK answers 404)
        peers=lambda: [p for p in participants.peers() if p.address != test_peer],
        outbound=outbound,
        clients=runtime.peer_clients,
        interval=settings.catalog_crawl_interval,
    )
    crawler = runtime.crawler
    participants.on_peer_added = lambda _peer: crawler.wake()  # its catalog now, not in a full interval
    return runtime


def _connect_negotiations(runtime: Runtime, *, token_key: object) -> None:
    """Negotiations, agreements and transfers (both sides), and the dispatcher that carries
    their messages."""
    settings = runtime.settings
    peer_clients = runtime.peer_clients

    # the dispatcher's callbacks are bound late: they name the negotiation service made below
    def verified_endpoint(address: str) -> str | None:
        participant = runtime.participants.get(address)
        return participant.endpoint if participant is not None else None

    dispatcher = Dispatcher(
        runtime.engine,
        peers=peer_clients,
        outbound=runtime.outbound,
        verified_endpoint=verified_endpoint,
        housekeeping=lambda: negotiations.expire(),
        on_given_up=lambda message, error: given_up(message.negotiation_id, error),
        on_delivered=lambda message, reply: negotiations.on_delivered(message.negotiation_id, reply),
        send_delay=settings.dsp_send_delay,
    )

    def given_up(process_id: str | None, error: str) -> None:  # a negotiation's or a transfer's
        negotiations.on_given_up(process_id, error)
        transfers.on_given_up(process_id, error)

    negotiations = NegotiationService(
        runtime.engine,
        address=runtime.address,
        public_url=settings.public_url,
        private_key=runtime.org_key,
        registry=runtime.registry,
        offering_terms=lambda offering_id, asked: runtime.offerings.terms(
            offering_id, alias=asked.get("agora:alias"), version=asked.get("agora:version")
        ),
        wake_dispatcher=dispatcher.wake,
        timeout_seconds=settings.negotiation_timeout,
        did=runtime.identity.did,
        participant=runtime.participants.get,
        catalog_offer=runtime.catalog.peer_offer,
        options=lambda role, offering_id: _merged(runtime.negotiation_options, role, offering_id),
    )
    agreements = AgreementService(
        runtime.engine,
        address=runtime.address,
        public_url=settings.public_url,
        wake_dispatcher=dispatcher.wake,
    )

    def verify(doc: dict[str, Any], sha256: str) -> str | None:
        from contracts.verify import verify_document

        return verify_document(doc, sha256, outbound=runtime.outbound)

    transfers = TransferService(
        runtime.engine,
        public_url=settings.public_url,
        token_key=token_key,
        store=runtime.store,
        agreements=agreements,
        offering_modes=lambda offering_id: list(runtime.offerings.get(offering_id).access_modes),
        provenance=runtime.provenance.document,
        plain=negotiations.plain,
        wake_dispatcher=dispatcher.wake,
        options=lambda agreement_id: _merged(runtime.transfer_options, agreement_id),
        peers=peer_clients,
    )
    downloads = DownloadService(
        runtime.engine,
        address=runtime.address,
        public_url=settings.public_url,
        peers=peer_clients,
        outbound=runtime.outbound,
        chain_rpc_url=settings.chain_rpc_url,
        store=runtime.store,
        transfers=transfers,
        verify=verify,
    )
    runtime.negotiations, runtime.agreements, runtime.transfers, runtime.downloads, runtime.dispatcher = (
        negotiations,
        agreements,
        transfers,
        downloads,
        dispatcher,
    )


def _merged(sources: list[Callable[..., dict[str, str]]], *key: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for source in sources:
        merged.update(source(*key))
    return merged
