"""The verifier really fetches: DID documents, the holder's Credential Service and the status
list are served by loopback HTTP servers and reached through an OutboundClient; and the
``/dcp`` and ``/api/v1/credentials`` routes answer through Litestar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from litestar import Litestar, Router
from litestar.di import Provide
from litestar.testing import TestClient

from connector.dcp import routes
from connector.dcp.credentials import CredentialRefused, issue_credential, parse_credential
from connector.dcp.presentation import DCP_CONTEXT, CredentialService, credential_service_entry
from connector.dcp.service import DcpService
from connector.dcp.status import encode_status_list
from connector.dcp.stores import HolderStore, TrustedIssuers
from connector.dcp.tokens import mint_access_token, type_scope
from connector.dcp.verifier import Verifier
from connector.dsp.client import resolve_did
from connector.dsp.id_tokens import read_token
from kernel.addresses import AddressRules
from kernel.errors import AgoraError
from kernel.outbound import OutboundClient, OutboundPolicy
from node.problems import exception_handlers
from tests.services import LoopbackHTTP
from tests.unit.test_dcp_flow import MEMBERSHIP, Party, engine_at, party

M = type_scope(MEMBERSHIP)


@dataclass
class Net:
    issuer: Party
    holder: Party
    verifier: Party
    service: CredentialService
    checker: Verifier
    status: dict[str, Any]
    base: str


def _handler(net: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path in net["documents"]:
                self._send(200, net["documents"][self.path])
            elif self.path == "/status/1":
                self._send(200, net["status"])
            else:
                self._send(404, {"detail": "none here"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/holder/dcp/presentations/query":
                self._send(404, {"detail": "none here"})
                return
            try:
                answer = net["service"].query(self.headers.get("Authorization"), raw, json.loads(raw))
            except AgoraError as exc:
                self._send(exc.status, exc.problem())
                return
            self._send(200, answer)

    return Handler


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    shared: dict[str, Any] = {}
    server = LoopbackHTTP(_handler(shared))
    base = f"http://127.0.0.1:{server.port}"
    issuer, holder, verifier = (party(f"{base}/{name}", name) for name in ("issuer", "holder", "verifier"))
    shared.update(
        {
            "documents": {
                f"/{name}/did.json": p.identity.document(
                    services=[credential_service_entry(p.did, p.identity.url)]
                )
                for name, p in (("issuer", issuer), ("holder", holder), ("verifier", verifier))
            },
            "status": {
                "@context": ["https://www.w3.org/ns/credentials/v2"],
                "type": ["VerifiableCredential", "BitstringStatusListCredential"],
                "issuer": issuer.did,
                "credentialSubject": {
                    "type": "BitstringStatusList",
                    "statusPurpose": "revocation",
                    "encodedList": encode_status_list([7]),
                },
            },
        }
    )
    outbound = OutboundClient(OutboundPolicy(rules=AddressRules(allow_loopback=True)))

    def resolve(did: str) -> Any:
        return resolve_did(did, outbound, use_https=False)

    holder_engine, verifier_engine = engine_at(tmp_path / "h.db"), engine_at(tmp_path / "v.db")
    service = CredentialService(
        holder_engine,
        signer=holder.signer,
        resolve=resolve,
        holder=HolderStore(holder_engine),
        trust=TrustedIssuers(holder_engine),
    )
    trust = TrustedIssuers(verifier_engine)
    trust.add(issuer.did, MEMBERSHIP, actor="test")
    shared["service"] = service
    checker = Verifier(identity=verifier.identity, outbound=outbound, resolve=resolve, trust=trust)
    try:
        yield Net(issuer, holder, verifier, service, checker, shared["status"], base)
    finally:
        server.stop()
        outbound.close()


def caller_claims(net: Net) -> dict[str, Any]:
    """The holder's self-issued token to the verifier, with an access token (as the gate passes it)."""
    access = mint_access_token(net.holder.signer, net.verifier.did, [M])
    return read_token(f"Bearer {net.holder.identity.token(net.verifier.did, token=access)}").claims


def test_verifier_fetches_presentation_documents_and_status_list(net: Net) -> None:
    status_url = f"{net.base}/status/1"
    good = issue_credential(
        net.issuer.signer,
        subject=net.holder.did,
        type_=MEMBERSHIP,
        claims={"membership": "gold"},
        status={**_entry(3), "statusListCredential": status_url},
    )
    net.service.holder.add(parse_credential(good), actor="test", source="test")
    holder_document = resolve_did(net.holder.did, net.checker.outbound, use_https=False)
    verified = net.checker.verify(caller_claims(net), holder_document, [M])
    assert verified == {MEMBERSHIP: {"membership": "gold"}}

    net.service.holder.remove(parse_credential(good).id, actor="test")
    revoked = issue_credential(
        net.issuer.signer,
        subject=net.holder.did,
        type_=MEMBERSHIP,
        claims={"membership": "gold"},
        status={**_entry(7), "statusListCredential": status_url},
    )
    net.service.holder.add(parse_credential(revoked), actor="test", source="test")
    with pytest.raises(CredentialRefused, match="is revoked"):
        net.checker.verify(caller_claims(net), holder_document, [M])


