"""JWT verifiable credentials (VC data model 1.1, DCP profile ``vc11-sl2021/jwt``): signing
them as an issuer, reading and checking them as a holder or a verifier.

A credential is a compact JWS whose claims are ``iss`` (the issuer's DID), ``sub`` (the
subject's DID), ``jti`` (the credential's id), ``iat``/``nbf`` and, when it expires, ``exp``,
with the credential itself under ``vc``: ``@context``, ``id``, ``type``
(``["VerifiableCredential", <Type>]``), ``issuer``, ``issuanceDate``, ``expirationDate`` and
``credentialSubject`` (``id`` and the claims). The header's ``kid`` names the issuer's
verification method, so anyone can check it against the issuer's DID document.

A VC 2.0 credential (profile ``vc20-bssl/jwt``) is read too: its JWT's claims are the
credential itself (no ``vc`` claim), with ``validFrom`` and ``validUntil`` for the dates.

The JWT times and the credential's dates are checked both, and without the few minutes of leeway
self-issued tokens get: a credential whose ``expirationDate`` passed a minute ago is expired
(the DCP conformance suite sets only the ``vc`` dates wrong).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from connector.dsp.id_tokens import sign
from connector.dsp.identity import KEY_FRAGMENT, DidDocument
from kernel.errors import Forbidden, InvalidInput

VC_CONTEXT = "https://www.w3.org/2018/credentials/v1"
VC_TYPE = "VerifiableCredential"
FORMATS = ("jwt", "vc11-sl2021/jwt")  # what a CredentialMessage may name
LEEWAY = 5  # seconds of clock difference tolerated on a credential's own times
MAX_CREDENTIAL_BYTES = 64 * 1024
MAX_DAYS = 3650
MAX_SCHEMAS = 4
TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_ALGORITHMS = {("EC", "secp256k1"): "ES256K", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}


class CredentialRefused(Forbidden):
    """A credential or presentation that does not hold (the reason says which check failed)."""

    type_slug = "credential-refused"
    title = "Credential refused"


class Signer:
    """Signs as a DID with one key: credentials as an issuer, presentations as a holder. The
    key is read on first use (the node's keystore is opened only then)."""

    def __init__(self, did: str, key: Callable[[], ECKey | OKPKey], *, fragment: str = KEY_FRAGMENT) -> None:
        self.did = did
        self.kid = f"{did}#{fragment}"
        self._load = key
        self._key: ECKey | OKPKey | None = None
        self._lock = threading.Lock()

    @classmethod
    def secp256k1(cls, did: str, private_key: Callable[[], bytes]) -> Signer:
        """A signer with a node's organisation key: the one its DID document lists as ``#org``."""
        return cls(did, lambda: secp256k1_key(private_key()))

    @property
    def key(self) -> ECKey | OKPKey:
        with self._lock:
            if self._key is None:
                self._key = self._load()
            return self._key

    def sign(self, claims: dict[str, Any]) -> str:
        return sign(claims, self.key, self.kid)

    def public_jwk(self) -> dict[str, Any]:
        return {k: v for k, v in self.key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}


def secp256k1_key(private_key: bytes) -> ECKey:
    """The JWK of a secp256k1 private key (as an Ethereum keystore holds it)."""
    import base64

    from eth_keys.datatypes import PrivateKey

    public = PrivateKey(private_key).public_key.to_bytes()

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    jwk: dict[str, str | list[str]] = {
        "kty": "EC",
        "crv": "secp256k1",
        "x": b64(public[:32]),
        "y": b64(public[32:]),
        "d": b64(private_key),
    }
    return ECKey.import_key(jwk)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_credential(
    signer: Signer,
    *,
    subject: str,
    type_: str,
    claims: Mapping[str, Any] | None = None,
    days: float | None = 365,
    status: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A credential of ``type_`` about ``subject`` (a DID), signed by ``signer``; it expires
    after ``days`` (never with None)."""
    if not TYPE_NAME.match(type_) or type_ == VC_TYPE:
        raise InvalidInput(f"{type_[:100]!r} is not a credential type name (letters, digits, _ . -)")
    if not subject.startswith("did:") or len(subject) > 500:
        raise InvalidInput(f"a credential's subject is a DID, not {subject[:100]!r}")
    given = dict(claims or {})
    if "id" in given:
        raise InvalidInput("the claim 'id' is the subject's DID; it cannot be set as a claim")
    if days is not None and not 0 < days <= MAX_DAYS:
        raise InvalidInput(f"a credential lives 0 to {MAX_DAYS} days, not {days}")
    at = int(time.time() if now is None else now)
    credential_id = f"urn:uuid:{uuid.uuid4()}"
    vc: dict[str, Any] = {
        "@context": [VC_CONTEXT],
        "id": credential_id,
        "type": [VC_TYPE, type_],
        "issuer": signer.did,
        "issuanceDate": iso(at),
        "credentialSubject": {"id": subject, **given},
    }
    payload: dict[str, Any] = {"iss": signer.did, "sub": subject, "jti": credential_id, "iat": at, "nbf": at}
    if days is not None:
        expires = at + int(days * 86400)
        vc["expirationDate"] = iso(expires)
        payload["exp"] = expires
    if status is not None:
        vc["credentialStatus"] = dict(status)
    payload["vc"] = vc
    return signer.sign(payload)


@dataclass(frozen=True)
class Credential:
    """A JWT credential as read (its signature is checked by :func:`check_signature`)."""

    raw: str
    kid: str
    id: str
    issuer: str
    subject: str
    type: str  # the first type besides VerifiableCredential
    types: tuple[str, ...]
    claims: dict[str, Any]  # credentialSubject without its id
    issued_at: float | None  # the later of vc.issuanceDate and vc.validFrom
    not_before: float | None  # JWT nbf
    expires_at: float | None  # the earliest of JWT exp, vc.expirationDate and vc.validUntil
    status: dict[str, Any] | None  # vc.credentialStatus
    schemas: tuple[dict[str, Any], ...] = ()  # vc.credentialSchema (one or a list)
    document: dict[str, Any] = field(default_factory=dict, compare=False)  # the credential's JSON

    @property
    def expires(self) -> datetime | None:
        return None if self.expires_at is None else datetime.fromtimestamp(self.expires_at, UTC)


def read_jwt(raw: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, unverified."""
    token = raw.strip()
    if len(token) > MAX_CREDENTIAL_BYTES or token.count(".") != 2:
        raise CredentialRefused(f"{what} is not a compact JWT")
    try:
        compact = jws.extract_compact(token.encode())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeDecodeError):
        raise CredentialRefused(f"{what} cannot be read as a JWT") from None
    if not isinstance(claims, dict):
        raise CredentialRefused(f"{what}'s claims are not a JSON object")
    return dict(compact.protected), claims


def parse_credential(raw: str) -> Credential:
    """Read a JWT credential's shape: its issuer, subject, type, claims and times."""
    header, claims = read_jwt(raw, "the credential")
    vc = credential_body(claims)
    if vc is None:
        raise CredentialRefused("the JWT holds no credential (no 'vc' claim, no VC 2.0 credential)")
    issuer = vc.get("issuer", claims.get("iss"))
    issuer = issuer.get("id") if isinstance(issuer, dict) else issuer
    if not isinstance(issuer, str) or not issuer.startswith("did:") or claims.get("iss", issuer) != issuer:
        raise CredentialRefused("the credential's issuer (vc.issuer and iss) is not one DID")
    subject_part = vc.get("credentialSubject")
    if not isinstance(subject_part, dict) or not isinstance(subject_part.get("id"), str):
        raise CredentialRefused("the credential's credentialSubject names no subject id")
    subject = str(subject_part["id"])
    if claims.get("sub", subject) != subject:
        raise CredentialRefused("the credential's sub is not its credentialSubject.id")
    raw_types = vc.get("type")
    types = tuple(
        t for t in (raw_types if isinstance(raw_types, list) else [raw_types]) if isinstance(t, str)
    )
    named = [t for t in types if t != VC_TYPE]
    if not named or not all(TYPE_NAME.match(t) for t in named):
        raise CredentialRefused(f"the credential's type {str(raw_types)[:120]} names no credential type")
    kid = str(header.get("kid") or "")
    if kid.startswith("#"):
        kid = issuer + kid
    if not kid.startswith(issuer + "#"):
        raise CredentialRefused("the credential's kid must name a key of its issuer's DID")
    credential_id = vc.get("id", claims.get("jti"))
    if not isinstance(credential_id, str) or not 1 <= len(credential_id) <= 200:
        raise CredentialRefused("the credential has no id (vc.id or jti) of 1 to 200 characters")
    status = vc.get("credentialStatus")
    if status is not None and not isinstance(status, dict):
        raise CredentialRefused("the credential's credentialStatus is not an object")
    schema = vc.get("credentialSchema")
    schemas = schema if isinstance(schema, list) else [] if schema is None else [schema]
    if len(schemas) > MAX_SCHEMAS or not all(isinstance(s, dict) for s in schemas):
        raise CredentialRefused(f"the credential's credentialSchema is not up to {MAX_SCHEMAS} objects")
    times = (_seconds(claims.get("exp")), _date(vc.get("expirationDate")), _date(vc.get("validUntil")))
    expiry = [t for t in times if t is not None]
    starts = [t for t in (_date(vc.get("issuanceDate")), _date(vc.get("validFrom"))) if t is not None]
    return Credential(
        raw=raw.strip(),
        kid=kid,
        id=credential_id,
        issuer=issuer,
        subject=subject,
        type=named[0],
        types=tuple(named),
        claims={k: v for k, v in subject_part.items() if k != "id"},
        issued_at=max(starts) if starts else None,
        not_before=_seconds(claims.get("nbf")),
        expires_at=min(expiry) if expiry else None,
        status=status,
        schemas=tuple(schemas),
        document=vc,
    )


def credential_body(claims: dict[str, Any]) -> dict[str, Any] | None:
    """The credential a JWT carries: its ``vc`` claim (VC 1.1 JWT), or the claims themselves
    when they are a VC 2.0 credential (``vc+jwt``: ``@context`` and ``credentialSubject``)."""
    vc = claims.get("vc")
    if isinstance(vc, dict):
        return vc
    if "vc" not in claims and "credentialSubject" in claims and "@context" in claims:
        return claims
    return None


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CredentialRefused(f"a credential's time {str(value)[:40]!r} is not a NumericDate")
    return float(value)


def _date(value: Any) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise CredentialRefused(f"a credential's date {str(value)[:40]!r} is not ISO 8601") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def check_times(credential: Credential, now: float | None = None) -> None:
    """Refuse a credential not yet valid (issuanceDate, validFrom, nbf) or expired
    (expirationDate, validUntil, exp)."""
    at = time.time() if now is None else now
    name = f"{credential.type} {credential.id[:80]}"
    if credential.issued_at is not None and credential.issued_at > at + LEEWAY:
        raise CredentialRefused(f"credential {name} is not valid yet: issued {iso(credential.issued_at)}")
    if credential.not_before is not None and credential.not_before > at + LEEWAY:
        raise CredentialRefused(f"credential {name} is not valid before {iso(credential.not_before)}")
    if credential.expires_at is not None and credential.expires_at <= at - LEEWAY:
        raise CredentialRefused(f"credential {name} expired at {iso(credential.expires_at)}")


def check_signature(token: str, kid: str, document: DidDocument, what: str) -> None:
    """Refuse ``token`` unless the key ``kid`` of ``document`` signed it."""
    jwk = document.keys.get(kid)
    if jwk is None:
        raise CredentialRefused(f"{document.did[:160]}'s DID document lists no key {kid[:200]} ({what})")
    alg = _ALGORITHMS.get((str(jwk.get("kty")), str(jwk.get("crv"))))
    if alg is None:
        raise CredentialRefused(f"{what} is signed with a key type this node does not check")
    try:
        key = ECKey.import_key(jwk) if jwk.get("kty") == "EC" else OKPKey.import_key(jwk)
        jws.deserialize_compact(token.strip(), key, algorithms=[alg])
    except (JoseError, ValueError):
        raise CredentialRefused(f"{what} is not signed by {kid[:200]}") from None


def verified_credential(raw: str, issuer_document: DidDocument, *, now: float | None = None) -> Credential:
    """A credential whose issuer's key signed it and whose dates hold."""
    credential = parse_credential(raw)
    if issuer_document.did != credential.issuer:
        raise CredentialRefused(f"the DID document given is not that of issuer {credential.issuer[:160]}")
    check_signature(credential.raw, credential.kid, issuer_document, f"credential {credential.id[:80]}")
    check_times(credential, now)
    return credential
