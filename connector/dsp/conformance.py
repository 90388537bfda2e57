"""The conformance profile: this node as the Eclipse DSP TCK (2025-1) expects a connector
under test to behave, so the TCK can be pointed at it unchanged.

The TCK sends no hint of what a case expects: it names a dataset (contract negotiations),
an agreement (transfers) or, as provider, its own dataset, and the connector must do by
itself what the case's script says (offer, agree, terminate, suspend … or nothing). So the
profile keys its behaviour on those ids, the ones of the TCK's sample configuration:

* the choices DSP leaves to each side (:data:`NEGOTIATION_OPTIONS`, :data:`TRANSFER_OPTIONS`)
  become the per-negotiation and per-transfer options the node already honours;
* the scripts that take more than one reaction (:data:`SCRIPTS`: offer, then terminate;
  start, suspend, resume, complete) are played by :class:`ScriptWorker`, one step at a time,
  each once its record has stood :data:`STEP_DELAY` seconds in the state that calls for it
  (the TCK registers the handler of the next message only after it saw the previous one);
* the TCK's consumer-side cases start through two initiation routes, ``POST
  /dsp/tck/negotiations`` and ``POST /dsp/tck/transfers``, with the plain JSON bodies the
  TCK sends and its configured ``Authorization`` value.

The profile is on only with ``AGORA_DSP_CONFORMANCE=true`` *and* a test connector configured
(``AGORA_DSP_TEST_PARTICIPANT`` / ``_TOKEN`` / ``_CALLBACK``): it is for conformance runs,
never for a node in a data space. What it seeds is in :mod:`connector.dsp.conformance_seed`.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from litestar import Request, post
from sqlmodel import Session, col, select

from connector.dsp.conformance_seed import ACTOR, seed
from connector.models import Negotiation, OutboundMessage, TransferProcess
from connector.negotiation.states import FINAL
from kernel.errors import AgoraError, FieldError, InvalidInput, NotFound, Unauthorized
from kernel.lifecycle import IllegalTransition
from kernel.worker import BackgroundWorker

if TYPE_CHECKING:
    from connector.dsp.gate import TestPeer
    from node.runtime import Runtime

log = logging.getLogger("agora.conformance")
STEP_DELAY = 0.5  # seconds a record stands in a state before the script's next step
TICK = 0.2

# What each side chooses, by the dataset the negotiation is on (tck-dsp cases CN, CN_C).
NEGOTIATION_OPTIONS: dict[str, dict[str, dict[str, str]]] = {
    "provider": {
        "ACN0101": {"on_request": "offer"},
        "ACN0102": {"on_request": "offer", "on_counter_request": "terminate"},
        "ACN0103": {"on_request": "offer"},
        "ACN0201": {"on_request": "terminate"},
        "ACN0202": {"on_request": "wait"},
        "ACN0204": {"on_request": "offer"},
        "ACN0205": {"on_request": "offer"},  # then terminates (SCRIPTS)
        "ACN0206": {"on_request": "offer", "on_accepted": "terminate"},
        "ACN0207": {"on_verification": "terminate"},
        "ACN0302": {"on_request": "offer"},
        "ACN0303": {"on_request": "offer", "on_accepted": "wait"},
        "ACN0304": {"on_request": "offer", "on_counter_request": "wait"},
    },
    "consumer": {
        "ACNC0101": {"on_offer": "accept"},
        "ACNC0102": {"on_offer": "request"},
        "ACNC0103": {"on_offer": "terminate"},
        "ACNC0203": {"on_agreement": "terminate"},
        "ACNC0205": {"on_offer": "accept"},
        "ACNC0304": {"on_offer": "accept"},
        "ACNC0305": {"on_offer": "accept"},
        "ACNC0306": {"on_offer": "accept", "on_agreement": "wait"},
    },
}
# What the provider does with a transfer request, by agreement (tck-dsp cases TP).
TRANSFER_OPTIONS: dict[str, dict[str, str]] = {
    "ATP0105": {"on_request": "terminate"},
    "ATP0205": {"on_request": "wait"},
    "ATP0301": {"on_request": "wait"},
    "ATP0302": {"on_request": "wait"},
}


@dataclass(frozen=True)
class Step:
    state: str  # the state the record must stand in
    action: str  # terminate | suspend | resume | complete


# The multi-step scripts, by dataset (negotiations) or agreement (transfers).
SCRIPTS: dict[str, tuple[Step, ...]] = {
    "ACN0205": (Step("OFFERED", "terminate"),),
    "ACNC0202": (Step("REQUESTED", "terminate"),),
    "ATP0101": (Step("STARTED", "terminate"),),
    "ATP0102": (Step("STARTED", "complete"),),
    "ATP0103": (Step("STARTED", "suspend"), Step("SUSPENDED", "terminate")),
    "ATP0104": (Step("STARTED", "suspend"), Step("SUSPENDED", "resume"), Step("STARTED", "complete")),
    "ATPC0201": (Step("STARTED", "terminate"),),
    "ATPC0202": (Step("STARTED", "complete"),),
    "ATPC0203": (Step("STARTED", "suspend"), Step("SUSPENDED", "terminate")),
    "ATPC0205": (Step("REQUESTED", "terminate"),),
}
TRANSFER_FINAL = ("COMPLETED", "TERMINATED")


def negotiation_options(role: str, offering_id: str) -> dict[str, str]:
    return dict(NEGOTIATION_OPTIONS.get(role, {}).get(offering_id, {}))


def transfer_options(agreement_id: str) -> dict[str, str]:
    return dict(TRANSFER_OPTIONS.get(agreement_id, {}))


class ScriptWorker(BackgroundWorker):
    """Plays :data:`SCRIPTS`: each step once, in order, when its record has stood
    :data:`STEP_DELAY` seconds in the step's state with its messages delivered (the peer has
    seen that state) and knows the peer's pid (a message to the peer names it). Progress is
    kept in memory: a conformance run is one process."""

    name = "agora-conformance"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(TICK)
        self.runtime = runtime
        self._done: dict[str, int] = {}  # record id -> steps taken
        self._since: dict[tuple[str, int, str], float] = {}  # (id, step, state) -> first seen

    def tick(self) -> None:
        now = time.monotonic()
        for record_id, key, state, ready in self._scripted():
            steps = SCRIPTS[key]
            taken = self._done.get(record_id, 0)
            if taken >= len(steps) or steps[taken].state != state or not ready:
                continue
            seen = self._since.setdefault((record_id, taken, state), now)
            if now - seen < STEP_DELAY:
                continue
            self._done[record_id] = taken + 1
            self._act(record_id, key, steps[taken].action)

    def _scripted(self) -> list[tuple[str, str, str, bool]]:
        """(record id, script key, state, ready) of every scripted record in progress; ready: it
        knows the peer's pid and its messages so far were delivered (the peer saw the state)."""
        keys = list(SCRIPTS)
        with Session(self.runtime.engine) as session:
            negotiations = session.exec(
                select(Negotiation).where(
                    col(Negotiation.offering_id).in_(keys), col(Negotiation.state).not_in(FINAL)
                )
            ).all()
            transfers = session.exec(
                select(TransferProcess).where(
                    col(TransferProcess.agreement_id).in_(keys),
                    col(TransferProcess.state).not_in(TRANSFER_FINAL),
                )
            ).all()
            ids = [n.id for n in negotiations] + [t.id for t in transfers]
            sending = set(
                session.exec(
                    select(OutboundMessage.negotiation_id).where(
                        col(OutboundMessage.negotiation_id).in_(ids), OutboundMessage.status == "PENDING"
                    )
                ).all()
            )
            return [
                (n.id, n.offering_id, n.state, bool(n.peer_pid) and n.id not in sending) for n in negotiations
            ] + [(t.id, t.agreement_id, t.state, bool(t.peer_pid) and t.id not in sending) for t in transfers]

    def _act(self, record_id: str, key: str, action: str) -> None:
        runtime = self.runtime
        try:
            if key.startswith("ACN"):
                assert runtime.negotiations is not None
                runtime.negotiations.terminate(record_id, f"the script of {key}", ACTOR)
            else:
                assert runtime.transfers is not None
                runtime.transfers.act(record_id, action, f"the script of {key}", ACTOR)
        except (AgoraError, IllegalTransition) as exc:  # the peer moved it meanwhile
            log.warning("conformance script %s: %s of %s not done: %s", key, action, record_id, exc)