def test_holder_refusal_reaches_the_verifier_as_a_reason(net: Net) -> None:
    holder_document = resolve_did(net.holder.did, net.checker.outbound, use_https=False)
    claims = caller_claims(net)
    claims["token"] = "faketoken"
    with pytest.raises(CredentialRefused, match="refused the query: HTTP 401"):
        net.checker.verify(claims, holder_document, [M])


def _entry(index: int) -> dict[str, Any]:
    return {"type": "BitstringStatusListEntry", "statusPurpose": "revocation", "statusListIndex": str(index)}


# The routes ---------------------------------------------------------------------------------


def _app(dcp: DcpService) -> Litestar:
    async def user(connection: Any, _: Any) -> None:
        connection.scope["user"] = SimpleNamespace(subject="operator")

    api = Router(path="/api/v1", route_handlers=routes.api_handlers, guards=[user])
    return Litestar(
        route_handlers=[api, *routes.public_handlers],
        dependencies={"dcp_service": Provide(lambda: dcp, sync_to_thread=False)},
        exception_handlers=exception_handlers,
    )


def test_routes(net: Net) -> None:
    dcp = DcpService(
        signer=net.holder.signer,
        holder=net.service.holder,
        trust=net.service.trust,
        credentials=net.service,
        verifier=net.checker,
        resolve=net.service.resolve,
    )
    issuer_dcp = DcpService(
        signer=net.issuer.signer,
        holder=net.service.holder,
        trust=net.service.trust,
        credentials=net.service,
        verifier=net.checker,
        resolve=net.service.resolve,
    )
    with TestClient(_app(issuer_dcp)) as as_issuer:
        issued = as_issuer.post(
            "/api/v1/credentials/issue",
            json={
                "subject": net.holder.did,
                "type": MEMBERSHIP,
                "claims": {"membership": "gold"},
                "days": 30,
            },
        )
        assert issued.status_code == 201, issued.text
    with TestClient(_app(dcp)) as client:
        held = client.post("/api/v1/credentials", json={"jwt": issued.json()["jwt"]})
        assert held.status_code == 201, held.text
        assert [c["type"] for c in client.get("/api/v1/credentials").json()] == [MEMBERSHIP]

        added = client.post("/api/v1/credentials/trusted-issuers", json={"did": net.issuer.did})
        assert added.status_code == 201 and client.get("/api/v1/credentials/trusted-issuers").json() == [
            {"did": net.issuer.did, "type": None}
        ]

        body = {"@context": [DCP_CONTEXT], "type": "PresentationQueryMessage", "scope": [M]}
        raw = json.dumps(body).encode()
        access = mint_access_token(net.holder.signer, net.verifier.did, [M])
        token = net.verifier.identity.token(net.holder.did, raw, token=access)
        answer = client.post(
            "/dcp/presentations/query",
            content=raw,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        holder_document = resolve_did(net.holder.did, net.checker.outbound, use_https=False)
        assert net.checker.check(answer.json(), holder_document, [M]) == {MEMBERSHIP: {"membership": "gold"}}

        both = {**body, "presentationDefinition": {"id": "x"}}
        raw = json.dumps(both).encode()
        token = net.verifier.identity.token(net.holder.did, raw, token=access)
        refused = client.post(
            "/dcp/presentations/query", content=raw, headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 400 and "not both" in refused.json()["detail"]

        removed = client.delete("/api/v1/credentials/trusted-issuers", params={"did": net.issuer.did})
        assert removed.status_code == 200 and client.get("/api/v1/credentials/trusted-issuers").json() == []

        granted = client.post(
            "/api/v1/credentials/access-tokens", json={"verifier": net.verifier.did, "scopes": [M]}
        )
        assert granted.status_code == 201 and granted.json()["expires_in"] == 300, granted.text
        ask = {"verifier": net.verifier.did, "scopes": ["org.eclipse.dspace.dcp.vc.type:X:write"]}
        refused = client.post("/api/v1/credentials/access-tokens", json=ask)
        assert refused.status_code == 400 and "not a read scope" in refused.json()["detail"]
        unconfigured = client.post("/dcp/sts/token", content=b"grant_type=client_credentials")
        assert unconfigured.status_code == 404 and "AGORA_DCP_STS_CLIENT_ID" in unconfigured.json()["detail"]
