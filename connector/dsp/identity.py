"""Who is calling: DIDs and self-issued ID tokens, as the Decentralized Claims Protocol has them.

Every protocol request names its sender in the ``Authorization`` header: a JWT the sender
signs with its own key (a *self-issued ID token*), whose ``iss`` and ``sub`` are its DID,
``aud`` the recipient's DID, with a fresh ``jti`` and an expiry minutes away. The receiver
finds the key in the sender's DID document (``kid`` names the verification method) and
accepts the token only when the signature holds, it is meant for the receiver, it is
current, and its ``jti`` was never seen before (:class:`connector.dsp.gate.ProtocolGate`;
the token itself, signed and checked, is :mod:`connector.dsp.id_tokens`).

DIDs are ``did:web``: ``did:web:host%3Aport[:path]`` is the document at
``https://host:port[/path]/.well-known/did.json`` (``/path/did.json`` with a path).
A loopback host resolves over plain HTTP, as does every host when the operator turned
HTTPS off (``AGORA_DID_WEB_USE_HTTPS=false``, for test networks).

An Agora node's document has one verification method, its organisation key (secp256k1,
``ES256K``), with the Ethereum address the key signs on chain with as its
``blockchainAccountId``, and an ``AgoraNode`` service naming the node's URL and
organisation: that marks the peer as an Agora node. Any other connector is a plain DSP
connector, with whatever keys (P-256, secp256k1, Ed25519) its document lists.

Inside this node a participant is a 20-byte id: an Agora node's Ethereum address, or for a
plain DSP connector ``0x`` + the last 20 bytes of keccak256 of its DID
(:func:`participant_id`), so records keep one key for both kinds.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak
from joserfc.jwk import ECKey

from connector.dsp.id_tokens import (
    ALGORITHMS,
    BODY_CLAIM,
    REQUEST_CLAIM,
    TOKEN_TTL,
    TokenRejected,
    request_claim,
    sign,
)
from kernel.addresses import parse_ip
from kernel.errors import InvalidInput

AGORA_SERVICE = "AgoraNode"
KEY_FRAGMENT = "org"
DID_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"]


# DIDs -------------------------------------------------------------------------------------


def did_for_url(url: str) -> str:
    """The ``did:web`` of a node at ``url`` (its origin and path; the scheme is not part of it)."""
    parts = urlsplit(url.rstrip("/"))
    if not parts.hostname:
        raise InvalidInput(f"{url!r} has no host to make a did:web of")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    authority = quote(host + (f":{parts.port}" if parts.port else ""), safe="[]")
    segments = [quote(s, safe="") for s in parts.path.split("/") if s]
    return ":".join(["did", "web", authority, *segments])


def did_document_url(did: str, *, use_https: bool = True) -> str:
    """Where a ``did:web`` document lies (HTTP for loopback hosts or when HTTPS is off)."""
    if not did.startswith("did:web:") or len(did) > 500:
        raise InvalidInput(f"only did:web identifiers are resolved here, not {did[:80]!r}")
    authority, *segments = did.removeprefix("did:web:").split(":")
    host = unquote(authority)
    if not host or "/" in host or "@" in host or any(not s for s in segments):
        raise InvalidInput(f"{did[:80]!r} is not a valid did:web")
    hostname = urlsplit(f"//{host}").hostname or ""
    scheme = "https" if use_https and not _loopback(hostname) else "http"
    path = "/".join(unquote(s) for s in segments) if segments else ".well-known"
    return f"{scheme}://{host}/{path}/did.json"


def _loopback(hostname: str) -> bool:
    ip = parse_ip(hostname)
    return hostname == "localhost" or (ip is not None and ip.is_loopback)


def participant_id(did: str, document: dict[str, Any] | None = None) -> str:
    """The 20-byte id a participant goes by here: the Ethereum address an Agora node's
    document binds to its secp256k1 key, else one derived from the DID."""
    if document is not None:
        address = agora_address(document)
        if address:
            return address
    return to_checksum_address("0x" + keccak(text=did)[-20:].hex())


@dataclass(frozen=True)
class DidDocument:
    """The parts of a DID document this node uses."""

    did: str
    keys: dict[str, dict[str, Any]]  # verification method id -> public JWK
    address: str | None  # an Agora node's on-chain address (its key's)
    agora: dict[str, Any] | None  # the AgoraNode service: url, name
    services: list[dict[str, Any]] = field(default_factory=list)

    @property
    def participant(self) -> str:
        return self.address or participant_id(self.did)

    def service(self, type_: str) -> str | None:
        for s in self.services:
            if s.get("type") == type_ and isinstance(s.get("serviceEndpoint"), str):
                return str(s["serviceEndpoint"])
        return None


def read_did_document(did: str, document: Any) -> DidDocument:
    """Check a fetched document is ``did``'s and take its keys and services."""
    if not isinstance(document, dict) or document.get("id") != did:
        raise TokenRejected(f"the DID document found for {did[:120]} is not that DID's")
    keys: dict[str, dict[str, Any]] = {}
    methods = document.get("verificationMethod") or []
    for method in methods if isinstance(methods, list) else []:
        if not isinstance(method, dict) or not isinstance(method.get("publicKeyJwk"), dict):
            continue
        mid = str(method.get("id", ""))
        mid = did + mid if mid.startswith("#") else mid
        jwk = {k: v for k, v in method["publicKeyJwk"].items() if k in ("kty", "crv", "x", "y")}
        if mid.startswith(did + "#") and (jwk.get("kty"), jwk.get("crv")) in ALGORITHMS:
            keys[mid] = jwk
    if not keys:
        raise TokenRejected(f"the DID document of {did[:120]} lists no key this node can check")
    raw_services = document.get("service") or []
    services = [s for s in (raw_services if isinstance(raw_services, list) else []) if isinstance(s, dict)][
        :32
    ]
    agora = next((s for s in services if s.get("type") == AGORA_SERVICE), None)
    bound = _bound_key(did, document)
    if bound is not None:
        # an Agora node is its on-chain address only through the key that address is: its
        # tokens must be signed by that key (a document could list anyone's public key)
        method_id, address = bound
        return DidDocument(did, {method_id: keys[method_id]}, address, agora, services)
    return DidDocument(did, keys, None, None, services)


