"""A provider's securely aggregated rounds: its update leaves only masked.

For a round whose start carries secure-aggregation parameters, :mod:`federation.local` trains
and checks the update, clips and noises it and records the round in the privacy ledger as it
would for a plain round. Then, instead of pushing the weights, it hands the update to
:meth:`SecAggLocal.begin`, which keeps it in memory with a fresh :class:`SecAggClient`, and
from then on the round is a sequence of stage messages (:mod:`federation.secagg_rounds` tells
them in order):

* this node pushes its **advert**: its public keys for the round, signed with its organisation
  key, with its evaluation figures;
* the coordinator pushes the **keys** of its neighbours. Each must be signed by the address the
  round's id map names for it, or the whole message is refused (a coordinator cannot slip in
  keys of its own under another provider's id). The answer is the shares sealed for them;
* the coordinator pushes the **shares** sealed for this node. It masks ``n·(update - global)``,
  drops the plain vector from memory and pushes the masked one as bytes bound to a signed message;
* the coordinator pushes the **unmask** request; the answer gives, per participant, a share of
  one secret, never both. The client refuses a request that names this node as dropped, lists a
  participant both ways, or names too few survivors.

Each stage is answered once: a repeated message (a coordinator that restarted, a lost reply) gets
the same answer again, and a different message for a stage already answered is refused, so no
sequence of requests obtains more than one answer per stage. The client's secrets, the update and
the answers live in this process only, never in the database or the object store: a node that
restarts mid-round has nothing left to mask with and drops out of that round, which is what the
others' shares recover from. A session ends with its round's next start, the federation's end, or
its time (the round's deadline plus three stages and a minute).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from connector.dsp.client import PeerClient
from federation.models import (
    CONTRIBUTION,
    DROPPED,
    FAILED,
    LATE,
    RECEIVED,
    SENDING,
    STOPPED,
    Contribution,
    Federation,
)
from federation.secagg import SecAggClient, SecAggRejected
from federation.secagg.encoding import F64
from federation.secagg.wire import by_participant, fields
from federation.secagg_protocol import (
    CONFIG,
    check_advert,
    is_secure,
    read_parameters,
    round_context,
    sign_advert,
    update_vector,
)
from federation.spec import WireSpec
from federation.tensors import Weights
from kernel.canonical import canonical_hash
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import AgoraError, Conflict, InvalidInput, NotFound

log = logging.getLogger("agora.federation")
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
STAGE_MESSAGES = ("SecAggKeys", "SecAggShares", "SecAggUnmask")


def check_start(spec: WireSpec, config: Mapping[str, Any], evaluate_only: bool) -> None:
    """Refuse a round start whose secure aggregation is not what the invitation agreed.

    A federation accepted with secure aggregation never sends an update in the clear, so a
    training round without its parameters is refused; parameters must match the spec's."""
    agreed, secure = spec.secure_aggregation, is_secure(config)
    if evaluate_only or not (agreed.enabled or secure):
        if secure:
            raise InvalidInput("an evaluation round has nothing to aggregate securely")
        return
    if not secure:
        raise InvalidInput(
            "this federation was agreed with secure aggregation: a round without it is refused "
            "(the update would leave this node unmasked)"
        )
    if not agreed.enabled:
        raise InvalidInput("this federation was agreed without secure aggregation")
    params = read_parameters(config[CONFIG])
    given = params.config
    wanted = agreed.reconstruction_threshold
    if (
        given.clipping_range != agreed.clipping_range
        or given.quantization_range != agreed.quantization_range
        or (wanted is not None and given.reconstruction_threshold != wanted)
    ):
        raise InvalidInput("the round's secure-aggregation parameters differ from the federation's spec")
    if len(params.participants) < max(2, spec.min_participants):
        raise InvalidInput(
            f"the round's secure aggregation names {len(params.participants)} participants; the "
            f"federation needs at least {max(2, spec.min_participants)}"
        )


@dataclass
class _Session:
    """One round's secure aggregation on this provider, in memory only."""

    federation_id: str
    number: int
    global_sha256: str  # the weights the update was trained from
    me: int
    participants: dict[str, int]
    context: bytes
    client: SecAggClient
    vector: F64 | None  # the update minus the global weights, until it is masked
    examples: int
    expires: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # kind -> (digest, reply)
    outbox: tuple[str, dict[str, Any], bytes | None] | None = None  # (path, body, bytes) to push
    attempts: int = 0
    next_try: float = 0.0


