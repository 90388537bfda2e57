"""Secure aggregation in a federation's rounds: the coordinator learns the sum, never an update.

When a federation's spec enables ``secure_aggregation``, every training round runs the SecAgg+
stages of :mod:`federation.secagg` between the coordinator and the round's providers. Each stage
is a signed push; nothing is polled:

1. **round start**: the round's config carries the parameters (:meth:`SecAggConfig.fitted` to
   the round's providers and their training rows) and the id map (provider address → id, its
   index among the round's providers in address order). Both sides derive the round context
   (federation id and round number) themselves, so no message of one round counts in another.
2. **advert**: a provider trains, checks, clips and noises its update and records the round in
   its privacy ledger exactly as in a plain round. Then it keeps the update in memory and pushes
   its public keys, signed with its organisation key over :func:`advert_statement`, together
   with its evaluation figures (:mod:`federation.secagg_local`).
3. **keys**: when every provider still in the round has advertised, or at the round's deadline,
   the coordinator pushes each one its neighbours' signed keys. The provider checks every
   signature against the id map and answers with its Shamir shares, sealed for each neighbour.
4. **shares**: when the shares are in, or the stage's time is up, the coordinator routes them.
   Each provider masks ``n·(update - global)`` and pushes the masked vector (bytes bound to the
   signed message) with its example count.
5. **unmask**: when the masked vectors are in, or the stage's time is up, the coordinator asks
   the survivors for the shares that remove the masks (each survivor's self mask, each drop-out's
   pairwise masks). The strategy then steps from the example-weighted mean
   (:meth:`~federation.strategies.Strategy.aggregate_mean`).

The key stage waits as long as the round does. Each later stage waits ``stage_seconds``
(a quarter of the round's deadline, 5 to 60 s): a provider that is silent that long is a
drop-out, and the round goes on without it while at least the threshold and
``min_participants`` remain.

What the coordinator keeps between messages is the server's :meth:`SecAggServer.snapshot`:
public keys, shares sealed for others, the masked sum and the unmask shares, but no single
update. It is stored as a JSON object in the object store, referenced from the round's config
(``secagg_state``) together with a summary of who has done what. A superseded object is deleted
once the new one is referenced. A restarted coordinator therefore resumes the round, and the
providers answer repeated stage messages with the answer they gave the first time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlmodel import Session, col, select

from federation.models import (
    CONTRIBUTION,
    DROPPED,
    LATE,
    OPEN,
    RECEIVED,
    RUNNING,
    Contribution,
    Federation,
    FederationMember,
    FederationRound,
)
from federation.secagg import SecAggFailed, SecAggRejected, from_vector
from federation.secagg.wire import participant
from federation.secagg_protocol import (
    CONFIG,
    STATE,
    check_advert,
    message_round,
    read_parameters,
    round_context,
)
from federation.secagg_state import RoundState, RoundStates
from federation.spec import FederationSpec
from federation.tensors import Weights, sha256_bytes
from kernel.db import as_utc, utcnow
from kernel.errors import AgoraError, InvalidInput, NotFound

if TYPE_CHECKING:
    from concurrent.futures import Future

    from federation.coordinator import Coordinator

log = logging.getLogger("agora.federation")
T = TypeVar("T")
RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
FIGURES = ("fit_metrics", "eval_metrics", "privacy", "train_seconds")
Submit = Callable[..., "Future[Any]"]


@dataclass
class _Push:
    """One stage message to one provider, in this process's memory (resent after a restart)."""

    busy: bool = False
    acked: bool = False
    attempts: int = 0
    next_try: float = 0.0


