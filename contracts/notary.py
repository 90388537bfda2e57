"""The notary: drains the notarization outbox onto the chain.

Registration never waits for the chain. A record is queued (:func:`enqueue`) in the same
database transaction as the thing it notarizes; the notary worker then

1. takes up to ``batch_size`` pending rows once there are that many or the oldest has
   waited ``max_delay`` seconds,
2. fixes their Merkle root and each row's inclusion proof (status ``SUBMITTED``) *before*
   sending, so a crash or an unreachable chain resends exactly the same root,
3. sends one ``anchorBatch`` transaction and marks the rows ``ANCHORED`` with the
   transaction hash and block.

The registry refuses a root it already holds (``BatchExists``); the notary takes that as
proof the batch is on chain, so a resend never anchors anything twice. Rows with parents
(lineage) are anchored one by one with ``anchor`` and are equally idempotent
(``AlreadyAnchored``). While the chain is down rows stay where they are and the worker
retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from contracts.errors import ChainReverted, ChainUnavailable
from contracts.merkle import MerkleTree, leaf
from contracts.models import ANCHORED, ATTESTED, FAILED, PENDING, SUBMITTED, Notarization
from contracts.registry import Registry, asset_id, kind_code
from kernel.canonical import canonical_hash
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import AgoraError
from kernel.worker import BackgroundWorker

log = logging.getLogger("agora.notary")


def _hex32(value: bytes) -> str:
    return "0x" + value.hex()


def enqueue(
    session: Session,
    *,
    kind: str,
    content_hash: str,
    owner: str,
    metadata: dict[str, Any],
    parents: list[str] | None = None,
    result: dict[str, Any] | None = None,
) -> Notarization:
    """Queue an asset for notarization in the caller's transaction; idempotent per asset id.

    ``metadata`` is what the anchor's metadata hash covers (canonical JSON, sha256). Assets
    with parents are anchored directly, so the lineage is on chain; the others go in batches.
    ``result`` (a verification report) is attested once after the anchor: the registry
    records its canonical sha256 as the asset's result hash.
    """
    aid = _hex32(asset_id(owner, kind, bytes.fromhex(content_hash)))
    existing = session.exec(select(Notarization).where(Notarization.asset_id == aid)).first()
    if existing is not None:
        return existing
    row = Notarization(
        asset_id=aid,
        kind=kind,
        content_hash=content_hash,
        metadata_hash=canonical_hash(metadata),
        metadata_doc=metadata,
        owner=owner,
        parents=list(parents or []),
        mode="direct" if parents or result else "batch",
        result_doc=result,
        result_hash=canonical_hash(result) if result is not None else None,
        attestation=PENDING if result is not None else None,
    )
    session.add(row)
    session.flush()
    return row


@dataclass
class NotaryConfig:
    batch_size: int = 100
    max_delay: float = 2.0
    poll_interval: float = 0.5
    max_backoff: float = 30.0


class Notary(BackgroundWorker):
    """Anchors queued assets; ``run_once`` is one pass, ``start`` runs passes in a thread."""

    def __init__(
        self,
        engine: Engine,
        registry_factory: Callable[[], Registry],
        *,
        participant_name: str,
        endpoint: str,
        config: NotaryConfig | None = None,
        on_status: Callable[[list[tuple[str, str]], str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_status = on_status
        self._registry_factory = registry_factory
        self._registry: Registry | None = None
        self.participant_name = participant_name
        self.endpoint = endpoint
        self.config = config or NotaryConfig()
        self._registered = False
        self.last_error: str = ""
        self._backoff = self.config.poll_interval
        super().__init__(self.config.poll_interval)

    # The worker -----------------------------------------------------------------------

    name = "agora-notary"

    def tick(self) -> float:
        """One pass; on an unreachable chain, back off (doubling up to ``max_backoff``)."""
        try:
            self.run_once()
        except ChainUnavailable as exc:
            self.last_error = exc.detail
            self._registry = None  # reconnect on the next pass
            self._backoff = min(self._backoff * 2, self.config.max_backoff)
            log.warning("chain unavailable, retrying in %.1fs: %s", self._backoff, exc.detail)
            return self._backoff
        except Exception as exc:  # shown in /health; the worker keeps going
            self.last_error = str(exc)
            self._backoff = min(self._backoff * 2, self.config.max_backoff)
            log.exception("notary pass failed")
            return self._backoff
        self.last_error = ""
        self._backoff = self.config.poll_interval
        return self._backoff

    # One pass -------------------------------------------------------------------------

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._registry_factory()
            self._registered = False
        return self._registry

    def ensure_registered(self) -> None:
        """This organisation in the registry's participant list, with its current endpoint."""
        if self._registered:
            return
        registry = self.registry()
        me = registry.participant(registry.chain.sender)
        if me is None or (me.name, me.endpoint) != (self.participant_name, self.endpoint):
            registry.register_participant(self.participant_name, self.endpoint)
            log.info("registered %s on chain %s", registry.chain.sender, registry.chain.chain_id)
        self._registered = True

    def pending_count(self) -> int:
        with Session(self.engine) as session:
            query = (
                sa_select(func.count())
                .select_from(Notarization)
                .where(col(Notarization.status).in_([PENDING, SUBMITTED]))
            )
            return int(session.execute(query).scalar_one())

    def run_once(self, *, force: bool = False) -> int:
        """Anchor what is due; returns how many rows were anchored. ``force`` ignores max_delay."""
        anchored = self._resend_submitted()
        anchored += self._anchor_direct()
        self._attest()
        while True:
            try:
                batch = self._take_batch(force)
            except _Raced:
                break  # another worker (another replica on PostgreSQL) took these rows
            if not batch:
                break
            anchored += self._anchor_batch(batch)
        return anchored

    def _rows(self, *where: Any, limit: int | None = None) -> list[Notarization]:
        with Session(self.engine) as session:
            query = select(Notarization).where(*where).order_by(col(Notarization.id))
            if limit:
                query = query.limit(limit)
            return list(session.exec(query).all())

    def _take_batch(self, force: bool) -> list[Notarization]:
        rows = self._rows(
            Notarization.status == PENDING, Notarization.mode == "batch", limit=self.config.batch_size
        )
        if not rows:
            return []
        oldest = as_utc(rows[0].created_at)
        due = force or len(rows) >= self.config.batch_size
        due = due or utcnow() - oldest >= timedelta(seconds=self.config.max_delay)
        if not due:
            return []
        self.ensure_registered()
        registry = self.registry()
        leaves = {row.id: self._leaf(row) for row in rows}
        tree = MerkleTree.build(list(leaves.values()))
        root = _hex32(tree.root)
        with transaction(self.engine) as session:
            for row in rows:
                fresh = session.get(Notarization, row.id, with_for_update=True)
                if fresh is None or fresh.status != PENDING:
                    raise _Raced()
                fresh.status = SUBMITTED
                fresh.batch_root = root
                fresh.batch_size = len(rows)
                fresh.proof = [_hex32(p) for p in tree.proofs[leaves[row.id]]]
                fresh.chain_id = registry.chain.chain_id
                fresh.registry_address = registry.address
        return self._rows(Notarization.batch_root == root)

    @staticmethod
    def _leaf(row: Notarization) -> bytes:
        return leaf(
            row.owner, kind_code(row.kind), bytes.fromhex(row.content_hash), bytes.fromhex(row.metadata_hash)
        )

    def _resend_submitted(self) -> int:
        rows = self._rows(Notarization.status == SUBMITTED, Notarization.mode == "batch")
        roots: dict[str, list[Notarization]] = {}
        for row in rows:
            roots.setdefault(row.batch_root or "", []).append(row)
        return sum(self._anchor_batch(group) for group in roots.values())

    def _anchor_batch(self, rows: list[Notarization]) -> int:
        root_hex = rows[0].batch_root
        assert root_hex is not None
        root = bytes.fromhex(root_hex[2:])
        self.ensure_registered()
        registry = self.registry()
        tx_hash: str | None
        block: int | None
        try:
            result = registry.anchor_batch(root, len(rows))
            tx_hash, block = result.tx_hash, result.block_number
        except ChainReverted as exc:
            batch = registry.get_batch(root)
            if batch is None or batch.owner.lower() != registry.chain.sender.lower():
                self._fail(rows, exc)
                return 0
            # already on chain (a resend, or another worker mined it first): anchored, once
            tx_hash, block = self._find_batch_tx(registry, root)
        self._mark_anchored(rows, tx_hash, block, registry)
        log.info("anchored a batch of %d under root %s in block %s", len(rows), root_hex, block)
        return len(rows)

    def _anchor_direct(self) -> int:
        rows = self._rows(col(Notarization.status).in_([PENDING, SUBMITTED]), Notarization.mode == "direct")
        if not rows:
            return 0
        self.ensure_registered()
        registry = self.registry()
        done = 0
        for row in rows:
            parents = [bytes.fromhex(p.removeprefix("0x")) for p in row.parents]
            tx_hash: str | None
            block: int | None
            try:
                _, result = registry.anchor(
                    row.kind, bytes.fromhex(row.content_hash), bytes.fromhex(row.metadata_hash), parents
                )
                tx_hash, block = result.tx_hash, result.block_number
            except ChainReverted as exc:
                if exc.reason != "AlreadyAnchored":
                    self._fail([row], exc)
                    continue
                tx_hash, block = self._find_anchor_tx(registry, bytes.fromhex(row.asset_id[2:]))
            self._mark_anchored([row], tx_hash, block, registry)
            done += 1
        return done

    def _attest(self) -> int:
        """Attest the result hash of anchored assets that carry one; a resend finding it
        already attested (``AlreadyAttested``) takes that as done."""
        rows = self._rows(Notarization.status == ANCHORED, Notarization.attestation == PENDING)
        done = 0
        for row in rows:
            assert row.result_hash is not None
            registry = self.registry()
            id_ = bytes.fromhex(row.asset_id[2:])
            tx_hash: str | None = None
            outcome, error = ATTESTED, ""
            try:
                tx_hash = registry.attest_result(id_, bytes.fromhex(row.result_hash)).tx_hash
            except ChainReverted as exc:
                record = registry.get_anchor(id_)
                if exc.reason != "AlreadyAttested" or record is None or record.result_hash is None:
                    outcome, error = FAILED, exc.detail
                elif record.result_hash.hex() != row.result_hash:
                    outcome, error = FAILED, "another result hash is attested for this asset"
            with transaction(self.engine) as session:
                fresh = session.get(Notarization, row.id)
                if fresh is not None:
                    fresh.attestation, fresh.attest_tx = outcome, tx_hash
                    fresh.last_error = error
            if outcome == FAILED:
                log.error("attesting the result of %s failed: %s", row.asset_id, error)
            done += outcome == ATTESTED
        return done

    def _mark_anchored(
        self, rows: list[Notarization], tx_hash: str | None, block: int | None, registry: Registry
    ) -> None:
        with transaction(self.engine) as session:
            for row in rows:
                fresh = session.get(Notarization, row.id)
                if fresh is None:
                    continue
                fresh.status = ANCHORED
                fresh.tx_hash = tx_hash
                fresh.block_number = block
                fresh.chain_id = registry.chain.chain_id
                fresh.registry_address = registry.address
                fresh.anchored_at = utcnow()
                fresh.attempts += 1
                fresh.last_error = ""
        self._announce(rows, ANCHORED)

    def _fail(self, rows: list[Notarization], exc: AgoraError) -> None:
        log.error("the registry refused %d notarization(s): %s", len(rows), exc.detail)
        with transaction(self.engine) as session:
            for row in rows:
                fresh = session.get(Notarization, row.id)
                if fresh is not None:
                    fresh.status = FAILED
                    fresh.attempts += 1
                    fresh.last_error = exc.detail
        self._announce(rows, FAILED)

    def _announce(self, rows: list[Notarization], status: str) -> None:
        """Tell whoever shows anchor statuses (the catalog) that these assets moved on."""
        if self._on_status is not None:
            self._on_status([(row.owner, row.content_hash) for row in rows], status)

    @staticmethod
    def _find_batch_tx(registry: Registry, root: bytes) -> tuple[str | None, int | None]:
        """The transaction of a batch already on chain (after a resend found it there)."""
        logs = registry.contract.events.BatchAnchored().get_logs(
            from_block=0, argument_filters={"root": root}
        )
        if not logs:
            return None, None
        entry = logs[0]
        return "0x" + bytes(entry["transactionHash"]).hex().removeprefix("0x"), int(entry["blockNumber"])

    @staticmethod
    def _find_anchor_tx(registry: Registry, id_: bytes) -> tuple[str | None, int | None]:
        logs = registry.contract.events.AssetAnchored().get_logs(from_block=0, argument_filters={"id": id_})
        if not logs:
            return None, None
        entry = logs[0]
        return "0x" + bytes(entry["transactionHash"]).hex().removeprefix("0x"), int(entry["blockNumber"])


class _Raced(Exception):
    """Another worker took these rows first (several replicas on PostgreSQL)."""
