"""Provenance documents: everything needed to check an asset against the chain alone.

A document (served at ``/api/v1/provenance/{id}`` and written next to downloads as
``FILE.provenance.json``) names the asset (id, kind, sha256, owner, the metadata its
metadata hash covers), where it is anchored (chain id, registry, batch root and inclusion
proof, or a direct anchor, with transaction and block) and, recursively, its parents. A
verifier recomputes every hash and asks the registry; it trusts nothing in the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from contracts.models import Notarization
from kernel.errors import NotFound
from kernel.hashing import is_digest, parse_digest

FORMAT = "agora-provenance/1"
MAX_DEPTH = 16
# (session, child, parent id) → the document of a parent another party notarized, as this node
# holds it (a job's lineage on the consumer's node), or None
ImportedParent = Callable[[Session, Notarization, str], dict[str, Any] | None]


class ProvenanceService:
    def __init__(self, engine: Engine, *, chain_rpc_url: str, imported: ImportedParent | None = None) -> None:
        self.engine = engine
        self.chain_rpc_url = chain_rpc_url
        self._imported = imported

    def document(self, key: str) -> dict[str, Any]:
        """The provenance document of an asset id (``0x`` + 64 hex) or a sha256 digest."""
        with Session(self.engine) as session:
            row = self._find(session, key)
            if row is None:
                raise NotFound(f"no notarization of {key} on this node")
            return self._document(session, row, depth=0)

    @staticmethod
    def _find(session: Session, key: str) -> Notarization | None:
        text = key.strip().lower()
        if text.startswith("0x") and len(text) == 66:
            return session.exec(select(Notarization).where(Notarization.asset_id == text)).first()
        if is_digest(text):
            return session.exec(
                select(Notarization).where(Notarization.content_hash == parse_digest(text))
            ).first()
        return None

    def _document(self, session: Session, row: Notarization, depth: int) -> dict[str, Any]:
        parents: list[dict[str, Any]] = []
        if depth < MAX_DEPTH:
            for parent_id in row.parents:
                parent = self._find(session, parent_id)
                held = self._imported(session, row, parent_id) if parent is None and self._imported else None
                parents.append(
                    self._document(session, parent, depth + 1)
                    if parent is not None
                    else held
                    or {"format": FORMAT, "asset": {"id": parent_id}, "anchor": {"status": "UNKNOWN"}}
                )
        return {
            "format": FORMAT,
            "asset": {
                "id": row.asset_id,
                "kind": row.kind,
                "sha256": row.content_hash,
                "owner": row.owner,
                "metadata_hash": row.metadata_hash,
                "metadata": row.metadata_doc,
            },
            "chain": {
                "chain_id": row.chain_id,
                "registry": row.registry_address,
                "rpc_url": self.chain_rpc_url,
            },
            "anchor": {
                "status": row.status,
                "mode": row.mode,
                "batch_root": row.batch_root,
                "batch_size": row.batch_size,
                "proof": row.proof,
                "tx_hash": row.tx_hash,
                "block_number": row.block_number,
            },
            "parents": parents,
            **(
                {
                    "attestation": {
                        "status": row.attestation,
                        "result_hash": row.result_hash,
                        "report": row.result_doc,
                        "tx_hash": row.attest_tx,
                    }
                }
                if row.result_hash
                else {}
            ),
        }
