"""The coordinator's side of a federation: create, start, cancel, and what providers push back.

``create`` checks the spec against this node's federate agreements (each provider a peer the
operator added, each agreement for federated learning), takes the initial weights (the spec's
file, or the bundle factory's own on the seed, built in this node's sandbox), and invites every
provider with the bundle bound to the signed message. ``start`` hands the federation to the
:class:`~federation.rounds.RoundDriver`. An update pushed by a provider is accepted only for
the round that is open, from a provider selected for it, for the global weights it was given;
one that comes after the round closed is recorded LATE with the reason and not used.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.dsp.client import PeerClient, PeerClients
from connector.models import Agreement, Participant
from federation import tensors
from federation.models import (
    CANCELLED,
    CONTRIBUTION,
    CREATED,
    FAILED,
    FEDERATION,
    INVITED,
    JOINED,
    LATE,
    MEMBER,
    OPEN,
    READY,
    RECEIVED,
    REFUSED,
    RUNNING,
    STOPPED,
    Contribution,
    Federation,
    FederationMember,
    FederationRound,
)
from federation.provider import federation_view
from federation.secagg_protocol import is_secure, secure_view
from federation.secagg_rounds import SecAggRounds
from federation.spec import MAX_ROUNDS, FederationSpec
from kernel.db import fetch, transaction
from kernel.errors import AgoraError, Conflict, FieldError, InvalidInput
from kernel.lifecycle import entry
from kernel.outbound import OutboundClient
from kernel.storage import ObjectStore
from training_jobs import bundle as bundles

MAX_REASON = 500


class Coordinator:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        *,
        address: str,
        peers: PeerClients,
        outbound: OutboundClient,
        initial_weights: Callable[[FederationSpec, bytes], tensors.Weights],
        provenance: Callable[[str], dict[str, Any]] = lambda key: {},
        wake_driver: Callable[[], None] = lambda: None,
    ) -> None:
        self._provenance = provenance
        self.engine = engine
        self.store = store
        self.address = address
        self.peers = peers
        self.outbound = outbound
        self._initial_weights = initial_weights
        self._wake = wake_driver
        self.secagg = SecAggRounds(self)  # the stages of securely aggregated rounds

    def client(self, endpoint: str, peer: str) -> PeerClient:
        """A member's node at the DSP base it advertises (``endpoint`` is its node URL)."""
        return self.peers.to(peer)

    # -- create -------------------------------------------------------------------------------

    def create(
        self, spec: FederationSpec, bundle: bytes, initial: bytes | None, actor: str
    ) -> dict[str, Any]:
        members = self._members(spec)
        bundles.list_members(bundle)
        spec.model.digest = bundles.digest(bundle)
        if initial is not None:
            weights = tensors.decode(initial, what="the initial weights")
        else:
            weights = self._initial_weights(spec, bundle)
        names = list(weights)
        layout = tensors.layout(weights)
        if not layout or any(dtype not in tensors.ALLOWED_DTYPES for _, dtype in layout.values()):
            raise InvalidInput(
                f"the initial weights must hold tensors of {', '.join(tensors.ALLOWED_DTYPES)}"
            )
        blob = tensors.encode(tensors.in_order(weights, names))
        self.store.put_bytes(blob)
        self.store.put_bytes(bundle)
        fed = Federation(
            id=f"urn:uuid:{uuid.uuid4()}",
            role="coordinator",
            name=spec.name,
            coordinator=self.address,
            spec=spec.model_dump(mode="json"),
            code_digest=spec.model.digest,
            layout={name: [shape, dtype] for name, (shape, dtype) in layout.items()},
            initial_sha256=tensors.sha256_bytes(blob),
            global_sha256=tensors.sha256_bytes(blob),
            result={"created_by": actor},
        )
        fed.history = [entry(CREATED, f"inviting {len(members)} providers")]
        with transaction(self.engine) as session:
            session.add(fed)
            for member in members:
                member.federation_id = fed.id
                member.history = [entry(INVITED, "invitation sent")]
                session.add(member)
        self._invite(fed, spec, bundle)
        return self.get(fed.id)

    def _members(self, spec: FederationSpec) -> list[FederationMember]:
        members: list[FederationMember] = []
        with Session(self.engine) as session:
            for index, item in enumerate(spec.providers):
                where = f"providers[{index}].agreement"
                agreement = session.get(Agreement, item.agreement.lower())
                if agreement is None or agreement.role != "consumer":
                    raise InvalidInput(
                        f"no agreement {item.agreement} with this node as consumer",
                        errors=[FieldError(where, "unknown agreement")],
                    )
                if agreement.terms.get("accessMode") != "federate":
                    raise InvalidInput(
                        f"agreement {item.agreement} is for {agreement.terms.get('accessMode')}, "
                        "not federated learning: negotiate with --mode federate",
                        errors=[FieldError(where, "not a federate agreement")],
                    )
                peer = session.get(Participant, agreement.provider)
                if peer is None or not peer.trusted:
                    raise InvalidInput(
                        f"the agreement's provider {agreement.provider} is not a peer of this node: "
                        "`agora peers add` its URL first",
                        errors=[FieldError(where, "provider is not a peer")],
                    )
                if any(m.provider == agreement.provider for m in members):
                    raise InvalidInput(
                        f"two agreements name the provider {agreement.provider}: one per provider",
                        errors=[FieldError(where, "provider named twice")],
                    )
                members.append(
                    FederationMember(
                        federation_id="",
                        provider=agreement.provider,
                        provider_name=peer.name,
                        endpoint=peer.endpoint.rstrip("/"),
                        agreement_id=agreement.id,
                        offering_id=agreement.offering_id,
                        dataset_sha256=str(agreement.terms.get("sha256", "")),
                    )
                )
        return members

    def _invite(self, fed: Federation, spec: FederationSpec, bundle: bytes) -> None:
        with Session(self.engine) as session:
            members = session.exec(
                select(FederationMember).where(FederationMember.federation_id == fed.id)
            ).all()
        wire = spec.wire()

        def invite(member: FederationMember) -> tuple[int | None, str, str, dict[str, Any]]:
            body = {
                "type": "FederationInvite",
                "federation": fed.id,
                "agreement": member.agreement_id,
                "spec": wire,
                "layout": fed.layout,
            }
            try:
                reply = self.client(member.endpoint, member.provider).post_blob("/federations", body, bundle)
            except AgoraError as exc:
                return member.id, REFUSED, f"the provider could not be reached: {exc.detail}"[:MAX_REASON], {}
            joined = reply.get("state") == CREATED
            return (
                member.id,
                JOINED if joined else REFUSED,
                str(reply.get("reason") or "")[:MAX_REASON],
                reply,
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(invite, members))
        with transaction(self.engine) as session:
            joined = 0
            for member_id, state, reason, reply in outcomes:
                member = session.get(FederationMember, member_id)
                assert member is not None
                MEMBER.move(member, state, reason or state.lower())
                rows = reply.get("num_train")
                member.num_train = (
                    rows if state == JOINED and isinstance(rows, int) and 0 <= rows < 2**53 else 0
                )
                joined += state == JOINED
                session.add(member)
            locked = session.get(Federation, fed.id, with_for_update=True)
            assert locked is not None
            if joined >= spec.min_participants:
                FEDERATION.move(locked, READY, f"{joined} of {len(members)} providers joined")
            else:
                refusals = "; ".join(f"{r}" for _, s, r, _ in outcomes if s != JOINED)
                FEDERATION.move(
                    locked,
                    FAILED,
                    f"only {joined} providers joined, {spec.min_participants} needed: {refusals}"[:2000],
                )
            session.add(locked)
        if locked.state == FAILED:
            self._tell_providers(locked.id, "cancelled", locked.reason)

    # -- start / cancel -------------------------------------------------------------------------

    def start(self, federation_id: str, actor: str) -> dict[str, Any]:
        with transaction(self.engine) as session:
            fed = self._own(session, federation_id, lock=True)
            if fed.state != READY:
                raise Conflict(f"federation {federation_id} is {fed.state}, not READY: {fed.reason}")
            FEDERATION.move(fed, RUNNING, f"started by {actor}")
            session.add(fed)
        self._wake()
        return self.get(federation_id)

    def cancel(self, federation_id: str, actor: str) -> dict[str, Any]:
        with transaction(self.engine) as session:
            fed = self._own(session, federation_id, lock=True)
            if fed.state in FEDERATION.final:
                return self.get(federation_id)
            FEDERATION.move(fed, CANCELLED, f"cancelled by {actor}")
            for rnd in session.exec(
                select(FederationRound).where(
                    FederationRound.federation_id == fed.id, FederationRound.state == OPEN
                )
            ):
                from federation.models import ROUND

                ROUND.move(rnd, CANCELLED, "the federation was cancelled")
                session.add(rnd)
            session.add(fed)
        self._tell_providers(federation_id, "cancelled", f"cancelled by the coordinator ({actor})")
        return self.get(federation_id)

    def _tell_providers(self, federation_id: str, outcome: str, reason: str) -> None:
        with Session(self.engine) as session:
            members = session.exec(
                select(FederationMember).where(
                    FederationMember.federation_id == federation_id, FederationMember.state == JOINED
                )
            ).all()

        def tell(member: FederationMember) -> None:
            with contextlib.suppress(AgoraError):  # the provider's own deadline ends its part
                self.client(member.endpoint, member.provider).post(
                    f"/federations/{federation_id}/stop",
                    {"federation": federation_id, "outcome": outcome, "reason": reason[:MAX_REASON]},
                )

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(tell, members))

    # -- updates from providers -------------------------------------------------------------------

    def on_update(self, sender: str, federation_id: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        number = body.get("round")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_ROUNDS + 1:
            raise InvalidInput("an update names its round", errors=[FieldError("round", "required")])
        with transaction(self.engine) as session:
            fed = self._own(session, federation_id)
            row = session.exec(
                select(Contribution)
                .where(
                    Contribution.federation_id == fed.id,
                    Contribution.role == "coordinator",
                    Contribution.round_number == number,
                    col(Contribution.provider) == sender,
                )
                .with_for_update()
            ).first()
            if row is None:
                raise InvalidInput(f"this node asked {sender} for no update in round {number}")
            if row.state in CONTRIBUTION.final:
                return {"state": row.state, "reason": row.reason}
            if body.get("global_sha256") != row.global_in:
                raise InvalidInput("the update was trained from other global weights than this round's")
            if blob and is_secure(row.config):  # refused before anything of it is kept
                raise InvalidInput(
                    f"round {number} is securely aggregated: an update leaves its provider only masked, "
                    "never in the clear"
                )
            rnd = session.exec(
                select(FederationRound).where(
                    FederationRound.federation_id == fed.id, FederationRound.number == number
                )
            ).first()
            self._record(row, body, blob, fed)
            if rnd is None or rnd.state != OPEN or fed.state != RUNNING:
                why = (
                    f"round {number} had closed ({rnd.state if rnd else 'gone'}: {rnd.reason if rnd else ''})"
                )
                CONTRIBUTION.move(row, LATE, f"late, recorded and not used: {why}"[:2000])
            else:
                state = str(body.get("state") or "")
                if state in (FAILED, STOPPED):
                    reason = str(body.get("reason") or "no reason given")[:MAX_REASON]
                    CONTRIBUTION.move(row, state, f"the provider says: {reason}")
                    if state == STOPPED:
                        member = session.exec(
                            select(FederationMember).where(
                                FederationMember.federation_id == fed.id, FederationMember.provider == sender
                            )
                        ).first()
                        if member is not None and MEMBER.allowed(member.state, STOPPED):
                            MEMBER.move(member, STOPPED, reason)
                            session.add(member)
                else:
                    if not blob and not row.config.get("evaluate_only"):
                        raise InvalidInput("an update carries its weights")
                    CONTRIBUTION.move(row, RECEIVED, "the update arrived in time")
                    epsilon = row.privacy.get("epsilon")
                    if isinstance(epsilon, (int, float)):
                        member = session.exec(
                            select(FederationMember).where(
                                FederationMember.federation_id == fed.id, FederationMember.provider == sender
                            )
                        ).first()
                        if member is not None:
                            member.epsilon = float(epsilon)
                            session.add(member)
            session.add(row)
            reply = {"state": row.state, "reason": row.reason}
        self._wake()
        return reply

    def _record(self, row: Contribution, body: dict[str, Any], blob: bytes, fed: Federation) -> None:
        """What the provider sent, checked: weights of the federation's layout, bounded figures."""
        layout = {name: (list(v[0]), str(v[1])) for name, v in fed.layout.items()}
        if blob:
            weights = tensors.decode(blob, what="the update")
            cap = int(fed.spec.get("max_update_bytes") or 0) or 4 * _layout_bytes(layout) + 1024
            tensors.check_update(weights, layout, max_bytes=cap, what="the update")
            self.store.put_bytes(blob)
            row.update_sha256 = tensors.sha256_bytes(blob)
        count = body.get("num_examples")
        row.num_examples = (
            count if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**53 else 0
        )
        row.fit_metrics = _figures(body.get("fit_metrics"))
        row.eval_metrics = _figures(body.get("eval_metrics"))
        row.privacy = _privacy(body.get("privacy"))
        seconds = body.get("train_seconds")
        row.train_seconds = (
            float(seconds) if isinstance(seconds, (int, float)) and 0 <= seconds < 1e7 else 0.0
        )
        row.bytes_in = len(blob)

    # -- reading ----------------------------------------------------------------------------------

    def _own(self, session: Session, federation_id: str, *, lock: bool = False) -> Federation:
        return fetch(
            session,
            Federation,
            federation_id,
            f"no federation {federation_id} coordinated by this node",
            where=lambda f: f.role == "coordinator",
            lock=lock,
        )

    def get(self, federation_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            fed = fetch(session, Federation, federation_id, f"no federation {federation_id} on this node")
            members = session.exec(
                select(FederationMember).where(FederationMember.federation_id == fed.id)
            ).all()
        view = federation_view(fed)
        view["members"] = [
            {
                "provider": m.provider,
                "name": m.provider_name,
                "endpoint": m.endpoint,
                "agreement": m.agreement_id,
                "dataset_sha256": m.dataset_sha256,
                "num_train": m.num_train,
                "state": m.state,
                "reason": m.reason,
                "epsilon": m.epsilon,
            }
            for m in members
        ]
        return view

    def artifact(self, federation_id: str, artifact: str) -> tuple[str, int]:
        """(sha256, size) of the final model: ``onnx`` or the safetensors ``weights``."""
        with Session(self.engine) as session:
            fed = self._own(session, federation_id)
        if fed.state != "COMPLETED":
            raise Conflict(f"federation {federation_id} is {fed.state}: the model exists once it completed")
        key = "onnx" if artifact == "onnx" else "model"
        sha = fed.result.get(f"{key}_sha256")
        if not sha:
            raise Conflict(
                f"federation {federation_id} has no ONNX model: "
                f"{fed.result.get('onnx_error', 'not translated')}"
            )
        return str(sha), int(fed.result.get(f"{key}_size") or self.store.size(str(sha)))

    def provenance(self, federation_id: str, artifact: str) -> dict[str, Any]:
        """The provenance document of the final model: its rounds and the federation's anchor."""
        sha, _ = self.artifact(federation_id, artifact)
        return self._provenance(sha)

    def list_all(self, state: str | None = None) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            query = select(Federation).order_by(col(Federation.created_at).desc()).limit(500)
            if state:
                query = query.where(Federation.state == state)
            return [federation_view(f) for f in session.exec(query).all()]

    def rounds(self, federation_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            fetch(session, Federation, federation_id, f"no federation {federation_id} on this node")
            rounds = session.exec(
                select(FederationRound)
                .where(FederationRound.federation_id == federation_id)
                .order_by(col(FederationRound.number))
            ).all()
            parts = session.exec(
                select(Contribution)
                .where(Contribution.federation_id == federation_id)
                .order_by(col(Contribution.round_number))
            ).all()
        by_round: dict[int, list[Contribution]] = {}
        for part in parts:
            by_round.setdefault(part.round_number, []).append(part)
        return [
            {
                "round": r.number,
                "state": r.state,
                "reason": r.reason,
                "global_in": r.global_in,
                "global_out": r.global_out,
                "merkle_root": r.merkle_root,
                "participants": r.participants,
                "metrics": r.metrics,
                "asset_id": r.asset_id,
                "secure_aggregation": secure_view(r.config),
                "started_at": r.started_at.isoformat(),
                "ended_at": r.ended_at.isoformat() if r.ended_at else None,
                "contributions": [
                    {
                        "provider": p.provider,
                        "state": p.state,
                        "reason": p.reason,
                        "num_examples": p.num_examples,
                        "fit_metrics": p.fit_metrics,
                        "eval_metrics": p.eval_metrics,
                        "privacy": p.privacy,
                        "update_sha256": p.update_sha256,
                        "train_seconds": p.train_seconds,
                    }
                    for p in by_round.get(r.number, [])
                ],
            }
            for r in rounds
        ]


def _privacy(raw: Any) -> dict[str, Any]:
    """A provider's privacy figures, typed and bounded (they are its word, shown as such)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    for key in ("epsilon", "node_epsilon", "delta"):
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9:
            out[key] = float(value)
    rounds = raw.get("rounds")
    if isinstance(rounds, int) and not isinstance(rounds, bool) and 0 <= rounds < 10**6:
        out["rounds"] = rounds
    if isinstance(raw.get("note"), str):
        out["note"] = raw["note"][:200]
    return out


def _figures(raw: Any) -> dict[str, float]:
    """At most 8 finite numbers under short names: all a provider's figures may be."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in list(raw.items())[:8]:
        if (
            isinstance(key, str)
            and len(key) <= 40
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and abs(float(value)) < 1e12
        ):
            out[key] = float(f"{float(value):.4g}")
    return out


def _layout_bytes(layout: dict[str, tuple[list[int], str]]) -> int:
    import numpy as np

    return sum(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in layout.values()
    )


__all__ = ["Coordinator", "Path"]
