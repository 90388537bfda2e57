"""The provider's rounds: local training in the warm sandbox, the node's checks, the push back.

A :class:`LocalRounds` worker (in ``agora serve``) takes each round a coordinator started
here (a PENDING contribution) and, per federation one at a time:

1. stops contributing, with the reason, when the policy's ε cap (or the federation's target)
   would be passed by one more round, or the agreement has no use left (one use per round);
2. evaluates the incoming global weights on the held-out rows (federated evaluation);
3. trains them on the training rows in the federation's warm trainer (one long-lived sandboxed
   process per federation; :mod:`federation.warm`), whose reply the node checks;
4. clips and noises the update itself when the federation asks for node-side privacy, records
   the round in the privacy ledger, and only then
5. pushes the update, bound to a signed message by its sha256, to the coordinator; a failed
   push is tried again until the round's deadline.
   Under secure aggregation the update stays here and leaves only masked, through the
   stages of :mod:`federation.secagg_local`.

A node restart finds the round where it was: a contribution left TRAINING is trained again,
one left SENDING is pushed again. Only the node's own sentences leave on failure.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from connector.agreements import AgreementService, UseDenied
from connector.dsp.client import PeerClients
from federation import tensors
from federation.models import (
    CONTRIBUTION,
    FAILED,
    LATE,
    PENDING,
    RECEIVED,
    SENDING,
    STOPPED,
    TRAINING,
    Contribution,
    Federation,
)
from federation.privacy import clip_and_noise, contribution_refusal, round_events
from federation.privacy_ledger import PrivacyLedger
from federation.provider import ProviderFederations
from federation.recipes import ModelCode
from federation.secagg_protocol import CONFIG as SECAGG
from federation.secagg_protocol import is_secure
from federation.spec import WireSpec
from federation.warm import WarmTrainer
from federation.warm_process import TrainerFailed
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import AgoraError
from kernel.lifecycle import entry
from kernel.outbound import OutboundClient
from kernel.storage import ObjectStore
from kernel.worker import BackgroundWorker
from training_jobs.sandbox import Limits, Sandbox

log = logging.getLogger("agora.federation")
RETRY_SECONDS = (0.5, 1, 2, 5, 10, 20)
PUBLIC_FAILURE = "local training failed on the provider (its node keeps the details)"
LOG_MAX_BYTES = 4 * 1024 * 1024


class LocalRounds(BackgroundWorker):
    name = "agora-federation-provider"

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        provider: ProviderFederations,
        *,
        agreements: AgreementService,
        sandbox: Sandbox,
        outbound: OutboundClient,
        address: str,
        private_key: Any,
        peers: PeerClients,
    ) -> None:
        super().__init__(interval=2.0)
        self.engine = engine
        self.store = store
        self.provider = provider
        self.agreements = agreements
        self.sandbox = sandbox
        self.outbound = outbound
        self.address = address
        self._key = private_key
        self.peers = peers
        self._trainers: dict[str, WarmTrainer] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agora-fl-round")
        self._recovered = False

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            trainers, self._trainers = list(self._trainers.values()), {}
        for trainer in trainers:
            trainer.close()

    # -- the loop -----------------------------------------------------------------------------

    def tick(self) -> float | None:
        if not self._recovered:
            self._recover()
        self._close_ended()
        now = utcnow()
        with Session(self.engine) as session:
            rows = session.exec(
                select(Contribution).where(
                    Contribution.role == "provider", col(Contribution.state).in_((PENDING, SENDING))
                )
            ).all()
        for row in rows:
            if row.state == SENDING and row.next_try_at is not None and as_utc(row.next_try_at) > now:
                continue
            with self._lock:
                if row.federation_id in self._busy:
                    continue
                self._busy.add(row.federation_id)
            self._pool.submit(self._work, row.id, row.federation_id)
        return None

    def _recover(self) -> None:
        """After a restart: a round whose training was cut off is trained again."""
        with transaction(self.engine) as session:
            for row in session.exec(
                select(Contribution).where(Contribution.role == "provider", Contribution.state == TRAINING)
            ):
                CONTRIBUTION.move(row, PENDING, "trained again: the node restarted during the round")
                session.add(row)
        self._recovered = True

    def _close_ended(self) -> None:
        with self._lock:
            ids = list(self._trainers)
        if not ids:
            return
        with Session(self.engine) as session:
            ended = [
                f.id
                for f in session.exec(select(Federation).where(col(Federation.id).in_(ids))).all()
                if f.state not in ("CREATED", "RUNNING")
            ]
        for federation_id in ended:
            with self._lock:
                trainer = self._trainers.pop(federation_id, None)
            if trainer is not None:
                trainer.close()
            self.provider.discard(federation_id)

    def _work(self, contribution_id: int | None, federation_id: str) -> None:
        try:
            with Session(self.engine) as session:
                row = session.get(Contribution, contribution_id)
                fed = session.get(Federation, federation_id)
            if row is None or fed is None:
                return
            if row.state == PENDING:
                self._round(fed, row)
            elif is_secure(row.config):
                self._secure_push(fed, row)
            else:
                self._push(fed, row)
        except Exception:  # a worker thread must not die silently
            log.exception("federation %s: round work failed", federation_id)
        finally:
            with self._lock:
                self._busy.discard(federation_id)
            self.wake()

    # -- one round ----------------------------------------------------------------------------

    def _round(self, fed: Federation, row: Contribution) -> None:
        if not self._move(row.id, PENDING, TRAINING, "training in the sandbox"):
            return
        spec = WireSpec.model_validate(fed.spec)
        config = dict(row.config)
        evaluate_only = bool(config.pop("evaluate_only", False))
        config.pop("deadline", None)
        config.pop(SECAGG, None)  # for the node, not for the trainer
        deadline = self._deadline(row)
        try:
            refusal = self._still_valid(fed) if evaluate_only else self._refusal(fed, spec)
            if refusal is not None:
                self._end(row.id, STOPPED, refusal, push=True)
                return
            if not evaluate_only:
                # charged before the fit: a round that fails (and how) says something too
                self._charge(fed, spec, row.round_number)
            self._train(fed, spec, row, config, evaluate_only, deadline)
        except Exception:  # the node's own trouble: the round fails here, never stays TRAINING
            log.exception("federation %s round %s failed on this node", fed.id, row.round_number)
            self._end(row.id, FAILED, "the provider's node failed during the round", push=True)

    def _train(
        self, fed: Federation, spec: WireSpec, row: Contribution, config: dict[str, Any], evaluate_only: bool,
        deadline: datetime,
    ) -> None:  # fmt: skip
        try:
            trainer = self._trainer(fed, spec)
            global_weights = tensors.decode(b"".join(self.store.read(row.global_in)))
            timeout = max(5.0, (deadline - utcnow()).total_seconds())
            evaluation = trainer.evaluate(global_weights, timeout=timeout)
            if evaluate_only:
                self._store_result(row.id, None, 0, {}, evaluation, {}, 0.0)
                self._push(fed, self._get(row.id))
                return
            started = utcnow()
            fit = trainer.fit(global_weights, {**config, "round": row.round_number}, timeout=timeout)
            seconds = (utcnow() - started).total_seconds()
        except TrainerFailed as exc:
            self._private_log(fed, f"round {row.round_number}: {exc.detail}\n{exc.private}")
            self._end(row.id, FAILED, exc.detail, push=True)
            return
        except AgoraError as exc:
            self._private_log(fed, f"round {row.round_number}: {exc.detail}")
            self._end(row.id, FAILED, f"local training could not run: {exc.detail}", push=True)
            return
        weights, privacy = self._private_update(fed, spec, global_weights, fit.weights, row.round_number)
        layout = {name: (list(v[0]), str(v[1])) for name, v in fed.layout.items()}
        tensors.check_update(
            weights, layout, max_bytes=4 * tensors.size_of(global_weights) + 1024, what="the update"
        )
        blob = tensors.encode(tensors.in_order(weights, list(layout)))
        self.store.put_bytes(blob)
        self._store_result(
            row.id, tensors.sha256_bytes(blob), fit.num_examples, fit.metrics, evaluation, privacy, seconds
        )
        if is_secure(row.config):  # the update stays here; only its masked form will leave
            key = self._key() if callable(self._key) else self._key
            ready = self.provider.secagg.begin(
                fed,
                self._get(row.id),
                address=self.address,
                private_key=key,
                global_weights=global_weights,
                update=weights,
                num_examples=fit.num_examples,
            )
            if ready:
                self._secure_push(fed, self._get(row.id))
            else:
                self._push(fed, self._get(row.id))  # why it cannot take part, without its weights
            return
        self._push(fed, self._get(row.id))

    def _still_valid(self, fed: Federation) -> str | None:
        """Why the agreement no longer covers an evaluation (it takes no use), or None."""
        agreement = self.agreements.as_provider(fed.agreement_id)
        if agreement.valid_until and utcnow().timestamp() > agreement.valid_until:
            return "this provider stops contributing: the agreement expired"
        allowed, why = self.agreements.policy_allows(agreement, "federate")
        return None if allowed else f"this provider stops contributing: the policy denies it: {why}"

    def _charge(self, fed: Federation, spec: WireSpec, number: int) -> None:
        """Record the round's privacy events in the ledger (before the fit: whatever it returns)."""
        n_train = int(fed.result.get("num_train", 0)) or 1
        options = spec.privacy
        with transaction(self.engine) as session:
            locked = session.get(Federation, fed.id, with_for_update=True)
            assert locked is not None
            ledger = PrivacyLedger.from_json(locked.privacy) if locked.privacy else PrivacyLedger()
            ledger.add_round(
                round_events(options, n_train, spec.recipe.batch_size, spec.recipe.local_epochs), number
            )
            locked.privacy = ledger.to_data()
            session.add(locked)

    def _refusal(self, fed: Federation, spec: WireSpec) -> str | None:
        agreement = self.agreements.as_provider(fed.agreement_id)
        ledger = self.provider.spent(fed)
        n_train = int(fed.result.get("num_train", 0)) or 1
        events = round_events(spec.privacy, n_train, spec.recipe.batch_size, spec.recipe.local_epochs)
        cap = self.provider.privacy_cap(agreement)
        if cap is not None or spec.privacy.target_epsilon is not None:
            refusal = contribution_refusal(ledger, events, spec.privacy, cap)
            if refusal is not None:
                return refusal
        try:
            self.agreements.use(fed.agreement_id, consumer=fed.coordinator, mode="federate")
        except UseDenied as exc:
            return f"this provider stops contributing: {exc.detail}"
        return None

    def _private_update(
        self,
        fed: Federation,
        spec: WireSpec,
        global_weights: tensors.Weights,
        weights: tensors.Weights,
        number: int,
    ) -> tuple[tensors.Weights, dict[str, Any]]:
        """The update as it may leave: clipped and noised by the node when asked (the round is
        already in the privacy ledger: :meth:`_charge`), with the ledger's figures."""
        options = spec.privacy
        if options.node_clip_norm is not None:
            weights, _ = clip_and_noise(
                global_weights,
                weights,
                clip_norm=options.node_clip_norm,
                noise_multiplier=options.node_noise_multiplier,
            )
        return weights, self.provider.spent(fed).figures(options.delta)

    def _trainer(self, fed: Federation, spec: WireSpec) -> WarmTrainer:
        with self._lock:
            trainer = self._trainers.get(fed.id)
        if trainer is not None and trainer.alive:
            return trainer
        if trainer is not None:
            trainer.close()
        home = self.provider.home(fed.id)
        layout = {name: (list(v[0]), str(v[1])) for name, v in fed.layout.items()}
        resources = spec.resources
        limits = Limits(
            cpu_seconds=resources.cpu_seconds,
            memory_bytes=int(resources.memory),
            wall_seconds=resources.wall_time,
            max_output_bytes=64 * 1024**2,
        )
        model: ModelCode = spec.model.code()
        trainer = WarmTrainer(
            self.sandbox,
            home / "code",
            home / "rows" / "train.npz",
            home / "rows" / "holdout.npz",
            model,
            spec.recipe.recipe(spec.privacy, spec.proximal_mu),
            layout,
            limits,
            lambda role, line: self._private_log(fed, f"[{role}] {line}"),
            home / "warm",
        )
        trainer.start()
        trainer.hello()
        with self._lock:
            self._trainers[fed.id] = trainer
        return trainer

    # -- the push -----------------------------------------------------------------------------

    def _secure_push(self, fed: Federation, row: Contribution) -> None:
        """A securely aggregated round's next message (:mod:`federation.secagg_local`)."""
        client = self.peers.to(fed.coordinator)
        if self.provider.secagg.push(fed, row, client):
            self._push(fed, self._get(row.id))  # why it dropped out, without its weights

    def _push(self, fed: Federation, row: Contribution) -> None:
        """Send the round's outcome to the coordinator; again later while the round lasts."""
        private = WireSpec.model_validate(fed.spec).privacy.private
        body: dict[str, Any] = {
            "type": "RoundUpdate",
            "federation": fed.id,
            "round": row.round_number,
            "global_sha256": row.global_in,
            "state": row.state,
            # how local training failed is the model code's to choose: only the node's one sentence leaves
            "reason": row.reason if row.state == STOPPED else PUBLIC_FAILURE if row.state == FAILED else "",
            "num_examples": row.num_examples,
            # under differential privacy the training figures and timing would leave un-noised
            "fit_metrics": {} if private else row.fit_metrics,
            "eval_metrics": row.eval_metrics,
            "privacy": row.privacy,
            "train_seconds": 0.0 if private else round(row.train_seconds, 3),
        }
        secure = is_secure(row.config)  # then only a failure is reported here, never the weights
        blob = b"".join(self.store.read(row.update_sha256)) if row.update_sha256 and not secure else b""
        client = self.peers.to(fed.coordinator)
        try:
            reply = client.post_blob(f"/federations/{fed.id}/updates", body, blob)
        except AgoraError as exc:
            self._retry(row, exc.detail)
            return
        if row.state == SENDING:
            outcome = LATE if reply.get("state") == LATE else RECEIVED
            self._move(
                row.id, SENDING, outcome, str(reply.get("reason") or "the coordinator has the update")[:500]
            )

    def _retry(self, row: Contribution, error: str) -> None:
        if utcnow() > self._deadline(row):
            if row.state == SENDING:
                self._move(
                    row.id,
                    SENDING,
                    FAILED,
                    f"the coordinator could not be reached by the deadline: {error}"[:500],
                )
            return
        delay = RETRY_SECONDS[min(row.attempts, len(RETRY_SECONDS) - 1)]
        with transaction(self.engine) as session:
            session.execute(
                update(Contribution)
                .where(col(Contribution.id) == row.id)
                .values(
                    attempts=col(Contribution.attempts) + 1, next_try_at=utcnow() + timedelta(seconds=delay)
                )
            )
        if row.state != SENDING:  # a failure report that could not be delivered: try once more later
            log.warning(
                "federation %s round %s: could not tell the coordinator: %s",
                row.federation_id,
                row.round_number,
                error,
            )

    # -- records ------------------------------------------------------------------------------

    def _deadline(self, row: Contribution) -> datetime:
        raw = row.config.get("deadline")
        try:
            return as_utc(datetime.fromisoformat(str(raw)))
        except ValueError:
            return as_utc(row.created_at) + timedelta(hours=1)

    def _get(self, contribution_id: int | None) -> Contribution:
        with Session(self.engine) as session:
            row = session.get(Contribution, contribution_id)
            assert row is not None
            return row

    def _move(self, contribution_id: int | None, current: str, target: str, reason: str) -> bool:
        with transaction(self.engine) as session:
            row = session.get(Contribution, contribution_id, with_for_update=True)
            if row is None or row.state != current:
                return False
            CONTRIBUTION.move(row, target, reason)
            session.add(row)
        return True

    def _end(self, contribution_id: int | None, state: str, reason: str, *, push: bool) -> None:
        self._move(contribution_id, TRAINING, state, reason)
        if state == STOPPED:  # for good: later round starts are refused (provider.on_round)
            with transaction(self.engine) as session:
                part = session.get(Contribution, contribution_id)
                locked = session.get(Federation, part.federation_id, with_for_update=True) if part else None
                if locked is not None:
                    locked.result = {**locked.result, "stopped": reason}
                    session.add(locked)
        if push:
            row = self._get(contribution_id)
            with Session(self.engine) as session:
                fed = session.get(Federation, row.federation_id)
            if fed is not None:
                self._push(fed, row)

    def _store_result(
        self,
        contribution_id: int | None,
        update_sha: str | None,
        num_examples: int,
        fit_metrics: dict[str, float],
        eval_metrics: dict[str, float],
        privacy: dict[str, Any],
        seconds: float,
    ) -> None:
        with transaction(self.engine) as session:
            row = session.get(Contribution, contribution_id, with_for_update=True)
            assert row is not None
            row.update_sha256 = update_sha or ""
            row.num_examples, row.fit_metrics, row.eval_metrics = num_examples, fit_metrics, eval_metrics
            row.privacy, row.train_seconds = privacy, seconds
            what = "evaluated the global model" if update_sha is None else "update made and checked"
            CONTRIBUTION.move(row, SENDING, what)
            session.add(row)

    def _private_log(self, fed: Federation, line: str) -> None:
        """Lines from the sandbox (code run beside the provider's rows) stay on this node."""
        path: Path = self.provider.home(fed.id) / "trainer.log"
        try:
            if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
                return
            with path.open("a", encoding="utf-8", errors="replace") as handle:
                handle.write(line.rstrip("\n")[:4000] + "\n")
        except OSError:
            pass


__all__ = ["LocalRounds", "entry"]