# Initiation routes (the TCK's consumer-side cases) ------------------------------------------


def _profile(request: Request[Any, Any, Any]) -> tuple[Runtime, TestPeer]:
    """The runtime and its test connector, for a request carrying that connector's exact
    ``Authorization`` value; :class:`NotFound` when the profile is off."""
    runtime: Runtime = request.app.state.runtime
    peer = runtime.protocol.test_peer if runtime.protocol is not None else None
    if peer is None or not runtime.settings.dsp_conformance:
        raise NotFound("this node runs no conformance profile")
    given = request.headers.get("authorization") or ""
    if not secrets.compare_digest(given.encode(), peer.token.encode()):
        raise Unauthorized("the conformance initiation routes take the test connector's Authorization value")
    return runtime, peer


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidInput(f"the initiation names {key}", errors=[FieldError(key, "required, ≤ 200 chars")])
    return value


def _provider_named(body: dict[str, Any], peer: TestPeer) -> None:
    provider = _text(body, "providerId")
    if provider != peer.participant:
        raise InvalidInput(
            f"providerId {provider!r} is not the test connector {peer.participant!r}",
            errors=[FieldError("providerId", "not the test connector")],
        )


@post("/dsp/tck/negotiations", tags=["conformance"], status_code=200)
async def initiate_negotiation(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The TCK asks this node, as consumer, to negotiate for its dataset and offer:
    ``{"providerId", "offerId", "datasetId", "connectorAddress"}``."""
    runtime, peer = _profile(request)
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidInput("the initiation is a JSON object")
    _provider_named(body, peer)
    dataset, offer_id = _text(body, "datasetId"), _text(body, "offerId")
    provider = runtime.participants.get(peer.address)
    if provider is None or runtime.negotiations is None:
        raise NotFound("the test connector is not a participant of this node yet")
    negotiations = runtime.negotiations
    offer = {"@id": offer_id, "@type": "Offer", "target": dataset, "permission": [{"action": "use"}]}

    def start() -> dict[str, Any]:
        return negotiations.start(
            offering_id=dataset,
            provider=provider,
            purpose="",
            access_mode="download",
            actor=ACTOR,
            offer=offer,
        )

    started = await to_thread.run_sync(start)
    return {"consumerPid": started["id"], "state": started["state"]}


@post("/dsp/tck/transfers", tags=["conformance"], status_code=200)
async def initiate_transfer(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The TCK asks this node, as consumer, for a transfer under an agreement it holds:
    ``{"providerId", "agreementId", "format", "connectorAddress"}``."""
    runtime, peer = _profile(request)
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidInput("the initiation is a JSON object")
    _provider_named(body, peer)
    agreement_id, fmt = _text(body, "agreementId"), _text(body, "format")
    transfers = runtime.transfers
    if transfers is None:
        raise NotFound("this node runs no transfers")
    requested = await to_thread.run_sync(lambda: transfers.request(agreement_id, ACTOR, format=fmt))
    return {"consumerPid": requested["id"], "state": requested["state"]}


# Wiring -------------------------------------------------------------------------------------


def install(runtime: Runtime) -> ScriptWorker | None:
    """Turn the profile on when it is configured: the options, the seeded records and the
    script worker (returned, for the runtime to stop); None when it is off."""
    peer = runtime.protocol.test_peer if runtime.protocol is not None else None
    if peer is None or not runtime.settings.dsp_conformance:
        return None
    log.warning(
        "conformance profile on: the DSP TCK's datasets, agreements and scripts (%s)", peer.participant
    )
    runtime.negotiation_options.append(negotiation_options)
    runtime.transfer_options.append(transfer_options)
    seed(runtime, peer)
    worker = ScriptWorker(runtime)
    worker.start()
    return worker


api_handlers: list[object] = []
public_handlers: list[object] = [initiate_negotiation, initiate_transfer]
