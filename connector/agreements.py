"""Enforcing agreements on the provider's side: every use is checked and logged.

A use is granted when the agreement is this node's (as provider) and the asker's, it is on
chain, it has not expired, and its policy allows the request (purpose, access mode, time,
uses so far). Counts are taken with one conditional ``UPDATE … WHERE uses < max_uses``, so
fifty parallel uses of a ten-use agreement give exactly ten grants. Each use, granted or
not, is written to the usage log with its reason; a notify duty queues a signed
notification to its target. The notification is addressed to this node itself, so its
target must be on this node's own origin: a target elsewhere is not sent, and the usage
log says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, or_, update
from sqlmodel import Session, col, select

from connector.dispatcher import queue_message
from connector.models import Agreement, UsageRecord
from connector.negotiation import agreement_out, policy_decision
from kernel.addresses import foreign_origin
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import AgoraError, Forbidden


class UseDenied(AgoraError):
    type_slug = "use-denied"
    status = 403
    title = "The agreement does not allow this use"


@dataclass(frozen=True)
class Grant:
    """A use granted: its number and the duties that came with it."""

    uses: int
    duties: list[str]


class AgreementService:
    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        public_url: str,
        wake_dispatcher: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.address = address
        self.public_url = public_url.rstrip("/")
        self._wake = wake_dispatcher

    def get(self, agreement_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = fetch(session, Agreement, agreement_id, f"no agreement {agreement_id}")
            usage = session.exec(
                select(UsageRecord)
                .where(UsageRecord.agreement_id == agreement_id)
                .order_by(col(UsageRecord.id))
            ).all()
        return {
            **agreement_out(row),
            "usage": [
                {
                    "at": as_utc(u.at).isoformat(),
                    "mode": u.mode,
                    "purpose": u.purpose,
                    "granted": u.granted,
                    "reason": u.reason,
                }
                for u in usage
            ],
        }

    def list_all(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.exec(select(Agreement).order_by(col(Agreement.created_at).desc()).limit(500)).all()
        return [agreement_out(r) for r in rows]

    def as_provider(self, agreement_id: str) -> Agreement:
        """An agreement in which this node is the provider, or :class:`NotFound`."""
        with Session(self.engine) as session:
            return fetch(
                session,
                Agreement,
                agreement_id,
                f"no agreement {agreement_id} with this node as provider",
                where=lambda a: a.role == "provider",
            )

    def use(self, agreement_id: str, *, consumer: str, mode: str) -> Grant:
        """Grant one use (or raise :class:`UseDenied` with the reason); logged either way."""
        row = self.as_provider(agreement_id)
        if row.consumer.lower() != consumer.lower():
            raise Forbidden(f"agreement {agreement_id} is not {consumer}'s")
        purpose = str(row.terms.get("purpose", ""))
        reason = self._refusal(row, mode)
        if reason is not None:
            self._log(agreement_id, mode, purpose, granted=False, reason=reason)
            raise UseDenied(reason)
        with transaction(self.engine) as session:
            taken = session.execute(
                update(Agreement)
                .where(
                    col(Agreement.id) == agreement_id,
                    or_(col(Agreement.max_uses).is_(None), col(Agreement.uses) < col(Agreement.max_uses)),
                )
                .values(uses=col(Agreement.uses) + 1)
            )
            if getattr(taken, "rowcount", 0) != 1:
                reason = f"all {row.max_uses} uses of the agreement are spent"
            else:
                fresh = session.get(Agreement, agreement_id)
                assert fresh is not None
                uses = fresh.uses
                duties = self._duties(row, mode, uses)
                notes = [f"use {uses}" + (f" of {row.max_uses}" if row.max_uses else "")]
                for duty in duties:
                    if duty["action"] != "notify":
                        continue
                    refusal = foreign_origin(
                        duty["target"], self.public_url, "the notify duty's target", "this node's own"
                    )
                    if refusal:
                        notes.append(f"notification not sent: {refusal}")
                    else:
                        queue_message(
                            session,
                            recipient=self.address,
                            url=duty["target"],
                            body={
                                "@type": "agora:UsageNotification",
                                "agreement": agreement_id,
                                "consumer": consumer,
                                "mode": mode,
                                "use": uses,
                                "at": utcnow().isoformat(),
                            },
                        )
                session.add(
                    UsageRecord(
                        agreement_id=agreement_id,
                        mode=mode,
                        purpose=purpose,
                        granted=True,
                        reason="; ".join(notes)[:2000],
                    )
                )
        if reason is not None:
            self._log(agreement_id, mode, purpose, granted=False, reason=reason)
            raise UseDenied(reason)
        self._wake()
        return Grant(uses, [d["action"] for d in duties])

    def give_back(self, agreement_id: str, *, mode: str, reason: str) -> bool:
        """Return one use whose purpose failed on this node's side (a compute job that failed
        on the provider's data or node), with one conditional ``UPDATE … WHERE uses > 0``;
        the usage log records it with the reason. False when no use was taken to give back."""
        row = self.as_provider(agreement_id)
        with transaction(self.engine) as session:
            given = session.execute(
                update(Agreement)
                .where(col(Agreement.id) == agreement_id, col(Agreement.uses) > 0)
                .values(uses=col(Agreement.uses) - 1)
            )
            if getattr(given, "rowcount", 0) != 1:
                return False
            fresh = session.get(Agreement, agreement_id)
            assert fresh is not None
            session.add(
                UsageRecord(
                    agreement_id=agreement_id,
                    mode=mode,
                    purpose=str(row.terms.get("purpose", ""))[:200],
                    granted=False,
                    reason=f"use given back, {fresh.uses} now taken: {reason}"[:2000],
                )
            )
        return True

    def policy_allows(self, row: Agreement, mode: str) -> tuple[bool, str]:
        """Whether the agreed policy would also permit ``mode`` (e.g. may a compute job's
        native model leave like a download?), without taking a use."""
        allowed, why, _ = policy_decision(
            row.terms.get("policy"),
            participant=row.consumer,
            purpose=str(row.terms.get("purpose")),
            mode=mode,
            agreed_at=as_utc(row.created_at),
            uses=row.uses,
            credentials=row.terms.get("credentials"),
        )
        return allowed, why

    def still_holds(self, agreement_id: str, mode: str) -> str | None:
        """Why the agreement no longer allows ``mode`` (final, in force, the policy), without
        taking a use; None when it does."""
        return self._refusal(self.as_provider(agreement_id), mode)

    def _refusal(self, row: Agreement, mode: str) -> str | None:
        if not (row.finalized or row.tx_hash):
            return "the agreement is not final yet (the negotiation is not FINALIZED)"
        if row.valid_until and time.time() > row.valid_until:
            ends = datetime.fromtimestamp(row.valid_until, UTC).isoformat()
            return f"the agreement expired at {ends}"
        if mode != row.terms.get("accessMode"):
            return f"the agreement covers {row.terms.get('accessMode')}, not {mode}"
        allowed, why = self.policy_allows(row, mode)
        return None if allowed else f"the policy denies it: {why}"

    def _duties(self, row: Agreement, mode: str, uses: int) -> list[dict[str, Any]]:
        _, _, duties = policy_decision(
            row.terms.get("policy"),
            participant=row.consumer,
            purpose=str(row.terms.get("purpose")),
            mode=mode,
            agreed_at=as_utc(row.created_at),
            uses=max(uses - 1, 0),
            credentials=row.terms.get("credentials"),
        )
        out = []
        for duty in duties:
            if duty["action"] == "notify":
                duty = {**duty, "target": duty.get("target") or f"{self.public_url}/dsp/notifications"}
            out.append(duty)
        return out

    def _log(self, agreement_id: str, mode: str, purpose: str, *, granted: bool, reason: str) -> None:
        with transaction(self.engine) as session:
            session.add(
                UsageRecord(
                    agreement_id=agreement_id, mode=mode, purpose=purpose, granted=granted, reason=reason
                )
            )
