"""The coordinator's round driver: open a round, push it, close it, aggregate, notarize.

A :class:`RoundDriver` (in ``agora serve``) moves every RUNNING federation this node
coordinates, from what the database says, so a restarted node resumes where it was:

* **open**: choose the round's providers (all, or ``clients_per_round`` drawn by a CSPRNG
  among those still contributing), record the round with its deadline and one PENDING
  contribution each, and push the round start — global weights bound to the signed message
  — to each; a push that fails is tried again until the deadline;
* **close**: when every selected provider answered or the deadline passed; those that did
  not are DROPPED with the reason (a provider whose round start could not be delivered
  three times holds the round only until the others answered); with fewer than
  ``min_participants`` updates the round and the federation fail with the reason, else the
  strategy aggregates the updates into the next global weights;
* **notarize**: each round is anchored (kind ``fl-round``): its global weights in and out,
  the Merkle root of the update hashes, the participants and the round number;
* **finish**: after the last round every provider evaluates the final weights on its
  held-out rows, then :mod:`federation.final` anchors the global model with its lineage.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from contracts.merkle import MerkleTree
from contracts.notary import enqueue
from federation import tensors
from federation.coordinator import Coordinator
from federation.models import (
    AGGREGATING,
    CONTRIBUTION,
    DONE,
    DROPPED,
    FAILED,
    FEDERATION,
    JOINED,
    OPEN,
    PENDING,
    RECEIVED,
    ROUND,
    RUNNING,
    TRAINING,
    Contribution,
    Federation,
    FederationMember,
    FederationRound,
)
from federation.secagg import SecAggFailed, SecAggRejected
from federation.secagg_protocol import CONFIG as SECAGG
from federation.secagg_protocol import STATE as SECAGG_STATE
from federation.secagg_protocol import is_secure, round_parameters
from federation.spec import FederationSpec
from federation.strategies import AggregationFailed, Failure, FitResult, make_strategy
from kernel.canonical import canonical_hash
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import AgoraError
from kernel.lifecycle import entry
from kernel.worker import BackgroundWorker

log = logging.getLogger("agora.federation")
RETRY_SECONDS = (0.5, 1, 2, 5, 10)
UNREACHABLE_AFTER = 3  # failed deliveries of a round start


def round_record(fed: Federation, rnd: FederationRound, updates: list[dict[str, Any]]) -> dict[str, Any]:
    """What a round's anchor covers."""
    return {
        "title": f"federation {fed.name}, round {rnd.number}",
        "federation": fed.id,
        "round": rnd.number,
        "global_in": rnd.global_in,
        "global_out": rnd.global_out,
        "merkle_root": rnd.merkle_root,
        "participants": rnd.participants,
        "updates": updates,
        "strategy": fed.spec.get("strategy", {}),
    }


def merkle_root(digests: list[str]) -> str:
    return MerkleTree.build([bytes.fromhex(d) for d in digests]).root.hex() if digests else ""


