"""The parties of the DCP conformance suite's verifier cases, played on loopback.

The Eclipse DCP TCK tests a verifier with four parties of its own, all behind one HTTP
address (``http://127.0.0.1:<port>``): a **holder** (``did:web:127.0.0.1%3A<port>:holder``)
with its Credential Service, an **issuer** whose credentials the holder presents, a **third
party** that should not be believed, and the status list and JSON schema services the
issuer's credentials point at. :class:`TckParties` is that address, made as the suite
makes it:

* every DID document lists one P-256 key (``JsonWebKey2020``, its id ``<did>#<uuid>``) and a
  ``CredentialService`` entry naming the address (the issuer's an ``IssuerService``);
* tokens are ES256 JWTs, header ``kid`` ``<iss>#<uuid>``, ``typ`` ``JWT``;
* access tokens are the suite's opaque ``<uuid>::<verifier DID>::<types>``, each read once;
* credentials are VC 1.1 JWTs (``vc`` claim, ``jti``, ``nbf``/``iat`` now, ``exp`` in 300 s),
  presentations JWTs with a ``vp`` claim, signed by the holder for the verifier;
* ``/presentations/query`` checks the verifier's ID token (``aud`` the holder, ``iss`` =
  ``sub``, ``jti`` once, ``exp``, ``iat``, ``nbf``, its key from the verifier's DID document)
  and answers with the presentation of what the query's scopes ask and the access token
  grants (401 when the token does not grant it), unless a case set :attr:`TckParties.answer`;
* ``/statuslist/<id>`` serves a BitstringStatusList credential (plain JSON, 16 Ki bits),
  ``/schema/membership-schema.json`` a schema that requires ``foo`` of a credential subject.

:meth:`TckParties.reset` starts a case afresh, as the suite builds its services per case.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from connector.dsp.identity import did_document_url

DCP_CONTEXT = "https://w3id.org/dspace-dcp/v1.0/dcp.jsonld"
DCP_NAMESPACE = "https://w3id.org/dspace-dcp/v1.0"
DID_CONTEXT = "https://www.w3.org/ns/did/v1"
VC_CONTEXT = "https://www.w3.org/2018/credentials/v1"
VC2_CONTEXT = "https://www.w3.org/ns/credentials/v2"
STATUS_2021_CONTEXT = "https://w3id.org/vc/status-list/2021/v1"
TYPE_ALIAS = "org.eclipse.dspace.dcp.vc.type"
MEMBERSHIP = "MembershipCredential"
SENSITIVE = "SensitiveDataCredential"
MEMBERSHIP_SCOPE = f"{TYPE_ALIAS}:{MEMBERSHIP}:read"
SENSITIVE_SCOPE = f"{TYPE_ALIAS}:{SENSITIVE}:read"
STATUS_BITS = 16 * 1024
MEMBERSHIP_SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {"id": {"type": "string"}, "foo": {"type": "string"}},
    "required": ["id", "foo"],
}
Answer = Callable[[str, str, dict[str, Any]], dict[str, Any]]  # (bearer DID, access token, query)


def instant(seconds: float) -> str:
    """A time as Java's ``Instant.toString()`` writes it (microseconds, ``Z``)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class KeyService:
    """One P-256 key with a random key id, signing ES256 JWTs as the suite's KeyService does."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256")
        self.key_id = str(uuid.uuid4())

    def public_jwk(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {
            "kty": "EC",
            "use": "sig",
            "crv": "P-256",
            "kid": self.key_id,
            "x": public["x"],
            "y": public["y"],
        }

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        header = {"kid": kid or f"{claims['iss']}#{self.key_id}", "typ": "JWT", "alg": "ES256"}
        return str(jws.serialize_compact(header, compact(claims), self.key, algorithms=["ES256"]))


class StatusList:
    """The suite's status list service (``dataspacetck.dcp.revocation.type``:
    ``bitstringstatuslist``, the default, or ``statuslist2021``): 16 Ki bits, highest bit first."""

    def __init__(self, issuer: str, address: str, kind: str = "bitstringstatuslist") -> None:
        self.issuer, self.address, self.kind = issuer, address, kind
        self.credential_id = str(uuid.uuid4())
        self.bits = bytearray(STATUS_BITS // 8)

    def set_revoked(self, index: int) -> None:
        self.bits[index // 8] |= 1 << (7 - index % 8)

    @property
    def url(self) -> str:
        return f"{self.address}/statuslist/{self.credential_id}"

    def credential(self) -> dict[str, Any]:
        encoded = base64.urlsafe_b64encode(gzip.compress(bytes(self.bits))).rstrip(b"=").decode()
        v2021 = self.kind == "statuslist2021"
        name = "StatusList2021" if v2021 else "BitstringStatusList"
        return {
            "@context": [VC_CONTEXT, STATUS_2021_CONTEXT] if v2021 else [VC2_CONTEXT],
            "id": self.credential_id,
            "type": ["VerifiableCredential", f"{name}Credential"],
            "issuer": self.issuer,
            "issuanceDate": instant(time.time()),
            "credentialSubject": {
                "id": self.credential_id,
                "type": name,
                "statusPurpose": "revocation",
                "encodedList": "u" + encoded,
            },
            "credentialSchema": None,
            "credentialStatus": None,
            "expirationDate": None,
        }


class TckParties:
    """The holder, issuer, third party and their services on one loopback address."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self.server.server_address[1])
        self.address = f"http://127.0.0.1:{self.port}"
        self.keys = {role: KeyService() for role in ("holder", "issuer", "thirdparty")}
        self.holder_did, self.issuer_did, self.third_party_did = (
            f"did:web:127.0.0.1%3A{self.port}:{role}" for role in ("holder", "issuer", "thirdparty")
        )
        self.verifier_did = ""  # the node under test (set by the case's fixture)
        self.http = httpx.Client(timeout=30.0)
        self._lock = threading.Lock()
        self.reset()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    def reset(self) -> None:
        """A new case: no credentials held, no tokens granted, a new status list, no answer set."""
        with self._lock:
            self.read_tokens: set[str] = set()
            self.used_jtis: set[str] = set()
            self.credentials: dict[str, list[tuple[list[str], str]]] = {}  # type -> (types, JWT)
            self.answer: Answer | None = None
            self.queries: list[dict[str, Any]] = []
            self.status_list = StatusList(self.issuer_did, self.address)

    # DID documents ---------------------------------------------------------------------------

    def did_document(self, role: str) -> dict[str, Any]:
        did = f"did:web:127.0.0.1%3A{self.port}:{role}"
        key = self.keys[role]
        method = f"{did}#{key.key_id}"
        kind, name = (
            ("IssuerService", "TCK-Issuer-Service")
            if role == "issuer"
            else ("CredentialService", "TCK-Credential-Service")
        )
        return {
            "@context": [DID_CONTEXT, DCP_NAMESPACE],
            "id": did,
            "service": [{"id": name, "type": kind, "serviceEndpoint": self.address}],
            "verificationMethod": [
                {"id": method, "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": key.public_jwk()}
            ],
            "authentication": [method],
            "assertionMethod": [method],
            "capabilityInvocation": [method],
        }

    # The suite's secure token server ---------------------------------------------------------

    def auth_token(self, *scopes: str) -> str:
        """An access token for the verifier to read what ``scopes`` name (``@AuthToken``)."""
        types = ",".join(scope.split(":")[1] for scope in scopes)
        token = f"{uuid.uuid4()}::{self.verifier_did}::{types}"
        with self._lock:
            self.read_tokens.add(token)
        return token

    def _redeem(self, bearer: str, token: str) -> list[str] | None:
        with self._lock:
            if token not in self.read_tokens:
                return None
            self.read_tokens.discard(token)
        parts = token.split("::")
        if len(parts) != 3 or parts[1] != bearer:
            return None
        return parts[2].split(",")

    # Tokens, credentials, presentations ------------------------------------------------------

    def id_token(self, access_token: str | None, **over: Any) -> str:
        """The holder's self-issued ID token for the verifier (``createIdToken``); ``over``
        replaces claims (``None`` removes one); ``signer`` names whose key signs."""
        signer = over.pop("signer", "holder")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.holder_did,
            "sub": self.holder_did,
            "aud": self.verifier_did,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 600,
        }
        if access_token is not None:
            claims["token"] = access_token
        claims.update(over)
        return self.keys[signer].sign({k: v for k, v in claims.items() if v is not None})

    def credential(self, types: list[str], **over: Any) -> dict[str, Any]:
        """A credential of the issuer about the holder (``createCredential``); ``over`` replaces fields."""
        vc: dict[str, Any] = {
            "@context": [VC_CONTEXT],
            "id": str(uuid.uuid4()),
            "type": types,
            "issuer": self.issuer_did,
            "issuanceDate": instant(time.time()),
            "expirationDate": None,
            "credentialSubject": {"id": self.holder_did, "foo": "bar"},
        }
        vc.update(over)
        return vc

    def sign_credential(self, vc: dict[str, Any]) -> str:
        """The credential as the suite's JwtCredentialGenerator signs it."""
        now = int(time.time())
        claims = {
            "iss": self.issuer_did,
            "sub": vc["credentialSubject"]["id"],
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + 300,
            "vc": vc,
        }
        return self.keys["issuer"].sign(claims, kid=f"{self.issuer_did}#{self.keys['issuer'].key_id}")

    def issue_credentials(self) -> None:
        """``@IssueCredentials``: the holder gets a MembershipCredential and a SensitiveDataCredential."""
        for type_ in (MEMBERSHIP, SENSITIVE):
            vc = self.credential(["VerifiableCredential", type_], expirationDate=instant(time.time() + 600))
            with self._lock:
                self.credentials.setdefault(type_, []).append((vc["type"], self.sign_credential(vc)))

    def presentation(self, *credentials: str, audience: str | None = None) -> str:
        """A JWT presentation of ``credentials`` by the holder (JwtPresentationGenerator)."""
        now = int(time.time())
        claims = {
            "iss": self.holder_did,
            "aud": audience or self.verifier_did,
            "sub": self.holder_did,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + 300,
            "vp": {
                "@context": [VC_CONTEXT, "https://identity.foundation/presentation-exchange/submission/v1"],
                "type": "VerifiablePresentation",
                "verifiableCredential": list(credentials),
            },
        }
        return self.keys["holder"].sign(claims, kid=f"{self.holder_did}#{self.keys['holder'].key_id}")

    def response(self, *presentations: str) -> dict[str, Any]:
        return {
            "@context": [DCP_CONTEXT],
            "type": "PresentationResponseMessage",
            "presentation": list(presentations),
        }

    def presenting(self, *vcs: dict[str, Any]) -> Answer:
        """An answer presenting ``vcs`` signed by the issuer, whatever is asked (a case's delegate)."""

        def answer(bearer: str, token: str, query: dict[str, Any]) -> dict[str, Any]:
            return self.response(self.presentation(*(self.sign_credential(vc) for vc in vcs)))

        return answer

    # The holder's Credential Service ---------------------------------------------------------

    def query(self, authorization: str | None, raw: bytes) -> tuple[int, dict[str, Any] | None]:
        """``POST /presentations/query``: (status, body)."""
        try:
            message = json.loads(raw)
        except ValueError:
            return 400, None
        if not isinstance(message, dict) or "PresentationQueryMessage" not in (
            message.get("type"),
            message.get("@type"),
        ):
            return 400, None
        if not authorization or not authorization.startswith("Bearer "):
            return 401, None
        claims = self._check_verifier_token(authorization[7:])
        if claims is None:
            return 401, None
        context, scope = message.get("@context"), message.get("scope")
        if not isinstance(context, list) or DCP_CONTEXT not in context:
            return 400, None
        if not (isinstance(scope, list) and scope and all(isinstance(s, str) for s in scope)):
            return 400, None
        with self._lock:
            self.queries.append(message)
            answer = self.answer
        access, bearer = claims.get("token"), str(claims["iss"])
        if answer is not None:
            return 200, answer(bearer, str(access), message)
        granted = self._redeem(bearer, str(access))
        if granted is None:
            return 401, None
        held = []
        for requested in scope:
            alias, _, rest = requested.partition(":")
            if alias != TYPE_ALIAS or ":" not in rest:
                return 500, None
            with self._lock:
                held += self.credentials.get(rest.rsplit(":", 1)[0], [])
        for types, _ in held:
            if not any(grant.startswith(t) for t in types for grant in granted):
                return 401, None
        return 200, self.response(self.presentation(*(raw for _, raw in held), audience=bearer))

    def _check_verifier_token(self, token: str) -> dict[str, Any] | None:
        """The verifier's ID token's claims when they hold as the suite's holder checks them."""
        try:
            extracted = jws.extract_compact(token.encode())
            claims = json.loads(extracted.payload)
            kid = str(extracted.protected.get("kid") or "")
        except (JoseError, ValueError):
            return None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        now = time.time()
        jti = claims.get("jti")
        if self.holder_did not in audiences or claims.get("iss") != claims.get("sub") or not jti:
            return None
        with self._lock:
            if jti in self.used_jtis:
                return None
            self.used_jtis.add(jti)
        if not isinstance(claims.get("exp"), int) or claims["exp"] < now:
            return None
        if not isinstance(claims.get("iat"), int) or claims["iat"] > now:
            return None
        if isinstance(claims.get("nbf"), int) and claims["nbf"] > now:
            return None
        did, _, fragment = kid.partition("#")
        try:
            document = self.http.get(did_document_url(did)).json()
        except (httpx.HTTPError, ValueError):
            return None
        methods = [m for m in document.get("verificationMethod", []) if m.get("id") in (kid, f"#{fragment}")]
        if not methods:
            return None
        jwk = methods[0]["publicKeyJwk"]
        alg = {"secp256k1": "ES256K", "P-256": "ES256"}.get(jwk.get("crv"), "")
        try:
            jws.deserialize_compact(token, ECKey.import_key(jwk), algorithms=[alg])
        except (JoseError, ValueError):
            return None
        return dict(claims)

    # The server ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        parties = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _send(self, status: int, body: Any, kind: str = "application/json") -> None:
                raw = b"" if body is None else compact(body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                role = self.path.removeprefix("/").removesuffix("/did.json")
                if self.path.endswith("/did.json") and role in parties.keys:
                    self._send(200, parties.did_document(role))
                elif self.path == f"/statuslist/{parties.status_list.credential_id}":
                    self._send(200, parties.status_list.credential())
                elif self.path.startswith("/schema/"):
                    self._send(200, MEMBERSHIP_SCHEMA, "application/schema+json")
                else:
                    self._send(404, None)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/presentations/query":
                    self._send(404, None)
                    return
                status, body = parties.query(self.headers.get("Authorization"), raw)
                self._send(status, body)

        return Handler
