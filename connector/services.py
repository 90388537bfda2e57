"""Participant records: this organisation, its peers, and registered participants it answers.

A **peer** (``trusted``) is one the operator added: its address, name and endpoint come from
its signed identity statement, read at the URL the operator gave. Participants known only
from the on-chain registry (see :mod:`connector.protocol`) are kept untrusted: never crawled,
never listed, marked on every page that names them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.models import Participant
from connector.schemas import ParticipantOut
from kernel import audit
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import FieldError, InvalidInput
from kernel.outbound import OutboundClient, OutboundRefused


class ParticipantService:
    def __init__(self, engine: Engine, outbound: OutboundClient) -> None:
        self.engine = engine
        self.outbound = outbound
        # set by the node: the crawler is woken, so a new peer's catalog shows without a wait
        self.on_peer_added: Callable[[Participant], object] | None = None

    def ensure_self(self, *, address: str, name: str, endpoint: str) -> ParticipantOut:
        """Record (or update) this node's own participant row; audited when it changes."""
        with transaction(self.engine) as session:
            row = session.get(Participant, address)
            if row is None:
                row = Participant(address=address, name=name, endpoint=endpoint, is_self=True)
                session.add(row)
                audit.record(
                    session,
                    actor="node",
                    action="participant.create",
                    subject_type="participant",
                    subject_id=address,
                    details={"name": name, "endpoint": endpoint},
                )
            elif (row.name, row.endpoint, row.is_self) != (name, endpoint, True):
                audit.record(
                    session,
                    actor="node",
                    action="participant.update",
                    subject_type="participant",
                    subject_id=address,
                    details={"name": [row.name, name], "endpoint": [row.endpoint, endpoint]},
                )
                row.name, row.endpoint, row.is_self, row.updated_at = name, endpoint, True, utcnow()
            others = session.exec(
                select(Participant).where(col(Participant.is_self), Participant.address != address)
            )
            for other in others:
                other.is_self = False
            session.flush()
            return _out(row, {})

    def add_peer(self, url: str, actor: str) -> ParticipantOut:
        """Add a peer from its signed identity statement at ``URL/dsp/identity`` (a participant
        this node knew only from the registry becomes a peer)."""
        from connector.client import fetch_identity

        try:
            identity = fetch_identity(url, self.outbound)
        except OutboundRefused as exc:
            raise InvalidInput(
                exc.detail, errors=[FieldError("url", "refused by the outbound rules")]
            ) from None
        address = str(identity["address"])
        endpoint = str(identity.get("endpoint") or url).rstrip("/")
        if endpoint != url.rstrip("/"):
            raise InvalidInput(
                f"{url} says its endpoint is {endpoint}; add the peer by that URL",
                errors=[FieldError("url", "differs from the endpoint the peer states")],
            )
        with transaction(self.engine) as session:
            row = session.get(Participant, address)
            if row is not None and row.is_self:
                raise InvalidInput("that is this node itself", errors=[FieldError("url", "this node")])
            name = str(identity.get("name") or address)[:200]
            action = "participant.add" if row is None or not row.trusted else "participant.update"
            if row is None:
                row = Participant(address=address, name=name, endpoint=endpoint, trusted=True)
                session.add(row)
            else:
                row.name, row.endpoint, row.trusted, row.updated_at = name, endpoint, True, utcnow()
            audit.record(
                session,
                actor=actor,
                action=action,
                subject_type="participant",
                subject_id=address,
                details={"name": name, "endpoint": endpoint},
            )
            session.flush()
            added = _out(row, labels(session.exec(select(Participant)).all()))
        peer = self.get(address)
        if self.on_peer_added is not None and peer is not None:
            self.on_peer_added(peer)
        return added

    def peers(self) -> list[Participant]:
        """The peers the operator added (crawled, listed, negotiated with)."""
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(Participant).where(col(Participant.is_self).is_(False), col(Participant.trusted))
                ).all()
            )

    def get(self, address: str) -> Participant | None:
        with Session(self.engine) as session:
            return session.get(Participant, address)

    def list(self) -> list[ParticipantOut]:
        """Every participant this node knows: itself, its peers, registered participants."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Participant).order_by(
                    col(Participant.is_self).desc(), col(Participant.trusted).desc(), col(Participant.name)
                )
            ).all()
        names = labels(rows)
        return [_out(r, names) for r in rows]

    def labels(self) -> dict[str, str]:
        """``address -> label`` for pages that name participants (see :func:`labels`)."""
        with Session(self.engine) as session:
            return labels(session.exec(select(Participant)).all())


def short_address(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def labels(rows: Iterable[Participant]) -> dict[str, str]:
    """How a participant is named wherever a person reads it: its name, with its short
    address when another participant (or this node) goes by the same name, and marked
    when it is not a peer, so two organisations never look alike."""
    rows = list(rows)
    shared = Counter(r.name.strip().casefold() for r in rows)
    out = {}
    for r in rows:
        notes = []
        if shared[r.name.strip().casefold()] > 1 or not (r.trusted or r.is_self):
            notes.append(short_address(r.address))
        if not (r.trusted or r.is_self):
            notes.append("not a peer")
        out[r.address] = f"{r.name} ({', '.join(notes)})" if notes else r.name
    return out


def _out(row: Participant, names: dict[str, str]) -> ParticipantOut:
    return ParticipantOut(
        address=row.address,
        name=row.name,
        label=names.get(row.address, row.name),
        endpoint=row.endpoint,
        is_self=row.is_self,
        trusted=row.trusted or row.is_self,
        created_at=as_utc(row.created_at),
    )