class RoundDriver(BackgroundWorker):
    name = "agora-federation-driver"

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        finish: Callable[[str], None],
        wake_notary: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(interval=1.0)
        self.c = coordinator
        self.engine = coordinator.engine
        self.store = coordinator.store
        self._finish = finish
        self._wake_notary = wake_notary
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agora-fl-push")
        self._sending: set[int | None] = set()  # round starts on their way: not sent twice
        self._sending_lock = threading.Lock()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> float | None:
        with Session(self.engine) as session:
            ids = session.exec(
                select(Federation.id).where(Federation.role == "coordinator", Federation.state == RUNNING)
            ).all()
        wait = 1.0
        for federation_id in ids:
            try:
                wait = min(wait, self._step(str(federation_id)))
            except Exception:  # one federation's trouble must not stop the others
                log.exception("federation %s: the round driver failed a step", federation_id)
        return wait

    def _step(self, federation_id: str) -> float:
        with Session(self.engine) as session:
            fed = session.get(Federation, federation_id)
            rnd = session.exec(
                select(FederationRound)
                .where(FederationRound.federation_id == federation_id)
                .order_by(col(FederationRound.number).desc())
            ).first()
        if fed is None or fed.state != RUNNING:
            return 1.0
        spec = FederationSpec.model_validate(fed.spec)
        if rnd is None or rnd.state == DONE:
            number = rnd.number + 1 if rnd else 1
            if number > spec.rounds + 1:
                self._finish(fed.id)
                return 1.0
            self._open(fed, spec, number, evaluate_only=number == spec.rounds + 1)
            return 0.05
        if rnd.state == AGGREGATING:
            self._aggregate(fed, spec, rnd)
            return 0.05
        if rnd.state != OPEN:
            return 1.0
        parts = self._parts(fed.id, rnd.number)
        now = utcnow()
        due = [
            p for p in parts if p.state == PENDING and (p.next_try_at is None or as_utc(p.next_try_at) <= now)
        ]
        if due:
            blob = b"".join(self.store.read(rnd.global_in))
            for part in due:
                with self._sending_lock:
                    if part.id in self._sending:
                        continue
                    self._sending.add(part.id)
                self._pool.submit(self._deliver, fed, rnd, part, blob)
        if is_secure(rnd.config):  # its stages decide when it closes (federation.secagg_rounds)
            wait = self.c.secagg.step(
                fed,
                spec,
                rnd,
                parts,
                submit=self._pool.submit,
                fail=lambda why: self._fail_round(fed, rnd, why),
                unreachable=lambda p: p.state == PENDING and p.attempts >= UNREACHABLE_AFTER,
            )
            if wait is not None:
                return wait
            self._close(fed, spec, rnd)
            return 0.05
        waiting = [p for p in parts if p.state not in CONTRIBUTION.final]
        received = sum(p.state == RECEIVED for p in parts)
        # a provider that cannot even be reached holds the round up only until the others answered
        unreachable = all(p.state == PENDING and p.attempts >= UNREACHABLE_AFTER for p in waiting)
        if (
            not waiting
            or now >= as_utc(rnd.deadline_at)
            or (unreachable and received >= spec.min_participants)
        ):
            self._close(fed, spec, rnd)
            return 0.05
        return max(0.05, min(1.0, (as_utc(rnd.deadline_at) - now).total_seconds()))

    # -- open ---------------------------------------------------------------------------------

    def _open(self, fed: Federation, spec: FederationSpec, number: int, *, evaluate_only: bool) -> None:
        with transaction(self.engine) as session:
            locked = session.get(Federation, fed.id, with_for_update=True)
            assert locked is not None
            exists = session.exec(
                select(FederationRound).where(
                    FederationRound.federation_id == fed.id, FederationRound.number == number
                )
            ).first()
            if exists is not None or locked.state != RUNNING:
                return
            members = session.exec(
                select(FederationMember).where(
                    FederationMember.federation_id == fed.id, FederationMember.state == JOINED
                )
            ).all()
            providers = [m.provider for m in members]
            wanted = len(providers) if evaluate_only else min(spec.per_round, len(providers))
            if (wanted < spec.min_participants and not evaluate_only) or not providers:
                FEDERATION.move(
                    locked,
                    FAILED,
                    f"round {number}: only {len(providers)} providers still contribute, "
                    f"{spec.min_participants} needed",
                )
                session.add(locked)
                return
            chosen = sorted(secrets.SystemRandom().sample(providers, wanted))
            config: dict[str, Any] = {}
            if not evaluate_only:
                weights = tensors.decode(b"".join(self.store.read(locked.global_sha256)))
                config = dict(
                    make_strategy(spec.strategy.name, spec.strategy.params).configure_fit(number, weights)
                )
                if spec.secure_aggregation.enabled:
                    rows = {m.provider: m.num_train for m in members if m.provider in chosen}
                    try:
                        config[SECAGG] = round_parameters(spec, rows, locked.layout)
                    except AgoraError as exc:
                        FEDERATION.move(locked, FAILED, f"round {number}: {exc.detail}")
                        session.add(locked)
                        return
            deadline = utcnow() + timedelta(seconds=spec.round_deadline)
            what = "final evaluation" if evaluate_only else f"round {number}"
            rnd = FederationRound(
                federation_id=fed.id,
                number=number,
                config={**config, "evaluate_only": evaluate_only},
                global_in=locked.global_sha256,
                deadline_at=deadline,
            )
            rnd.history = [entry(OPEN, f"{what}: {len(chosen)} providers asked")]
            session.add(rnd)
            for provider in chosen:
                part = Contribution(
                    federation_id=fed.id,
                    round_number=number,
                    role="coordinator",
                    provider=provider,
                    global_in=locked.global_sha256,
                    config=rnd.config,
                )
                part.history = [entry(PENDING, "round start to be sent")]
                session.add(part)
            FEDERATION.note(locked, f"{what} open until {deadline.isoformat(timespec='seconds')}")
            session.add(locked)
        self.wake()

    def _deliver(self, fed: Federation, rnd: FederationRound, part: Contribution, blob: bytes) -> None:
        try:
            self._deliver_once(fed, rnd, part, blob)
        finally:
            with self._sending_lock:
                self._sending.discard(part.id)

    def _deliver_once(self, fed: Federation, rnd: FederationRound, part: Contribution, blob: bytes) -> None:
        with Session(self.engine) as session:
            member = session.exec(
                select(FederationMember).where(
                    FederationMember.federation_id == fed.id, FederationMember.provider == part.provider
                )
            ).first()
        if member is None:
            return
        body = {
            "type": "RoundStart",
            "federation": fed.id,
            "round": rnd.number,
            "config": {k: v for k, v in rnd.config.items() if k not in ("evaluate_only", SECAGG_STATE)},
            "evaluate_only": bool(rnd.config.get("evaluate_only")),
            "deadline": as_utc(rnd.deadline_at).isoformat(),
        }
        try:
            self.c.client(member.endpoint, member.provider).post_blob(
                f"/federations/{fed.id}/rounds", body, blob
            )
        except AgoraError as exc:
            delay = RETRY_SECONDS[min(part.attempts, len(RETRY_SECONDS) - 1)]
            with transaction(self.engine) as session:
                row = session.get(Contribution, part.id, with_for_update=True)
                if row is not None and row.state == PENDING:
                    row.attempts += 1
                    row.next_try_at = utcnow() + timedelta(seconds=delay)
                    row.reason = f"round start not delivered yet: {exc.detail}"[:2000]
                    session.add(row)
            return
        with transaction(self.engine) as session:
            row = session.get(Contribution, part.id, with_for_update=True)
            if row is not None and row.state == PENDING:
                CONTRIBUTION.move(row, TRAINING, "the provider has the round")
                row.bytes_out = len(blob)
                session.add(row)

    def _parts(self, federation_id: str, number: int) -> list[Contribution]:
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(Contribution).where(
                        Contribution.federation_id == federation_id,
                        Contribution.role == "coordinator",
                        Contribution.round_number == number,
                    )
                ).all()
            )

    # -- close --------------------------------------------------------------------------------

    def _close(self, fed: Federation, spec: FederationSpec, rnd: FederationRound) -> None:
        evaluate_only = bool(rnd.config.get("evaluate_only"))
        with transaction(self.engine) as session:
            locked = session.get(FederationRound, rnd.id, with_for_update=True)
            if locked is None or locked.state != OPEN:
                return
            parts = session.exec(
                select(Contribution)
                .where(
                    Contribution.federation_id == fed.id,
                    Contribution.role == "coordinator",
                    Contribution.round_number == rnd.number,
                )
                .with_for_update()
            ).all()
            for part in parts:
                if part.state not in CONTRIBUTION.final:
                    why = (
                        f"unreachable: {part.reason}"
                        if part.state == PENDING and part.attempts
                        else "no update by the round's deadline"
                    )
                    CONTRIBUTION.move(part, DROPPED, why)
                    session.add(part)
            received = [p for p in parts if p.state == RECEIVED]
            if evaluate_only:
                locked.metrics = evaluation_summary(received)
                ROUND.move(locked, DONE, f"final evaluation by {len(received)} providers")
                locked.ended_at = utcnow()
                session.add(locked)
                return
            if len(received) < spec.min_participants:
                reason = (
                    f"round {rnd.number}: {len(received)} updates arrived, {spec.min_participants} needed"
                )
                ROUND.move(locked, FAILED, reason)
                locked.ended_at = utcnow()
                session.add(locked)
                fed_row = session.get(Federation, fed.id, with_for_update=True)
                assert fed_row is not None
                FEDERATION.move(fed_row, FAILED, reason)
                session.add(fed_row)
                failed = True
            else:
                ROUND.move(locked, AGGREGATING, f"{len(received)} of {len(parts)} updates arrived")
                session.add(locked)
                failed = False
        if failed:
            self.c._tell_providers(fed.id, "cancelled", f"the federation failed in round {rnd.number}")
            return
        with Session(self.engine) as session:
            fresh = session.get(FederationRound, rnd.id)
        assert fresh is not None
        self._aggregate(fed, spec, fresh)

    def _aggregate(self, fed: Federation, spec: FederationSpec, rnd: FederationRound) -> None:
        parts = self._parts(fed.id, rnd.number)
        received = sorted((p for p in parts if p.state == RECEIVED), key=lambda p: p.provider)
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        if fed.strategy_state_sha256:
            strategy.load_state(_load_state(b"".join(self.store.read(fed.strategy_state_sha256))))
        layout = list(fed.layout)
        global_weights = tensors.in_order(tensors.decode(b"".join(self.store.read(rnd.global_in))), layout)
        secure = is_secure(rnd.config)  # then the coordinator learns the mean and nothing else
        results = (
            []
            if secure
            else [
                FitResult(
                    p.provider,
                    tensors.in_order(tensors.decode(b"".join(self.store.read(p.update_sha256))), layout),
                    max(1, p.num_examples),
                    p.fit_metrics,
                )
                for p in received
            ]
        )
        failures = [Failure(p.provider, p.reason) for p in parts if p.state != RECEIVED]
        try:
            if secure:
                mean, total = self.c.secagg.mean(fed.id, rnd.number, global_weights)
                new_global = strategy.aggregate_mean(rnd.number, global_weights, mean, total)
            else:
                new_global = strategy.aggregate_fit(rnd.number, global_weights, results, failures)
        except (AggregationFailed, SecAggFailed, SecAggRejected) as exc:
            self._fail_round(fed, rnd, f"round {rnd.number}: aggregation failed: {exc.detail}")
            return
        blob = tensors.encode(tensors.in_order(new_global, layout))
        self.store.put_bytes(blob)
        state = strategy.state()
        state_sha = self.store.put_bytes(_dump_state(state)).sha256 if state else ""
        updates: list[dict[str, Any]] = [
            {"provider": p.provider, "sha256": p.update_sha256, "num_examples": p.num_examples}
            for p in received
        ]
        secured: dict[str, Any] = {}
        if secure:  # the masked updates' hashes: no single update is known here
            updates, secured = self.c.secagg.record(fed.id, rnd.number, received)
        with transaction(self.engine) as session:
            locked = session.get(FederationRound, rnd.id, with_for_update=True)
            fed_row = session.get(Federation, fed.id, with_for_update=True)
            assert locked is not None and fed_row is not None
            if locked.state != AGGREGATING:
                return
            locked.global_out = tensors.sha256_bytes(blob)
            locked.merkle_root = merkle_root([u["sha256"] for u in updates])
            locked.participants = [u["provider"] for u in updates]
            locked.metrics = {
                **evaluation_summary([p for p in parts if p.state == RECEIVED]),
                "fit": {p.provider: p.fit_metrics for p in received},
            }
            # the model names round 0 and every round as its parents; a round names round 0 in
            # its record (as parents, round 0 would repeat under every round in `agora verify`)
            record = {**round_record(fed_row, locked, updates), "setup": setup_asset(session, fed_row)}
            if secured:
                record["secure_aggregation"] = secured
            notarization = enqueue(
                session,
                kind="fl-round",
                content_hash=canonical_hash(record),
                owner=fed_row.coordinator,
                metadata=record,
            )
            locked.asset_id = notarization.asset_id
            recovered = int(secured.get("dropouts_recovered", 0))
            how = (
                f" securely, {recovered} drop-out{'' if recovered == 1 else 's'} recovered,"
                if secured
                else ""
            )
            ROUND.move(locked, DONE, f"aggregated {len(updates)} updates{how} with {spec.strategy.name}")
            locked.ended_at = utcnow()
            fed_row.global_sha256 = locked.global_out
            fed_row.current_round = rnd.number
            fed_row.strategy_state_sha256 = state_sha
            FEDERATION.note(fed_row, f"round {rnd.number} of {spec.rounds} done")
            session.add_all([locked, fed_row])
        if secure:
            self.c.secagg.forget(fed.id, rnd.number)
        self._wake_notary()
        self.wake()

    def _fail_round(self, fed: Federation, rnd: FederationRound, reason: str) -> None:
        with transaction(self.engine) as session:
            locked = session.get(FederationRound, rnd.id, with_for_update=True)
            fed_row = session.get(Federation, fed.id, with_for_update=True)
            assert locked is not None and fed_row is not None
            ROUND.move(locked, FAILED, reason)
            FEDERATION.move(fed_row, FAILED, reason)
            session.add_all([locked, fed_row])
        self.c._tell_providers(fed.id, "cancelled", reason)


