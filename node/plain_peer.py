"""A small Dataspace Protocol consumer that knows nothing of Agora: DSP 2025-1 and DCP only.

The demo, the negotiation benchmark and the tests use it to show an Agora node working
with another connector. It has its own P-256 key and ``did:web`` (its DID document, its
``/.well-known/dspace-version`` and its DSP callbacks are served by a loopback HTTP server),
sends self-issued ID tokens (ES256) as ``Authorization: Bearer …``, and holds no chain and no
Agora code: it reads the catalog, echoes an offer as its request, verifies the agreement
when it comes, requests a pull transfer, fetches the bytes from the data address with its
token and completes. Everything it receives is kept in :attr:`PlainPeer.received`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

DSP = "https://w3id.org/dspace/2025/1/context.jsonld"


class PlainPeer:
    """One plain DSP connector on ``127.0.0.1``; use as a context manager."""

    def __init__(self, name: str = "Gamma Research") -> None:
        self.name = name
        self.key = ECKey.generate_key("P-256")
        self.received: list[dict[str, Any]] = []
        self.retried: list[str] = []
        self._changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.did = f"did:web:127.0.0.1%3A{self.port}"
        self.dsp = f"{self.url}/dsp"
        self.kid = f"{self.did}#key-1"
        # a new connection per request: a kept-alive one the node closed while idle would reset
        self.http = httpx.Client(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0))

    def __enter__(self) -> PlainPeer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    # Its identity -------------------------------------------------------------------------

    def did_document(self) -> dict[str, Any]:
        public = {k: v for k, v in self.key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": self.did,
            "verificationMethod": [
                {"id": self.kid, "type": "JsonWebKey2020", "controller": self.did, "publicKeyJwk": public}
            ],
            "authentication": [self.kid],
            "capabilityInvocation": [self.kid],
            "service": [
                {
                    "id": f"{self.did}#dsp",
                    "type": "DataService",
                    "serviceEndpoint": f"{self.url}/.well-known/dspace-version",
                }
            ],
        }

    def token(self, audience: str) -> str:
        """A self-issued ID token for ``audience`` (the provider's DID)."""
        now = int(time.time())
        claims = {
            "iss": self.did,
            "sub": self.did,
            "aud": audience,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 300,
        }
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        return str(jws.serialize_compact(header, json.dumps(claims).encode(), self.key, algorithms=["ES256"]))

    # As a consumer ------------------------------------------------------------------------

    def post(self, provider: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
        """POST a message; a 503 (the provider busy) is sent again, as connectors retry a
        dispatch, up to three times with a fresh token, and its answer kept in :attr:`retried`."""

        def send() -> httpx.Response:
            headers = {"Authorization": f"Bearer {self.token(provider['did'])}"}
            return self.http.post(provider["dsp"] + path, json=body, headers=headers)

        response = send()
        for delay in (0.2, 0.4, 0.8):
            if response.status_code != 503:
                break
            self.retried.append(f"{path}: {response.text[:300]}")
            time.sleep(delay)
            response = send()
        return response

    def discover(self, url: str) -> dict[str, str]:
        """A provider by its URL: its DSP base (version metadata) and DID (did:web of the URL)."""
        versions = self.http.get(url.rstrip("/") + "/.well-known/dspace-version").json()["protocolVersions"]
        path = next(v["path"] for v in versions if v["version"] == "2025-1")
        host = url.split("://", 1)[1].rstrip("/").replace(":", "%3A")
        return {"dsp": url.rstrip("/") + path, "did": f"did:web:{host}"}

    def catalog(self, provider: dict[str, str]) -> dict[str, Any]:
        reply = self.post(provider, "/catalog/request", {"@context": [DSP], "@type": "CatalogRequestMessage"})
        reply.raise_for_status()
        return dict(reply.json())

    def negotiate(
        self, provider: dict[str, str], dataset: dict[str, Any], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Request the dataset's first offer as it stands; verify the agreement; wait for FINALIZED.
        Returns the agreement (or raises with the termination's reason)."""
        pid = f"urn:uuid:{uuid.uuid4()}"
        offer = {**dataset["hasPolicy"][0], "target": dataset["@id"]}
        reply = self.post(
            provider,
            "/negotiations/request",
            {
                "@context": [DSP],
                "@type": "ContractRequestMessage",
                "consumerPid": pid,
                "offer": offer,
                "callbackAddress": self.dsp,
            },
        )
        reply.raise_for_status()
        provider_pid = reply.json()["providerPid"]
        agreement = self.wait_for(
            pid, ("ContractAgreementMessage", "ContractNegotiationTerminationMessage"), timeout
        )
        if agreement["@type"] != "ContractAgreementMessage":
            raise RuntimeError(f"the provider terminated: {agreement.get('reason')}")
        ok = self.post(
            provider,
            f"/negotiations/{provider_pid}/agreement/verification",
            {
                "@context": [DSP],
                "@type": "ContractAgreementVerificationMessage",
                "providerPid": provider_pid,
                "consumerPid": pid,
            },
        )
        ok.raise_for_status()
        final = self.wait_for(
            pid, ("ContractNegotiationEventMessage", "ContractNegotiationTerminationMessage"), timeout
        )
        if final.get("eventType") != "FINALIZED":
            raise RuntimeError(f"the negotiation did not finalize: {final}")
        return dict(agreement["agreement"])

    def transfer(self, provider: dict[str, str], agreement_id: str, timeout: float = 60.0) -> bytes:
        """A pull transfer under ``agreement_id``: request, wait for the start, fetch, complete."""
        pid = f"urn:uuid:{uuid.uuid4()}"
        reply = self.post(
            provider,
            "/transfers/request",
            {
                "@context": [DSP],
                "@type": "TransferRequestMessage",
                "consumerPid": pid,
                "agreementId": agreement_id,
                "format": "HttpData-PULL",
                "callbackAddress": self.dsp,
            },
        )
        reply.raise_for_status()
        process = reply.json()
        start = self.wait_for(pid, ("TransferStartMessage", "TransferTerminationMessage"), timeout)
        if start["@type"] != "TransferStartMessage":
            raise RuntimeError(f"the provider terminated the transfer: {start.get('reason')}")
        address = start["dataAddress"]
        token = next(p["value"] for p in address["endpointProperties"] if p["name"] == "authorization")
        data = self.http.get(address["endpoint"], headers={"Authorization": f"Bearer {token}"})
        data.raise_for_status()
        done = self.post(
            provider,
            f"/transfers/{process['providerPid']}/completion",
            {
                "@context": [DSP],
                "@type": "TransferCompletionMessage",
                "providerPid": process["providerPid"],
                "consumerPid": pid,
            },
        )
        done.raise_for_status()
        return data.content

    def wait_for(self, pid: str, types: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """The first message about ``pid`` of one of ``types`` that arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.received:
                    if message.get("consumerPid") == pid and message.get("@type") in types:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {' or '.join(types)} for {pid} within {timeout:.0f} s")
                self._changed.wait(left)

    # Its server ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _answer(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path == "/.well-known/did.json":
                    self._answer(200, peer.did_document())
                elif self.path == "/.well-known/dspace-version":
                    self._answer(
                        200, {"protocolVersions": [{"version": "2025-1", "path": "/dsp", "binding": "HTTPS"}]}
                    )
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    message = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._answer(400, {"error": "not JSON"})
                    return
                if self.path == "/dsp/catalog/request":  # a consumer only: it offers nothing
                    self._answer(
                        200,
                        {
                            "@context": [DSP],
                            "@type": "Catalog",
                            "@id": f"urn:uuid:{uuid.uuid4()}",
                            "participantId": peer.did,
                            "dataset": [],
                        },
                    )
                    return
                with peer._changed:
                    peer.received.append(message)
                    peer._changed.notify_all()
                pids = {k: message[k] for k in ("providerPid", "consumerPid") if k in message}
                kind = "TransferProcess" if "/transfers/" in self.path else "ContractNegotiation"
                self._answer(200, {"@context": [DSP], "@type": kind, **pids})

        return Handler
