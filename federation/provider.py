"""The provider's side of federations: what a coordinator's node asks of it under ``/dsp/federations…``.

An invitation names a federate agreement this node holds with the sender and carries the
model bundle (bytes bound to the signed message). It is refused with a 4xx when malformed
(spec, layout, bundle digest) and recorded as REJECTED with the reason when the agreement or
this node does not allow it: not the sender's agreement, not a federate agreement, the offering
is not offered for federated learning, the policy denies it, the policy caps ε and the
federation applies no differential privacy, or no sandbox here can host a warm trainer.
Accepted, the node splits its dataset (the held-out rows stay with it), starts the warm
trainer and answers how many training rows it has.

A round start carries the global weights; the node checks them against the federation's
layout, stores them and queues the round for :mod:`federation.local`, which trains, checks
the update and pushes it back. Cancel and finish stop the trainer.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.agreements import AgreementService
from connector.models import Agreement
from federation import tensors
from federation.models import (
    CANCELLED,
    COMPLETED,
    CONTRIBUTION,
    CREATED,
    FEDERATION,
    PENDING,
    REJECTED,
    RUNNING,
    Contribution,
    Federation,
)
from federation.privacy_ledger import LedgerRound, PrivacyLedger
from federation.secagg_local import SecAggLocal, check_start
from federation.spec import MAX_ROUNDS, WireSpec, wire_spec
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import AgoraError, Conflict, FieldError, InvalidInput
from kernel.lifecycle import entry
from kernel.storage import ObjectStore
from marketplace.policy.language import Policy
from marketplace.policy.privacy import privacy_cap
from training_jobs import bundle as bundles
from training_jobs import holdout
from training_jobs.provider import NodeLimits
from training_jobs.sandbox import Sandbox

log = logging.getLogger("agora.federation")
FEDERATION_ID = re.compile(r"^urn:uuid:[0-9a-f-]{36}$")
MAX_LAYOUT = 10_000
MAX_WEIGHTS_BYTES = 64 * 1024**2  # a round's weights: read before the signature is checked
DEADLINE_MARGIN_SECONDS = 60.0


def parse_layout(raw: Any) -> dict[str, tuple[list[int], str]]:
    """A federation's layout as a peer sends it: ``{name: [shape, dtype]}``, bounded."""
    if not isinstance(raw, dict) or not 0 < len(raw) <= MAX_LAYOUT:
        raise InvalidInput(f"layout must map 1 to {MAX_LAYOUT} tensor names to [shape, dtype]")
    layout: dict[str, tuple[list[int], str]] = {}
    total = 0
    for name, value in raw.items():
        if not (isinstance(name, str) and 0 < len(name) <= 200) or not (
            isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
        ):
            raise InvalidInput(
                "layout entries are name: [shape, dtype]", errors=[FieldError("layout", "malformed")]
            )
        shape, dtype = value
        if len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 24 for d in shape
        ):
            raise InvalidInput(f"layout: tensor {name[:60]} has an impossible shape")
        if dtype not in tensors.ALLOWED_DTYPES:
            raise InvalidInput(
                f"layout: tensor {name[:60]} has dtype {str(dtype)[:20]}, not one of {tensors.ALLOWED_DTYPES}"
            )
        total += math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
        layout[name] = (list(shape), dtype)
    if total > MAX_WEIGHTS_BYTES:
        raise InvalidInput(f"the model's weights would be {total} bytes, over {MAX_WEIGHTS_BYTES}")
    return layout


def federation_view(fed: Federation) -> dict[str, Any]:
    """What both sides show of a federation (no spec internals beyond the public ones)."""
    return {
        "id": fed.id,
        "role": fed.role,
        "name": fed.name,
        "state": fed.state,
        "reason": fed.reason,
        "coordinator": fed.coordinator,
        "current_round": fed.current_round,
        "rounds": int(fed.spec.get("rounds", 0)),
        "global_sha256": fed.global_sha256,
        "history": fed.history,
        "result": fed.result,
        "created_at": fed.created_at.isoformat(),
        "updated_at": fed.updated_at.isoformat(),
    }