def evaluation_summary(parts: list[Contribution]) -> dict[str, Any]:
    """Federated evaluation of the round's incoming global weights: per provider and the
    example-weighted overall accuracy and loss."""
    per = {p.provider: p.eval_metrics for p in parts if p.eval_metrics}
    total = sum(int(m.get("num_examples", 0)) for m in per.values())
    summary: dict[str, Any] = {"providers": per}
    if total:
        for name in ("accuracy", "loss"):
            summary[name] = round(
                sum(float(m.get(name, 0.0)) * int(m.get("num_examples", 0)) for m in per.values()) / total, 6
            )
        summary["num_examples"] = total
    return summary


def setup_asset(session: Session, fed: Federation) -> str:
    """The federation's own anchor (round 0): code, initial weights, strategy, and each
    provider's agreement and dataset version; every round's parent."""
    members = session.exec(select(FederationMember).where(FederationMember.federation_id == fed.id)).all()
    record = {
        "title": f"federation {fed.name}",
        "federation": fed.id,
        "round": 0,
        "code_digest": fed.code_digest,
        "initial_weights": fed.initial_sha256,
        "spec_hash": canonical_hash(fed.spec),
        "providers": sorted(
            (
                {
                    "provider": m.provider,
                    "agreement": m.agreement_id,
                    "dataset_sha256": m.dataset_sha256,
                    "state": m.state,
                }
                for m in members
                if m.state in (JOINED, "STOPPED")
            ),
            key=lambda m: m["provider"],
        ),
    }
    return enqueue(
        session, kind="fl-round", content_hash=canonical_hash(record), owner=fed.coordinator, metadata=record
    ).asset_id


def _dump_state(state: dict[str, Any]) -> bytes:
    flat = {f"{group}/{name}": value for group, weights in state.items() for name, value in weights.items()}
    return tensors.encode(flat)


def _load_state(data: bytes) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in tensors.decode(data, what="the strategy's state").items():
        group, _, name = key.partition("/")
        out.setdefault(group, {})[name] = value
    return out
