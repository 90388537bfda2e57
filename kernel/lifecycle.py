"""One state machine for every long-running record: its legal moves and its transition log.

Jobs, federations, their members and rounds all carry ``state``, ``reason``, ``history``
(a list of ``{state, at, reason}``) and ``updated_at``. A :class:`Lifecycle` names which
moves are legal; :meth:`Lifecycle.move` checks one, applies it and logs it, so no domain
writes a state by hand and every record explains how it came to be where it is.
The caller holds the row (locked where two actors may race) inside its own transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kernel.db import utcnow
from kernel.errors import Conflict

REASON_MAX = 2000


class IllegalTransition(Conflict):
    type_slug = "illegal-transition"
    title = "Illegal state change"


class Stateful(Protocol):
    state: str
    reason: str
    history: list[dict[str, Any]]


def entry(state: str, reason: str) -> dict[str, Any]:
    """One line of a transition log."""
    return {"state": state, "at": utcnow().isoformat(), "reason": reason[:REASON_MAX]}


@dataclass(frozen=True)
class Lifecycle:
    """The states of one kind of record and the moves between them."""

    kind: str
    moves: Mapping[str, frozenset[str]]
    final: frozenset[str]
    initial: str | None = None  # the state a new record begins in, where the kind names one

    @classmethod
    def of(cls, kind: str, moves: Mapping[str, Iterable[str]], *, initial: str | None = None) -> Lifecycle:
        """Built from ``{state: [states it may move to]}``; states with no moves are final."""
        table = {state: frozenset(targets) for state, targets in moves.items()}
        final = frozenset(s for s, targets in table.items() if not targets)
        return cls(kind, table, final, initial)

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.moves)

    def allowed(self, current: str | None, target: str) -> bool:
        """Whether a record in ``current`` may move to ``target`` (``None``: a new record
        beginning, allowed only in the initial state)."""
        if current is None:
            return self.initial is not None and target == self.initial
        return target in self.moves.get(current, frozenset())

    def check(self, current: str | None, target: str) -> None:
        if self.allowed(current, target):
            return
        if current is None:
            raise IllegalTransition(f"a new {self.kind} cannot begin in state {target}")
        raise IllegalTransition(f"a {self.kind} in state {current} cannot move to {target}")

    def move(self, record: Stateful, target: str, reason: str) -> None:
        """Move ``record`` to ``target`` with ``reason`` (logged), or raise IllegalTransition."""
        self.check(record.state, target)
        record.state, record.reason = target, reason[:REASON_MAX]
        record.history = [*record.history, entry(target, reason)]
        if hasattr(record, "updated_at"):
            record.updated_at = utcnow()

    def note(self, record: Stateful, reason: str) -> None:
        """Log a step that keeps the state (a new reason, a round begun)."""
        record.reason = reason[:REASON_MAX]
        record.history = [*record.history, entry(record.state, reason)]
        if hasattr(record, "updated_at"):
            record.updated_at = utcnow()