def agora_address(document: dict[str, Any]) -> str | None:
    """The Ethereum address of a secp256k1 verification method whose ``blockchainAccountId``
    names it (and whose key really is that address's), or None."""
    bound = _bound_key(str(document.get("id", "")), document)
    return bound[1] if bound else None


def _bound_key(did: str, document: dict[str, Any]) -> tuple[str, str] | None:
    """(method id, address) of the first secp256k1 method bound to its own address."""
    from eth_keys.datatypes import PublicKey

    methods = document.get("verificationMethod") or []
    for method in methods if isinstance(methods, list) else []:
        if not isinstance(method, dict):
            continue
        account = str(method.get("blockchainAccountId", "")).rsplit(":", 1)[-1]
        jwk = method.get("publicKeyJwk")
        if not (is_address(account) and isinstance(jwk, dict) and jwk.get("crv") == "secp256k1"):
            continue
        try:
            raw = _unb64(str(jwk["x"])) + _unb64(str(jwk["y"]))
            derived = PublicKey(raw).to_checksum_address()
        except Exception:
            continue
        mid = str(method.get("id", ""))
        mid = did + mid if mid.startswith("#") else mid
        if (
            derived.lower() == account.lower()
            and mid.startswith(did + "#")
            and _proven(did, document, derived)
        ):
            return mid, str(derived)
    return None


def binding_message(did: str) -> bytes:
    """What an Agora node's organisation key signs to bind its address to its DID."""
    return f"agora:binding:{did}".encode()


def _proven(did: str, document: dict[str, Any], address: str) -> bool:
    """Whether the document's AgoraNode service carries the address's signature over the DID:
    a public key anyone can copy proves nothing; this signature only its holder can make."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    services = document.get("service") or []
    for service in services if isinstance(services, list) else []:
        if not isinstance(service, dict) or service.get("type") != AGORA_SERVICE:
            continue
        proof = service.get("binding")
        if not isinstance(proof, str) or len(proof) != 132:
            return False
        try:
            signer = Account.recover_message(encode_defunct(binding_message(did)), signature=proof)
        except Exception:  # any malformed signature is just no proof
            return False
        return bool(signer.lower() == address.lower())
    return False


# This node's identity -----------------------------------------------------------------------


class NodeIdentity:
    """This node's DID, its document and the tokens it signs with its organisation key."""

    def __init__(
        self, *, did: str, address: str, private_key: Callable[[], bytes], url: str, name: str
    ) -> None:
        self.did = did
        self.address = address
        self.url = url.rstrip("/")
        self.name = name
        self.kid = f"{did}#{KEY_FRAGMENT}"
        self._private_key = private_key  # read on first use: the keystore is opened only then
        self._loaded: ECKey | None = None

    @property
    def _key(self) -> ECKey:
        if self._loaded is None:
            self._loaded = ECKey.import_key(dict(_secp256k1_jwk(self._private_key())))
        return self._loaded

    def document(
        self, *, chain_id: int | None = None, services: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        public = {k: v for k, v in self._key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
        account = f"eip155:{chain_id or 1}:{self.address}"
        return {
            "@context": DID_CONTEXT,
            "id": self.did,
            "verificationMethod": [
                {
                    "id": self.kid,
                    "type": "JsonWebKey2020",
                    "controller": self.did,
                    "publicKeyJwk": public,
                    "blockchainAccountId": account,
                }
            ],
            "authentication": [self.kid],
            "assertionMethod": [self.kid],
            "service": [
                {
                    "id": f"{self.did}#agora",
                    "type": AGORA_SERVICE,
                    "serviceEndpoint": self.url,
                    "name": self.name,
                    "binding": self.binding(),
                },
                {
                    "id": f"{self.did}#dsp",
                    "type": "DataService",
                    "serviceEndpoint": f"{self.url}/.well-known/dspace-version",
                },
                *services,
            ],
        }

    def binding(self) -> str:
        """The organisation key's signature over this node's DID (see :func:`binding_message`)."""
        from eth_account import Account
        from eth_account.messages import encode_defunct

        signed = Account.sign_message(encode_defunct(binding_message(self.did)), self._private_key())
        return "0x" + bytes(signed.signature).hex()

    def token(
        self,
        audience: str,
        body: bytes | None = None,
        *,
        request: tuple[str, str] | None = None,
        **claims: Any,
    ) -> str:
        """A self-issued ID token for ``audience`` (a DID), binding ``body`` and ``request``
        (the method and the URL's path) when given."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.did,
            "sub": self.did,
            "aud": audience,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_TTL,
            **claims,
        }
        if body is not None:
            payload[BODY_CLAIM] = hashlib.sha256(body).hexdigest()
        if request is not None:
            payload[REQUEST_CLAIM] = request_claim(*request)
        return sign(payload, self._key, self.kid)


def _secp256k1_jwk(private_key: bytes) -> dict[str, str]:
    from eth_keys.datatypes import PrivateKey

    key = PrivateKey(private_key)
    public = key.public_key.to_bytes()
    return {
        "kty": "EC",
        "crv": "secp256k1",
        "x": _b64(public[:32]),
        "y": _b64(public[32:]),
        "d": _b64(private_key),
    }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if len(text) > 64:
        raise ValueError("not a key coordinate")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