class SecAggRounds:
    """The coordinator's secure rounds: the stage messages in and out, the server's state kept."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._guard = threading.Lock()
        self.states = RoundStates(coordinator.engine, coordinator.store)
        self._pushes: dict[tuple[str, int, int, str], _Push] = {}

    # -- what providers push ----------------------------------------------------------------------

    def on_advert(self, sender: str, federation_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A provider's signed keys and its figures for the round (its update stays with it)."""
        number = message_round(body, "SecAggAdvert")

        def change(state: RoundState, rnd: FederationRound, session: Session) -> dict[str, Any]:
            fed, row = self._contribution(session, federation_id, number, sender)
            if row.state in CONTRIBUTION.final:
                return {"state": row.state, "reason": row.reason}
            pid = self._sender_id(state, sender, body, row)
            check_advert(
                round_context(federation_id, number), pid, body.get("advert"), body.get("signature"), sender
            )
            if pid in state.signatures:  # sent again (its answer was lost): the same keys, the same reply
                if state.signatures[pid] != body["signature"]:
                    raise SecAggRejected(f"participant {pid} already sent other keys for round {number}")
                return {"state": row.state, "reason": row.reason}
            self.c._record(row, {k: body.get(k) for k in FIGURES}, b"", fed)
            if rnd.state != OPEN or fed.state != RUNNING or state.stage != "keys":
                CONTRIBUTION.move(
                    row, LATE, f"late, recorded and not used: round {number}'s keys had gone out"
                )
            else:
                state.server.receive_keys(pid, body["advert"])
                state.signatures[pid] = str(body["signature"])
                CONTRIBUTION.note(row, "its keys arrived: its update stays with it, masked")
            session.add(row)
            return {"state": row.state, "reason": row.reason}

        reply = self.states.change(federation_id, number, change)
        self.c._wake()
        return reply

    def on_input(self, sender: str, federation_id: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        """A provider's masked update: added to the masked sum, never kept on its own."""
        number = message_round(body, "SecAggInput")

        def change(state: RoundState, rnd: FederationRound, session: Session) -> dict[str, Any]:
            fed, row = self._contribution(session, federation_id, number, sender)
            if row.state in CONTRIBUTION.final:
                return {"state": row.state, "reason": row.reason}
            pid = self._sender_id(state, sender, body, row)
            count, cap = body.get("num_examples"), state.params.config.max_examples
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= cap:
                raise InvalidInput(f"a masked update names its num_examples, an integer from 1 to {cap}")
            if state.stage in ("keys", "shares"):
                raise SecAggRejected(f"a masked update cannot come before round {number}'s shares went out")
            if rnd.state != OPEN or fed.state != RUNNING or state.stage != "inputs":
                CONTRIBUTION.move(
                    row, LATE, f"late, not used: round {number}'s masked updates had been summed"
                )
            else:
                state.server.receive_masked(pid, blob)
                state.masked[pid] = sha256_bytes(blob)
                row.num_examples, row.bytes_in = count, len(blob)
                CONTRIBUTION.move(row, RECEIVED, "its masked update arrived in time")
            session.add(row)
            return {"state": row.state, "reason": row.reason}

        reply = self.states.change(federation_id, number, change)
        self.c._wake()
        return reply

    # -- the round driver's part ------------------------------------------------------------------

    def step(
        self,
        fed: Federation,
        spec: FederationSpec,
        rnd: FederationRound,
        parts: list[Contribution],
        *,
        submit: Submit,
        fail: Callable[[str], None],
        unreachable: Callable[[Contribution], bool] = lambda part: False,
    ) -> float | None:
        """One look at an open secure round: push what is due, and close the stage once its
        answers are in or its time is up. Returns the seconds to the next look, or None once
        the unmask shares are in and the round can close. As in a plain round, providers whose
        round start cannot be delivered (``unreachable``) hold the key stage only until enough
        others have sent their keys."""
        params = read_parameters(rnd.config[CONFIG])
        pointer = rnd.config.get(STATE) or {}
        stage = str(pointer.get("stage", "keys"))
        by_id = {pid: p for p in parts if (pid := params.id_of(p.provider)) is not None}
        waiting = self._waiting(stage, pointer, by_id)
        now = utcnow()
        until = (
            as_utc(rnd.deadline_at) if stage == "keys" else as_utc(datetime.fromisoformat(pointer["until"]))
        )
        enough = len(pointer.get("advertised") or []) >= max(
            params.config.reconstruction_threshold, spec.min_participants
        )
        stuck = stage == "keys" and enough and all(unreachable(by_id[pid]) for pid in waiting)
        if waiting and now < until and not stuck:
            self._push_due(fed.id, rnd.number, stage, waiting, by_id, submit)
            return max(0.05, min(1.0, (until - now).total_seconds()))
        if stage == "unmask":
            return None
        try:
            summary = self._close_stage(fed.id, spec, rnd.number, stage)
        except (SecAggFailed, SecAggRejected) as exc:
            fail(f"round {rnd.number}: secure aggregation failed: {exc.detail}")
            self.forget(fed.id, rnd.number)
            return 0.05
        following = str(summary["stage"])
        self._push_due(fed.id, rnd.number, following, self._waiting(following, summary, by_id), by_id, submit)
        return 0.05

    @staticmethod
    def _waiting(stage: str, summary: Mapping[str, Any], by_id: Mapping[int, Contribution]) -> set[int]:
        """The ids the stage still waits for (a provider whose part ended is not waited for)."""
        live = {pid for pid, p in by_id.items() if p.state not in CONTRIBUTION.final}
        if stage == "keys":
            return live - set(summary.get("advertised") or [])
        if stage == "shares":
            return (set(summary["advertised"]) & live) - set(summary["shared"])
        if stage == "inputs":
            return (set(summary["shared"]) & live) - set(summary["inputs"])
        return set(summary.get("survivors") or []) - set(summary["unmasked"])

    def _close_stage(
        self, federation_id: str, spec: FederationSpec, number: int, stage: str
    ) -> dict[str, Any]:
        """Send the stage's outcome on (the server closes it), and drop who stayed silent."""
        done, did, silent = {
            "keys": ("advertised", "sent their keys", "sent no keys by the round's deadline"),
            "shares": ("shared", "sent their shares", "sent no shares within the stage"),
            "inputs": (
                "inputs",
                "sent their masked updates",
                "sent no masked update within the stage; the survivors' shares removed its masks",
            ),
        }[stage]

        def change(state: RoundState, rnd: FederationRound, session: Session) -> RoundState:
            if rnd.state != OPEN or state.stage != stage:
                return state
            going = set(state.summary[done])
            need = max(state.params.config.reconstruction_threshold, spec.min_participants)
            if len(going) < need:
                raise SecAggFailed(f"{len(going)} providers {did}; {need} are needed")
            if stage == "keys":
                state.server.keys_for(min(going))
            elif stage == "shares":
                state.server.shares_for(min(going))
            else:
                state.server.unmask_request()
            for part in self._parts(session, federation_id, number):
                pid = state.params.id_of(part.provider)
                if pid is not None and pid not in going and part.state not in CONTRIBUTION.final:
                    CONTRIBUTION.move(part, DROPPED, f"{silent} (secure aggregation went on without it)")
                    session.add(part)
            state.until = (utcnow() + timedelta(seconds=state.params.stage_seconds)).isoformat()
            return state

        return dict(self.states.change(federation_id, number, change).summary)

    def _push_due(
        self,
        federation_id: str,
        number: int,
        stage: str,
        waiting: set[int],
        by_id: Mapping[int, Contribution],
        submit: Submit,
    ) -> None:
        if stage == "keys":  # the adverts come as the providers finish training
            return
        now = time.monotonic()
        for pid in sorted(waiting):
            key = (federation_id, number, pid, stage)
            with self._guard:
                push = self._pushes.setdefault(key, _Push())
                if push.busy or push.acked or now < push.next_try:
                    continue
                push.busy = True
            submit(self._push, federation_id, number, pid, by_id[pid].provider, stage)

    def _push(self, federation_id: str, number: int, pid: int, address: str, stage: str) -> None:
        """The stage's message to one provider; its answer (shares, unmask shares) recorded."""
        with self._guard:
            push = self._pushes.setdefault((federation_id, number, pid, stage), _Push(busy=True))
        try:
            message = self._message(federation_id, number, pid, stage)
            with Session(self.c.engine) as session:
                member = session.exec(
                    select(FederationMember).where(
                        FederationMember.federation_id == federation_id, FederationMember.provider == address
                    )
                ).first()
            if member is None:
                return
            reply, _ = self.c.client(member.endpoint, address).post(
                f"/federations/{federation_id}/secagg/stage", message
            )
            if stage in ("shares", "unmask"):
                answer = reply.get("shares" if stage == "shares" else "unmask")
                self.states.change(
                    federation_id, number, lambda s, r, _: self._answer(s, r, pid, stage, answer)
                )
            push.acked = True
        except AgoraError as exc:
            push.attempts += 1
            push.next_try = time.monotonic() + RETRY_SECONDS[min(push.attempts, len(RETRY_SECONDS)) - 1]
            log.info(
                "federation %s round %s: %s stage, participant %s: %s",
                federation_id,
                number,
                stage,
                pid,
                exc.detail,
            )
        except Exception:  # a push thread must not die silently
            log.exception(
                "federation %s round %s: the %s push to %s failed", federation_id, number, stage, address
            )
        finally:
            push.busy = False
        self.c._wake()

    @staticmethod
    def _answer(state: RoundState, rnd: FederationRound, pid: int, stage: str, answer: object) -> None:
        if rnd.state != OPEN or state.stage != stage:
            return  # the stage closed while the answer travelled
        if stage == "shares":
            state.server.receive_shares(pid, answer)
        else:
            state.server.receive_unmask(pid, answer)

    def _message(self, federation_id: str, number: int, pid: int, stage: str) -> dict[str, Any]:
        """What the stage sends participant ``pid``: its neighbours' signed keys, the shares
        sealed for it, or the unmask request (the same message every time it is asked)."""
        state = self.states.current(federation_id, number)
        base: dict[str, Any] = {"federation": federation_id, "round": number}
        if stage == "shares":
            keys = state.server.keys_for(pid)
            signed = {p: {"advert": a, "signature": state.signatures[int(p)]} for p, a in keys.items()}
            return {**base, "type": "SecAggKeys", "keys": signed}
        if stage == "inputs":
            return {**base, "type": "SecAggShares", "shares": state.server.shares_for(pid)}
        return {**base, "type": "SecAggUnmask", **state.server.unmask_request()}

    # -- aggregation and the round's record -----------------------------------------------------

    def mean(self, federation_id: str, number: int, global_weights: Weights) -> tuple[Weights, int]:
        """The example-weighted mean of the survivors' updates, and their example count: the
        global weights plus the unmasked mean change, in float64 (the strategy casts)."""
        result = self.states.current(federation_id, number).server.aggregate()
        like = {name: np.zeros(np.shape(w), dtype=np.float64) for name, w in global_weights.items()}
        change = from_vector(result.mean(), like)
        mean = {name: np.asarray(w, dtype=np.float64) + change[name] for name, w in global_weights.items()}
        return mean, result.num_examples

    def record(
        self, federation_id: str, number: int, received: list[Contribution]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The round anchor's updates (the masked ones' hashes) and its secure-aggregation part."""
        state = self.states.current(federation_id, number)
        result = state.server.aggregate()
        names = {i: a for a, i in state.params.participants.items()}
        updates = [
            {
                "provider": p.provider,
                "sha256": state.masked[pid],
                "num_examples": p.num_examples,
                "masked": True,
            }
            for p in received
            if (pid := state.params.id_of(p.provider)) is not None and pid in state.masked
        ]
        part = {
            "enabled": True,
            "threshold": state.params.config.reconstruction_threshold,
            "participants": sorted(state.params.participants),
            "survivors": [names[i] for i in result.survivors],
            "dropouts_recovered": len(result.dropped),
            "recovered": [names[i] for i in result.dropped],
            "num_examples": result.num_examples,
            "updates": (
                "masked: the Merkle root covers the sha256 of each survivor's masked update; the "
                "coordinator never held an individual update, so it knows no update's hash"
            ),
        }
        return updates, part

    def forget(self, federation_id: str, number: int) -> None:
        """Drop what this process holds of a round that ended (its record stays)."""
        with self._guard:
            for key in [k for k in self._pushes if k[:2] == (federation_id, number)]:
                del self._pushes[key]
        self.states.forget(federation_id, number)

    # -- rows --------------------------------------------------------------------------------------

    @staticmethod
    def _parts(session: Session, federation_id: str, number: int) -> list[Contribution]:
        return list(
            session.exec(
                select(Contribution)
                .where(
                    Contribution.federation_id == federation_id,
                    Contribution.role == "coordinator",
                    Contribution.round_number == number,
                )
                .with_for_update()
            ).all()
        )

    @staticmethod
    def _contribution(
        session: Session, federation_id: str, number: int, sender: str
    ) -> tuple[Federation, Contribution]:
        fed = session.get(Federation, federation_id)
        if fed is None or fed.role != "coordinator":
            raise NotFound(f"no federation {federation_id} coordinated by this node")
        row = session.exec(
            select(Contribution)
            .where(
                Contribution.federation_id == federation_id,
                Contribution.role == "coordinator",
                Contribution.round_number == number,
                col(Contribution.provider) == sender,
            )
            .with_for_update()
        ).first()
        if row is None:
            raise InvalidInput(f"this node asked {sender} for nothing in round {number}")
        return fed, row

    @staticmethod
    def _sender_id(state: RoundState, sender: str, body: Mapping[str, Any], row: Contribution) -> int:
        if body.get("global_sha256") != row.global_in:
            raise InvalidInput("the message names other global weights than this round's")
        pid = state.params.id_of(sender)
        if pid is None:
            raise InvalidInput(f"{sender} takes no part in this round's secure aggregation")
        claimed = participant(body.get("participant"), "the sender's participant id")
        if claimed != pid:
            raise SecAggRejected(f"{sender} is participant {pid} of this round, not {claimed}")
        return pid
