"""A test peer that plays the Eclipse DSP TCK (2025-1) against a node: its HTTP server on
loopback is the TCK's DSP base and callback address, and it talks to the node as the TCK
does, with one fixed ``Authorization`` value and the compacted messages of the TCK's
builders (tck-dsp.md §3.1).

Like the TCK's own server it answers only what a case registered for that step (one
message per handler; anything else gets 404 "No handler registered on this endpoint"),
and it records every message that arrives so a case can check that the node sent what the
case expects, in the DSP 2025-1 shapes (:func:`check_schema`), and nothing more.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from tests import dsp
from tests.services import LoopbackHTTP

DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
CONTEXT = [DSP_CONTEXT]
PARTICIPANT = "TCK_PARTICIPANT"
# the sample properties' value as Java reads it: the quotes are part of it
TOKEN = '"{"region": "any", "audience": "any", "clientId":"any"}"'
WAIT = 15.0  # the TCK's default wait per step (dataspacetck.dsp.default.wait)
QUIET = 1.3  # seconds without a message after which a case's traffic is over

SCHEMAS = {
    "Catalog": "catalog/catalog-schema.json",
    "Dataset": "catalog/dataset-schema.json",
    "CatalogError": "catalog/catalog-error-schema.json",
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": "negotiation/contract-agreement-verification-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": "negotiation/contract-negotiation-termination-message-schema.json",
    "ContractNegotiation": "negotiation/contract-negotiation-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferError": "transfer/transfer-error-schema.json",
}

Reply = Callable[[dict[str, Any]], dict[str, Any] | None]


def check_schema(document: Any, expected_type: str | None = None) -> None:
    """What the TCK checks of every document it reads: a JSON object whose ``@context`` is a
    list naming the DSP 2025-1 context, one compact ``@type`` string, valid under its schema."""
    assert isinstance(document, dict), document
    assert isinstance(document.get("@context"), list) and DSP_CONTEXT in document["@context"], document
    kind = document.get("@type")
    assert isinstance(kind, str), f"@type must be one compact string: {document}"
    if expected_type is not None:
        assert kind == expected_type, document
    assert kind in SCHEMAS, f"no DSP schema for {kind}"
    assert dsp.errors(SCHEMAS[kind], document) == [], (dsp.errors(SCHEMAS[kind], document), document)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Arrival:
    path: str
    body: dict[str, Any]
    handled: bool
    at: float = field(default_factory=time.monotonic)


class TckPeer:
    """The TCK's side: a loopback server (its DSP base) and a client of the node's."""

    def __init__(self) -> None:
        self._handlers: dict[str, Reply] = {}
        self.arrivals: list[Arrival] = []
        self._changed = threading.Condition()
        self.node_dsp = ""  # the node's DSP base, once it runs
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, reply = peer._arrive(self.path.rstrip("/"), raw)
                self._answer(status, reply)

            def do_GET(self) -> None:
                self._answer(404, {"error": "No handler registered on this endpoint"})

            def _answer(self, status: int, reply: dict[str, Any] | None) -> None:
                payload = json.dumps(reply).encode() if reply is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LoopbackHTTP(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()

    # The TCK's server ----------------------------------------------------------------------

    def expect(self, path: str, reply: Reply | None = None) -> None:
        """Answer the next message to ``path`` (200, with ``reply``'s body if any), once."""
        with self._changed:
            self._handlers[path] = reply or (lambda _body: None)

    def _arrive(self, path: str, raw: bytes) -> tuple[int, dict[str, Any] | None]:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = {"unreadable": raw.decode("utf-8", "replace")}
        with self._changed:
            handler = self._handlers.pop(path, None)
            self.arrivals.append(Arrival(path, body, handled=handler is not None))
            self._changed.notify_all()
        if handler is None:
            return 404, {"error": "No handler registered on this endpoint"}
        return 200, handler(body)

    def wait(self, path: str, timeout: float = WAIT, since: int = 0) -> dict[str, Any]:
        """The message a registered handler took at ``path`` (checked against its schema),
        the first since ``arrivals[since]``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((a for a in self.arrivals[since:] if a.path == path and a.handled), None)
                if found is not None:
                    check_schema(found.body)
                    return found.body
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(a.path, a.body.get("@type")) for a in self.arrivals[-5:]]
                    raise AssertionError(f"nothing arrived at {path} within {timeout:g} s; last: {seen}")
                self._changed.wait(left)

    def quiet(self, since: int) -> list[Arrival]:
        """Every message since ``arrivals[since]``, once none came for :data:`QUIET` seconds."""
        while True:
            with self._changed:
                last = self.arrivals[-1].at if len(self.arrivals) > since else 0.0
            idle = time.monotonic() - max(last, self._mark)
            if idle >= QUIET:
                with self._changed:
                    return self.arrivals[since:]
            time.sleep(QUIET - idle)

    _mark = 0.0

    def touch(self) -> None:
        """This side just acted: the node's answer to it may still come."""
        self._mark = time.monotonic()

    # The TCK's client ----------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any], *, error: bool = False) -> httpx.Response:
        """POST a message to the node's DSP base as the TCK does; ``error``: the case expects a
        refusal, which must be 4xx but not 404 (the TCK fails on a 404 and on a 5xx)."""
        response = httpx.post(self.node_dsp + path, json=body, headers={"Authorization": TOKEN}, timeout=WAIT)
        self.touch()
        if error:
            assert 400 <= response.status_code < 500 and response.status_code != 404, response.text
        else:
            assert 200 <= response.status_code < 300, response.text
        if response.content:
            check_schema(response.json())
        return response

    def get(self, path: str) -> dict[str, Any]:
        response = httpx.get(self.node_dsp + path, headers={"Authorization": TOKEN}, timeout=WAIT)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        check_schema(document)
        return document

    def state(self, kind: str, pid: str) -> str:
        """The state the node shows at ``GET /negotiations/{pid}`` or ``/transfers/{pid}``."""
        return str(self.get(f"/{kind}/{pid}")["state"])

    def wait_state(self, kind: str, pid: str, state: str, timeout: float = WAIT) -> None:
        """Poll the node's record until it is in ``state`` (the TCK's TP verification)."""
        deadline = time.monotonic() + timeout
        while (now := self.state(kind, pid)) != state:
            assert time.monotonic() < deadline, f"{kind}/{pid} is {now}, not {state}"
            time.sleep(0.1)

    def initiate(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """The TCK's plain JSON call of an initiation endpoint (no JSON-LD)."""
        response = httpx.post(url, json=body, headers={"Authorization": TOKEN}, timeout=WAIT)
        self.touch()
        assert 200 <= response.status_code < 300, response.text
        return response


class Case:
    """One TCK case's traffic: what it expects to arrive, checked once the node is quiet."""

    def __init__(self, peer: TckPeer) -> None:
        self.peer = peer
        self._start = len(peer.arrivals)
        self.expected: list[str] = []

    def expect(self, path: str, reply: Reply | None = None) -> None:
        self.expected.append(path)
        self.peer.expect(path, reply)

    def wait(self, path: str) -> dict[str, Any]:
        """The message this case's handler at ``path`` took."""
        return self.peer.wait(path, since=self._start)

    def done(self) -> None:
        """Nothing extra: exactly the expected messages arrived, each taken once."""
        arrived = self.peer.quiet(self._start)
        handled = [a for a in arrived if a.handled]
        assert [a.path for a in handled] == self.expected, [(a.path, a.body.get("@type")) for a in arrived]
        # a message sent before the TCK registered its handler is retried by the node (the TCK
        # answered 404); one that no handler ever took is one too many
        assert {a.path for a in arrived} <= set(self.expected), [a.path for a in arrived]
        for arrival in handled:
            check_schema(arrival.body)
