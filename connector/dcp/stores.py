"""The holder's credential store and the operator's list of trusted issuers (database).

Both are small and read on every presentation, so they stay plain queries: the store answers
"what do I hold of these types or ids, still valid", the trust list "may this DID issue this
type".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from connector.dcp.credentials import TYPE_NAME, Credential
from connector.dcp.models import HeldCredential, TrustedIssuer
from kernel.audit import record
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import InvalidInput, NotFound


class HolderStore:
    """The credentials issued to this node."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, credential: Credential, *, actor: str, source: str) -> HeldCredential:
        """Keep ``credential`` (replacing one of the same id)."""
        with transaction(self.engine) as session:
            row = session.get(HeldCredential, credential.id)
            if row is not None:
                session.delete(row)
                session.flush()
            row = HeldCredential(
                id=credential.id,
                type=credential.type,
                issuer=credential.issuer,
                subject=credential.subject,
                raw=credential.raw,
                expires_at=credential.expires,
                received_at=utcnow(),
            )
            session.add(row)
            record(
                session,
                actor=actor,
                action="credential.store",
                subject_type="credential",
                subject_id=credential.id,
                details={"type": credential.type, "issuer": credential.issuer, "source": source},
            )
            session.flush()
            session.expunge(row)
        return row

    def remove(self, credential_id: str, *, actor: str) -> None:
        with transaction(self.engine) as session:
            row = session.get(HeldCredential, credential_id)
            if row is None:
                raise NotFound(f"this node holds no credential {credential_id[:200]}")
            session.delete(row)
            record(
                session,
                actor=actor,
                action="credential.remove",
                subject_type="credential",
                subject_id=credential_id,
                details={"type": row.type, "issuer": row.issuer},
            )

    def all(self) -> list[HeldCredential]:
        with Session(self.engine) as session:
            return list(session.exec(select(HeldCredential).order_by(col(HeldCredential.received_at))).all())

    def matching(
        self, *, subject: str, types: Iterable[str], ids: Iterable[str], now: datetime | None = None
    ) -> list[HeldCredential]:
        """The still valid credentials about ``subject`` of one of ``types`` or ``ids``."""
        types, ids = sorted(set(types)), sorted(set(ids))
        if not types and not ids:
            return []
        at = now or utcnow()
        with Session(self.engine) as session:
            rows = session.exec(
                select(HeldCredential)
                .where(HeldCredential.subject == subject)
                .where(or_(col(HeldCredential.type).in_(types), col(HeldCredential.id).in_(ids)))
                .order_by(col(HeldCredential.received_at))
            ).all()
        return [r for r in rows if r.expires_at is None or as_utc(r.expires_at) > at]


def view(row: HeldCredential) -> dict[str, Any]:
    """A held credential as the management API lists it (the JWT too: it is the node's own)."""
    return {
        "id": row.id,
        "type": row.type,
        "issuer": row.issuer,
        "subject": row.subject,
        "expires_at": as_utc(row.expires_at).isoformat() if row.expires_at else None,
        "received_at": as_utc(row.received_at).isoformat(),
        "jwt": row.raw,
    }


class TrustedIssuers:
    """Which DIDs this node accepts credentials from, per type (empty type: any)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, did: str, credential_type: str = "", *, actor: str) -> TrustedIssuer:
        _check(did, credential_type)
        with transaction(self.engine) as session:
            row = session.exec(
                select(TrustedIssuer)
                .where(TrustedIssuer.did == did)
                .where(TrustedIssuer.credential_type == credential_type)
            ).first()
            if row is None:
                row = TrustedIssuer(did=did, credential_type=credential_type)
                session.add(row)
                record(
                    session,
                    actor=actor,
                    action="credential.trust",
                    subject_type="issuer",
                    subject_id=did,
                    details={"type": credential_type or "*"},
                )
            session.flush()
            session.expunge(row)
        return row

    def remove(self, did: str, credential_type: str = "", *, actor: str) -> None:
        with transaction(self.engine) as session:
            row = session.exec(
                select(TrustedIssuer)
                .where(TrustedIssuer.did == did)
                .where(TrustedIssuer.credential_type == credential_type)
            ).first()
            if row is None:
                what = f"for {credential_type}" if credential_type else "for every type"
                raise NotFound(f"{did[:200]} is not a trusted issuer {what}")
            session.delete(row)
            record(
                session,
                actor=actor,
                action="credential.distrust",
                subject_type="issuer",
                subject_id=did,
                details={"type": credential_type or "*"},
            )

    def entries(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.exec(select(TrustedIssuer).order_by(col(TrustedIssuer.did))).all()
        return [{"did": r.did, "type": r.credential_type or None} for r in rows]

    def knows(self, did: str) -> bool:
        """Is ``did`` trusted for any type (may it write to this node's credential store)?"""
        with Session(self.engine) as session:
            return session.exec(select(TrustedIssuer.id).where(TrustedIssuer.did == did)).first() is not None

    def allows(self, did: str, credential_type: str) -> bool:
        with Session(self.engine) as session:
            found = session.exec(
                select(TrustedIssuer.id)
                .where(TrustedIssuer.did == did)
                .where(col(TrustedIssuer.credential_type).in_(["", credential_type]))
            ).first()
        return found is not None


def _check(did: str, credential_type: str) -> None:
    if not did.startswith("did:") or len(did) > 500 or any(c.isspace() for c in did):
        raise InvalidInput(f"a trusted issuer is named by its DID, not {did[:100]!r}")
    if credential_type and not TYPE_NAME.match(credential_type):
        raise InvalidInput(f"{credential_type[:100]!r} is not a credential type name")
