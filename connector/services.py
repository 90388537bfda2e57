"""Participant records: this organisation and, later, its peers."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.models import Participant
from connector.schemas import ParticipantOut
from kernel import audit
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import FieldError, InvalidInput


class ParticipantService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
            return _out(row)

    def add_peer(self, url: str, actor: str) -> ParticipantOut:
        """Learn a peer from its signed identity statement at ``URL/dsp/identity``."""
        from connector.client import fetch_identity

        identity = fetch_identity(url)
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
            name = str(identity.get("name") or address)
            if row is None:
                row = Participant(address=address, name=name, endpoint=endpoint, is_self=False)
                session.add(row)
                action = "participant.add"
            else:
                row.name, row.endpoint, row.updated_at = name, endpoint, utcnow()
                action = "participant.update"
            audit.record(
                session,
                actor=actor,
                action=action,
                subject_type="participant",
                subject_id=address,
                details={"name": name, "endpoint": endpoint},
            )
            session.flush()
            return _out(row)

    def peers(self) -> list[Participant]:
        with Session(self.engine) as session:
            return list(session.exec(select(Participant).where(col(Participant.is_self).is_(False))).all())

    def get(self, address: str) -> Participant | None:
        with Session(self.engine) as session:
            return session.get(Participant, address)

    def list(self) -> list[ParticipantOut]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Participant).order_by(col(Participant.is_self).desc(), col(Participant.name))
            ).all()
        return [_out(r) for r in rows]


def _out(row: Participant) -> ParticipantOut:
    return ParticipantOut(
        address=row.address,
        name=row.name,
        endpoint=row.endpoint,
        is_self=row.is_self,
        created_at=as_utc(row.created_at),
    )