class SecAggLocal:
    """This provider's secure-aggregation sessions: one per round it trains in."""

    def __init__(self, engine: Engine, wake: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self._wake = wake
        self._guard = threading.Lock()
        self._sessions: dict[tuple[str, int], _Session] = {}

    # -- after local training (the worker) --------------------------------------------------------

    def begin(
        self,
        fed: Federation,
        row: Contribution,
        *,
        address: str,
        private_key: bytes,
        global_weights: Weights,
        update: Weights,
        num_examples: int,
    ) -> bool:
        """Keep the checked update and queue the signed advert; False (the row FAILED with the
        reason) when this node cannot take part as the round asks."""
        try:
            params = read_parameters(row.config[CONFIG])
            me = params.id_of(address)
            if me is None:
                raise SecAggRejected("the round's secure aggregation does not name this node")
            context = round_context(fed.id, row.round_number)
            client = SecAggClient(params.config, me, params.participants.values(), context)
            vector = update_vector(global_weights, update, list(fed.layout))
            if vector.size != params.vector_length:
                raise SecAggRejected(
                    f"the round masks {params.vector_length} values, the model has {vector.size}"
                )
            advert = client.advertise()
        except AgoraError as exc:
            self._end(row.id, FAILED, f"this node cannot take part in the secure aggregation: {exc.detail}")
            return False
        remaining = max(0.0, (self._deadline(row) - utcnow()).total_seconds())
        session = _Session(
            fed.id,
            row.round_number,
            row.global_in,
            me,
            params.participants,
            context,
            client,
            vector,
            num_examples,
            time.monotonic() + remaining + 3 * params.stage_seconds + 60,
        )
        body = {
            "type": "SecAggAdvert",
            "federation": fed.id,
            "round": row.round_number,
            "global_sha256": row.global_in,
            "participant": me,
            "advert": advert,
            "signature": sign_advert(private_key, context, me, advert),
            "fit_metrics": row.fit_metrics,
            "eval_metrics": row.eval_metrics,
            "privacy": row.privacy,
            "train_seconds": round(row.train_seconds, 3),
        }
        session.outbox = (f"/federations/{fed.id}/secagg", body, None)
        with self._guard:
            for key in [k for k in self._sessions if k[0] == fed.id and k[1] <= row.round_number]:
                del self._sessions[key]  # a newer round started: the older ones are over
            self._sessions[(fed.id, row.round_number)] = session
        return True

    def push(self, fed: Federation, row: Contribution, client: PeerClient) -> bool:
        """Send what the round has to send now (the advert, the masked update), if anything.
        True when the contribution failed and the coordinator should be told why."""
        if row.state != SENDING:
            return row.state == FAILED
        session = self._live(fed.id, row.round_number)
        if session is None:
            self._end(
                row.id,
                FAILED,
                "this node no longer holds the round's secure-aggregation secrets (it restarted, or "
                "the round outlasted them): it drops out of the round",
            )
            return True
        with session.lock:
            out = session.outbox
            if out is None or time.monotonic() < session.next_try:
                return False
        path, body, blob = out
        try:
            reply = client.post_blob(path, body, blob) if blob is not None else client.post(path, body)[0]
        except AgoraError as exc:
            with session.lock:
                session.attempts += 1
                delay = RETRY_SECONDS[min(session.attempts, len(RETRY_SECONDS)) - 1]
                session.next_try = time.monotonic() + delay
            log.info(
                "federation %s round %s: %s not delivered: %s",
                fed.id,
                row.round_number,
                body["type"],
                exc.detail,
            )
            return False
        with session.lock:
            if session.outbox is out:
                session.outbox, session.attempts = None, 0
        state, reason = str(reply.get("state") or ""), str(reply.get("reason") or "")[:500]
        if state in (LATE, FAILED, DROPPED, STOPPED):
            self._end(row.id, LATE if state == LATE else FAILED, f"the coordinator says: {reason or state}")
            self.forget(fed.id, row.round_number)
        elif body["type"] == "SecAggInput" and state == RECEIVED:
            self._end(row.id, RECEIVED, "the coordinator has the masked update")
        return False

    # -- what the coordinator pushes (the protocol route) -------------------------------------------

    def on_stage(
        self, sender: str, recipient: str, federation_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Answer one stage message of the coordinator, once (the same answer if it comes again)."""
        kind = body.get("type")
        if kind not in STAGE_MESSAGES:
            raise InvalidInput(f"a stage message is one of {', '.join(STAGE_MESSAGES)}")
        number = body.get("round")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidInput("a stage message names its round (1, 2, …)")
        with Session(self.engine) as db:
            fed = db.get(Federation, federation_id)
        if fed is None or fed.role != "provider" or fed.coordinator.lower() != sender.lower():
            raise NotFound(f"no federation {federation_id} with this node as provider")
        session = self._live(federation_id, number)
        if session is None or session.participants.get(recipient) != session.me:
            raise Conflict(f"no securely aggregated round {number} of this federation is under way here")
        digest = canonical_hash(body)
        with session.lock:
            answered = session.answers.get(str(kind))
            if answered is not None:
                if answered[0] != digest:
                    raise SecAggRejected(
                        f"{kind} for round {number} was answered already; another is refused"
                    )
                return answered[1]
            if kind == "SecAggKeys":
                reply = self._keys(session, body)
            elif kind == "SecAggShares":
                reply = self._shares(session, body)
            else:
                reply = self._unmask(session, body)
            session.answers[str(kind)] = (digest, reply)
        if kind == "SecAggShares":
            self._wake()  # the masked update is ready to go
        return reply

    @staticmethod
    def _keys(session: _Session, body: Mapping[str, Any]) -> dict[str, Any]:
        what = f"the keys sent for round {session.number}"
        fields(body, ("type", "federation", "round", "keys"), what)
        adverts: dict[int, Any] = {}
        for pid, item in by_participant(body["keys"], what).items():
            signed = fields(item, ("advert", "signature"), f"{what}: participant {pid}")
            address = next((a for a, i in session.participants.items() if i == pid), None)
            if address is None:
                raise SecAggRejected(f"{what} name participant {pid}, which the round's id map does not")
            check_advert(session.context, pid, signed["advert"], signed["signature"], address)
            adverts[pid] = signed["advert"]
        return {"shares": session.client.share_keys(adverts)}

    @staticmethod
    def _shares(session: _Session, body: Mapping[str, Any]) -> dict[str, Any]:
        fields(body, ("type", "federation", "round", "shares"), f"the shares sent for round {session.number}")
        if session.vector is None:
            raise SecAggRejected("this node's update for the round is already masked")
        masked = session.client.masked_input(body["shares"], session.vector, session.examples)
        session.vector = None  # only the masked form is kept from here on
        message = {
            "type": "SecAggInput",
            "federation": session.federation_id,
            "round": session.number,
            "global_sha256": session.global_sha256,
            "participant": session.me,
            "num_examples": session.examples,
        }
        session.outbox = (f"/federations/{session.federation_id}/secagg/input", message, masked)
        session.next_try = 0.0
        return {"state": "MASKED"}

    @staticmethod
    def _unmask(session: _Session, body: Mapping[str, Any]) -> dict[str, Any]:
        what = f"the unmask request for round {session.number}"
        fields(body, ("type", "federation", "round", "survivors", "dropped"), what)
        return {"unmask": session.client.unmask(body["dropped"], body["survivors"])}

    # -- sessions -----------------------------------------------------------------------------------

    def forget(self, federation_id: str, number: int | None = None) -> None:
        """End the federation's sessions (one round's, or all of them)."""
        with self._guard:
            for key in [k for k in self._sessions if k[0] == federation_id and number in (None, k[1])]:
                del self._sessions[key]

    def _live(self, federation_id: str, number: int) -> _Session | None:
        now = time.monotonic()
        with self._guard:
            for key in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[key]
            return self._sessions.get((federation_id, number))

    def _end(self, contribution_id: int | None, state: str, reason: str) -> None:
        with transaction(self.engine) as session:
            row = session.get(Contribution, contribution_id, with_for_update=True)
            if row is not None and row.state == SENDING:
                CONTRIBUTION.move(row, state, reason)
                session.add(row)

    @staticmethod
    def _deadline(row: Contribution) -> datetime:
        try:
            return as_utc(datetime.fromisoformat(str(row.config.get("deadline"))))
        except ValueError:
            return utcnow()