class ProviderFederations:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        *,
        agreements: AgreementService,
        offering_modes: Callable[[str], list[str]],
        sandbox: Callable[[], Sandbox],
        workdir: Path,
        holdout_fraction: float,
        limits: NodeLimits | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.limits = limits or NodeLimits()
        self.engine = engine
        self.store = store
        self.agreements = agreements
        self._offering_modes = offering_modes
        self._sandbox = sandbox
        self.workdir = workdir
        self.holdout_fraction = holdout_fraction
        self._wake = wake
        self.secagg = SecAggLocal(engine, wake)  # the secure rounds' secrets, in memory only

    # -- invitation ---------------------------------------------------------------------------

    def on_invite(
        self, sender: str, sender_endpoint: str, body: dict[str, Any], bundle: bytes
    ) -> dict[str, Any]:
        federation_id = str(body.get("federation") or "")
        if not FEDERATION_ID.match(federation_id):
            raise InvalidInput(
                "an invitation names its federation (urn:uuid:…)",
                errors=[FieldError("federation", "required")],
            )
        agreement_id = str(body.get("agreement") or "").lower()
        spec = wire_spec(body.get("spec"))
        layout = parse_layout(body.get("layout"))
        if bundles.digest(bundle) != spec.model.digest:
            raise InvalidInput("the bundle's sha256 differs from spec.model.digest")
        bundles.list_members(bundle)  # a malformed archive is the sender's error (400)
        with Session(self.engine) as session:
            existing = session.get(Federation, federation_id)
        if existing is not None:
            if existing.coordinator.lower() != sender.lower():
                raise Conflict(f"federation {federation_id} is another coordinator's")
            return self._status(existing)
        agreement = self.agreements.as_provider(agreement_id)
        fed = Federation(
            id=federation_id,
            role="provider",
            name=spec.name,
            coordinator=sender,
            coordinator_endpoint=sender_endpoint,
            spec=spec.model_dump(mode="json"),
            code_digest=spec.model.digest or "",
            layout={name: [shape, dtype] for name, (shape, dtype) in layout.items()},
            agreement_id=agreement_id,
            offering_id=agreement.offering_id,
            dataset_sha256=str(agreement.terms.get("sha256", "")),
        )
        refusal = self._refusal(sender, agreement, spec.privacy.node_noise)
        refusal = refusal or self._over_limits(spec, agreement_id)
        num_train = 0
        if refusal is None:
            try:
                num_train = self._prepare(fed, bundle)
            except AgoraError as exc:
                refusal = exc.detail
                self.discard(fed.id)
        fed.state, fed.reason = (
            (REJECTED, refusal) if refusal else (CREATED, f"joined with {num_train} training rows")
        )
        fed.history = [entry(fed.state, fed.reason)]
        fed.result = {"num_train": num_train}
        with transaction(self.engine) as session:
            session.add(fed)
        if refusal is None:
            self._wake()
        return self._status(fed)

    def _over_limits(self, spec: WireSpec, agreement_id: str) -> str | None:
        """What this node will not give a federation: more than its job limits, or a second
        live federation on one agreement."""
        resources = spec.resources
        over = self.limits.exceeded(resources.cpu_seconds, int(resources.memory), resources.wall_time)
        if over:
            return f"the federation asks for more than this node allows: {over}"
        with Session(self.engine) as session:
            live = session.exec(
                select(Federation.id).where(
                    Federation.role == "provider",
                    Federation.agreement_id == agreement_id,
                    col(Federation.state).in_((CREATED, RUNNING)),
                )
            ).first()
        if live is not None:
            return f"agreement {agreement_id} already serves the live federation {live}"
        return None

    def spent(self, fed: Federation) -> PrivacyLedger:
        """Every round this coordinator had from this offering, in this federation and the
        earlier ones (renumbered one after the other): a cap holds across federations."""
        with Session(self.engine) as session:
            federations = session.exec(
                select(Federation)
                .where(
                    Federation.role == "provider",
                    Federation.coordinator == fed.coordinator,
                    Federation.offering_id == fed.offering_id,
                    Federation.id != fed.id,
                )
                .order_by(col(Federation.created_at))
            ).all()
            own = session.get(Federation, fed.id)
        ledgers = [f.privacy for f in [*federations, own] if f is not None and f.privacy]
        events = [r.events for data in ledgers for r in PrivacyLedger.from_json(data).rounds]
        return PrivacyLedger([LedgerRound(i + 1, e) for i, e in enumerate(events)])

    def discard(self, federation_id: str) -> None:
        """Remove a federation's copy of the rows and code (it ended, or was never joined);
        the trainer's private log stays for the operator."""
        for part in ("rows", "code", "warm"):
            shutil.rmtree(self.home(federation_id) / part, ignore_errors=True)

    def _refusal(self, sender: str, agreement: Agreement, node_noise: bool) -> str | None:
        if agreement.consumer.lower() != sender.lower():
            return f"agreement {agreement.id} is not {sender}'s"
        if agreement.terms.get("accessMode") != "federate":
            return (
                f"agreement {agreement.id} covers {agreement.terms.get('accessMode')}, not federated learning"
            )
        modes = self._offering_modes(agreement.offering_id)
        if "federate" not in modes:
            return (
                f"the offering is not offered for federated learning (its access modes: {', '.join(modes)})"
            )
        if not agreement.tx_hash:
            return "the agreement is not yet recorded on chain (negotiation not finalized)"
        allowed, why = self.agreements.policy_allows(agreement, "federate")
        if not allowed:
            return f"the policy denies it: {why}"
        cap = self.privacy_cap(agreement)
        if cap is not None and not node_noise:
            # DP-SGD alone runs beside the model code, which can write rows outside gradient
            # steps: a cap needs the noise the node adds itself
            return (
                f"the policy caps differential privacy at ε ≤ {cap[0]:g} (δ {cap[1]:g}) and the federation "
                "does not have this node add noise itself (privacy.node_clip_norm and node_noise_multiplier)"
            )
        try:
            sandbox = self._sandbox()
            sandbox.check()
        except AgoraError as exc:
            return f"this node cannot train now: {exc.detail}"
        if sandbox.kind != "bubblewrap":
            return f"this node's {sandbox.kind} sandbox cannot host a warm federation trainer"
        return None

    def privacy_cap(self, agreement: Agreement) -> tuple[float, float] | None:
        raw = agreement.terms.get("policy")
        if not isinstance(raw, dict):
            return None
        return privacy_cap(Policy.model_validate(raw))

    def _prepare(self, fed: Federation, bundle: bytes) -> int:
        """Unpack the bundle and split the dataset: training rows for the trainer, held-out
        rows for the evaluator only. Returns the number of training rows."""
        if not self.store.exists(fed.dataset_sha256):
            raise InvalidInput(f"the dataset version {fed.dataset_sha256[:12]}… is no longer on this node")
        try:
            rows = holdout.load(self.engine, self.store, fed.offering_id, fed.dataset_sha256)
        except holdout.Untrained as exc:  # the reason shown with the version since its registration
            raise InvalidInput(exc.detail) from None
        except holdout.UnusableDataset as exc:  # its detail may quote the data: the operator's log only
            log.warning("federation %s: the dataset cannot be read as a training set: %s", fed.id, exc.detail)
            raise InvalidInput("the dataset cannot be read as a training set") from None
        split = holdout.split(
            rows.features, rows.labels, fraction=self.holdout_fraction, seed_hex=fed.dataset_sha256
        )
        home = self.home(fed.id)
        bundles.unpack(bundle, home / "code")
        (home / "rows").mkdir(parents=True, exist_ok=True)
        split.write(home / "rows" / "train.npz", home / "rows" / "holdout.npz")
        self.store.put_bytes(bundle)
        return len(split.train_y)

    def home(self, federation_id: str) -> Path:
        return self.workdir / federation_id.rsplit(":", 1)[-1]

    # -- rounds ------------------------------------------------------------------------------

    def on_round(self, sender: str, federation_id: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        number = body.get("round")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_ROUNDS + 1:
            raise InvalidInput(
                "a round start names its round (1, 2, …)", errors=[FieldError("round", "required")]
            )
        raw = body.get("config")
        config: dict[str, Any] = raw if isinstance(raw, dict) else {}
        evaluate_only = bool(body.get("evaluate_only"))
        fed = self._own(sender, federation_id)
        if fed.state not in (CREATED, RUNNING):
            raise Conflict(f"federation {federation_id} is {fed.state} here: {fed.reason}")
        spec = WireSpec.model_validate(fed.spec)
        check_start(spec, config, evaluate_only)
        if number > spec.rounds + 1 or evaluate_only != (number == spec.rounds + 1):
            raise InvalidInput(
                f"this federation has {spec.rounds} training rounds and one evaluation after them; "
                f"round {number} {'evaluate-only' if evaluate_only else 'training'} is not one of them"
            )
        if number < fed.current_round or number > fed.current_round + 1:
            raise Conflict(f"round {number} is out of turn: this node is at round {fed.current_round}")
        if fed.result.get("stopped"):
            raise Conflict(f"this provider stopped contributing: {fed.result['stopped']}")
        deadline = self._deadline(body.get("deadline"), spec.round_deadline)
        layout = {name: (list(v[0]), str(v[1])) for name, v in fed.layout.items()}
        weights = tensors.decode(blob, what="the global weights")
        tensors.check_update(weights, layout, max_bytes=MAX_WEIGHTS_BYTES, what="the global weights")
        digest = tensors.sha256_bytes(blob)
        self.store.put_bytes(blob)
        with transaction(self.engine) as session:
            row = session.exec(
                select(Contribution).where(
                    Contribution.federation_id == federation_id,
                    Contribution.role == "provider",
                    Contribution.round_number == number,
                )
            ).first()
            if row is None:
                row = Contribution(
                    federation_id=federation_id,
                    round_number=number,
                    role="provider",
                    provider=sender,
                    global_in=digest,
                    config={**config, "evaluate_only": evaluate_only, "deadline": deadline},
                    bytes_in=len(blob),
                )
                row.history = [entry(PENDING, "the round's global weights arrived")]
                session.add(row)
            locked = session.get(Federation, federation_id, with_for_update=True)
            assert locked is not None
            if locked.state == CREATED:
                FEDERATION.move(locked, RUNNING, f"round {number} began")
            locked.current_round = max(locked.current_round, number)
            locked.global_sha256 = digest
            session.add(locked)
            state = row.state
        self._wake()
        return {"federation": federation_id, "round": number, "state": state}

    @staticmethod
    def _deadline(raw: Any, round_deadline: float) -> str:
        """The coordinator's deadline, held to the spec's round deadline from now (a deadline
        far ahead would keep a round, and its trainer, waiting)."""
        latest = utcnow() + timedelta(seconds=round_deadline + DEADLINE_MARGIN_SECONDS)
        try:
            asked = as_utc(datetime.fromisoformat(str(raw)))
        except ValueError:
            asked = latest
        return min(asked, latest).isoformat()

    def on_stop(self, sender: str, federation_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The coordinator ended the federation (completed or cancelled): stop training for it."""
        fed = self._own(sender, federation_id)
        target = COMPLETED if body.get("outcome") == "completed" else CANCELLED
        reason = str(body.get("reason") or "ended by the coordinator")[:500]
        with transaction(self.engine) as session:
            locked = session.get(Federation, federation_id, with_for_update=True)
            assert locked is not None
            if not FEDERATION.allowed(locked.state, target):
                return self._status(locked)
            FEDERATION.move(locked, target, f"the coordinator says: {reason}")
            for row in session.exec(
                select(Contribution).where(
                    Contribution.federation_id == federation_id,
                    Contribution.role == "provider",
                    Contribution.state == PENDING,
                )
            ):
                CONTRIBUTION.move(row, "STOPPED", "the federation ended")
                session.add(row)
            session.add(locked)
            fed = locked
        self.secagg.forget(federation_id)
        self._wake()
        return self._status(fed)

    def _own(self, sender: str, federation_id: str) -> Federation:
        with Session(self.engine) as session:
            return fetch(
                session,
                Federation,
                federation_id,
                f"no federation {federation_id} with this node as provider",
                where=lambda f: f.role == "provider" and f.coordinator.lower() == sender.lower(),
            )

    def _status(self, fed: Federation) -> dict[str, Any]:
        return {
            "federation": fed.id,
            "state": fed.state,
            "reason": fed.reason,
            "num_train": int(fed.result.get("num_train", 0)),
            "dataset_sha256": fed.dataset_sha256,
            "offering": fed.offering_id,
        }
