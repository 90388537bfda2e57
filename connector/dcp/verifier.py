"""The verifier's side of DCP: a caller's credentials, fetched from its Credential Service
and checked before any claim reaches a policy.

A caller (its self-issued token already checked by the gate) names, in its token's
``token`` claim, an access token to its own Credential Service. This node finds that service
in the caller's DID document, asks it for the credentials of the scopes a policy needs,
with its own self-issued token (``aud`` the caller, ``token`` the access token passed on
unread), and takes the answer only when every check holds:

* the presentation is a JWT signed by a key of the caller's DID document, issued by the
  caller (``iss``) for this node (``aud``), current;
* every credential is signed by a key of its issuer's DID document, is about the caller
  (``credentialSubject.id``), comes from an issuer the operator trusts for its type, is
  valid now (``issuanceDate``/``validFrom``, ``expirationDate``/``validUntil``, ``nbf``, ``exp``),
  when it has a status entry is not revoked or suspended in its issuer's status list, and
  satisfies the JSON Schemas its ``credentialSchema`` names
  (:mod:`connector.dcp.credential_schema`);
* every credential type the scopes ask for is there.

The result is each type's ``credentialSubject`` claims; :func:`credential_claims_context`
flattens them for the policy engine. Any failed check is one :class:`CredentialRefused`
(or :class:`~connector.dsp.id_tokens.TokenRejected` for a missing token) naming it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from connector.dcp.credential_schema import Schemas, schema_fetcher
from connector.dcp.credentials import (
    LEEWAY,
    CredentialRefused,
    check_signature,
    credential_body,
    read_jwt,
    verified_credential,
)
from connector.dcp.presentation import DCP_CONTEXT
from connector.dcp.status import StatusLists, fetcher
from connector.dcp.stores import TrustedIssuers
from connector.dcp.tokens import Resolver, parse_scopes
from connector.dsp.id_tokens import TokenRejected
from connector.dsp.identity import DidDocument
from kernel.errors import AgoraError, InvalidInput
from kernel.limits import JsonLimits, loads
from kernel.outbound import OutboundClient

MAX_ANSWER_BYTES = 1024 * 1024
MAX_PRESENTATIONS = 8
MAX_CREDENTIALS = 64
CLAIM_PREFIX = "agora:credential."
ENVELOPE_PREFIXES = ("data:application/vc+jwt,", "data:application/vc+sd-jwt,", "data:application/jwt,")


class TokenSigner(Protocol):
    """What signs this node's self-issued tokens (a :class:`~connector.dsp.identity.NodeIdentity`)."""

    did: str

    def token(self, audience: str, body: bytes | None = None, **claims: Any) -> str: ...


class Verifier:
    def __init__(
        self,
        *,
        identity: TokenSigner,
        outbound: OutboundClient,
        resolve: Resolver,
        trust: TrustedIssuers,
        clock: Callable[[], float] = time.time,
        fetch_status: Callable[[str], bytes] | None = None,
        fetch_schema: Callable[[str], bytes] | None = None,
    ) -> None:
        self.identity = identity
        self.outbound = outbound
        self.resolve = resolve
        self.trust = trust
        self.clock = clock
        self.fetch_status = fetch_status or fetcher(outbound)
        self.schemas = Schemas(fetch_schema or schema_fetcher(outbound))

    def verify(
        self, claims: dict[str, Any], document: DidDocument, scopes: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The verified claims ``{type: credentialSubject claims}`` of the caller whose token's
        ``claims`` and DID ``document`` are given, for ``scopes``."""
        holder = document.did
        if claims.get("iss") != holder:
            raise TokenRejected("the caller's token and DID document name different DIDs")
        access = claims.get("token")
        if not isinstance(access, str) or not access:
            raise TokenRejected(
                f"{holder[:160]}'s token carries no access token ('token' claim) to its Credential Service"
            )
        return self.check(self._ask(holder, document, access, list(scopes)), document, scopes)

    def check(
        self, answer: dict[str, Any], document: DidDocument, scopes: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The verified claims of a PresentationResponseMessage from the holder of ``document``."""
        holder = document.did
        wanted = {s.value for s in parse_scopes(scopes) if s.kind == "type"}
        vps = answer.get("presentation")
        if not isinstance(vps, list) or not vps:
            raise CredentialRefused(
                f"{holder[:160]}'s Credential Service presented nothing (empty presentation)"
            )
        if len(vps) > MAX_PRESENTATIONS:
            raise CredentialRefused(f"{holder[:160]} sent more than {MAX_PRESENTATIONS} presentations")
        status = StatusLists(self.fetch_status)
        issuers: dict[str, DidDocument] = {}
        verified: dict[str, dict[str, Any]] = {}
        for vp in vps:
            for raw in self._presented(vp, document):
                credential = verified_credential(raw, self._issuer(raw, issuers), now=self.clock())
                if credential.subject != holder:
                    raise CredentialRefused(
                        f"credential {credential.id[:80]} is about {credential.subject[:160]}, "
                        f"not {holder[:160]}"
                    )
                if not self.trust.allows(credential.issuer, credential.type):
                    raise CredentialRefused(
                        f"{credential.issuer[:160]} is not an issuer this node trusts for {credential.type}"
                    )
                status.check(credential, issuers[credential.issuer])
                self.schemas.check(credential)
                verified.setdefault(credential.type, dict(credential.claims))
        missing = sorted(wanted - set(verified))
        if missing:
            raise CredentialRefused(
                f"{holder[:160]} presented no {', '.join(missing)} (a requested credential)"
            )
        return verified

    def _ask(self, holder: str, document: DidDocument, access: str, scopes: list[str]) -> dict[str, Any]:
        """The caller's PresentationResponseMessage for ``scopes``."""
        endpoint = document.service("CredentialService")
        if endpoint is None:
            raise CredentialRefused(f"{holder[:160]}'s DID document names no CredentialService")
        query = {"@context": [DCP_CONTEXT], "type": "PresentationQueryMessage", "scope": scopes}
        content = json.dumps(query, separators=(",", ":")).encode()
        token = self.identity.token(holder, content, token=access)
        url = endpoint.rstrip("/") + "/presentations/query"
        response = self.outbound.request(
            "POST",
            url,
            content=content,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            max_bytes=MAX_ANSWER_BYTES,
        )
        if response.status_code != 200:
            raise CredentialRefused(
                f"{holder[:160]}'s Credential Service refused the query: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        limits = JsonLimits(max_string=MAX_ANSWER_BYTES)
        try:
            answer = loads(response.content, limits, what=f"the presentation of {holder[:160]}")
        except InvalidInput as exc:
            raise CredentialRefused(exc.detail) from None
        if (
            not isinstance(answer, dict)
            or answer.get("type", answer.get("@type")) != "PresentationResponseMessage"
        ):
            raise CredentialRefused(
                f"{holder[:160]}'s Credential Service answered no PresentationResponseMessage"
            )
        return answer

    def _presented(self, vp: Any, document: DidDocument) -> list[str]:
        """The credentials of one JWT presentation, once its holder's signature and claims hold."""
        holder = document.did
        if not isinstance(vp, str):
            raise CredentialRefused("only JWT presentations are read (vc11-sl2021/jwt)")
        header, claims = read_jwt(vp, "the presentation")
        kid = str(header.get("kid") or "")
        kid = holder + kid if kid.startswith("#") else kid
        if claims.get("iss") != holder or not kid.startswith(holder + "#"):
            raise CredentialRefused(f"the presentation is not issued by {holder[:160]} (iss, kid)")
        check_signature(vp, kid, document, "the presentation")
        aud = claims.get("aud")
        if not (aud == self.identity.did or (isinstance(aud, list) and self.identity.did in aud)):
            raise CredentialRefused(f"the presentation is meant for {str(aud)[:160]}, not this node")
        at = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if isinstance(exp, int | float) and exp <= at - LEEWAY:
            raise CredentialRefused("the presentation expired")
        if isinstance(nbf, int | float) and nbf > at + LEEWAY:
            raise CredentialRefused("the presentation is not valid yet")
        body = claims.get("vp", claims if "verifiableCredential" in claims else None)
        body = body[0] if isinstance(body, list) and body else body
        credentials = body.get("verifiableCredential") if isinstance(body, dict) else None
        if isinstance(credentials, str | dict):
            credentials = [credentials]
        if not isinstance(credentials, list) or not credentials:
            raise CredentialRefused(f"{holder[:160]}'s presentation holds no credentials")
        raw = [enveloped(c) for c in credentials[: MAX_CREDENTIALS + 1]]
        if len(raw) > MAX_CREDENTIALS or not all(isinstance(c, str) for c in raw):
            raise CredentialRefused(f"a presentation holds at most {MAX_CREDENTIALS} JWT credentials")
        return [c for c in raw if isinstance(c, str)]

    def _issuer(self, raw: str, known: dict[str, DidDocument]) -> DidDocument:
        """The DID document of the credential's issuer (resolved once per verification), asked
        for only when the issuer is one this node trusts (for some type; the type is checked
        once the credential is verified)."""
        _, claims = read_jwt(raw, "the credential")
        vc = credential_body(claims)
        issuer = vc.get("issuer", claims.get("iss")) if vc is not None else claims.get("iss")
        issuer = issuer.get("id") if isinstance(issuer, dict) else issuer
        if not isinstance(issuer, str):
            raise CredentialRefused("a presented credential names no issuer")
        if issuer not in known:
            if not self.trust.knows(issuer):
                raise CredentialRefused(f"{issuer[:160]} is not an issuer this node trusts")
            try:
                known[issuer] = self.resolve(issuer)
            except AgoraError as exc:
                raise CredentialRefused(
                    f"the DID document of issuer {issuer[:160]} cannot be read: {exc.detail}"
                ) from None
        return known[issuer]


def enveloped(credential: Any) -> Any:
    """A presented credential as its compact JWT: as it is, or out of a VC 2.0
    ``EnvelopedVerifiableCredential`` (``id`` = ``data:application/vc+jwt,<jwt>``)."""
    if isinstance(credential, dict) and credential.get("type") == "EnvelopedVerifiableCredential":
        data = credential.get("id")
        if isinstance(data, str) and data.startswith(ENVELOPE_PREFIXES):
            return data.split(",", 1)[1]
    return credential


def credential_claims_context(verified: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The verified credentials as policy operands: ``{"credentials": {operand: value}}`` with
    ``agora:credential.<Type>.<claim>`` (nested claims dotted, lists of scalars as lists) and
    the EDC-style ``<Type>`` = ``"active"`` for each type held."""
    operands: dict[str, Any] = {}

    def flatten(prefix: str, value: Any, depth: int = 0) -> None:
        if isinstance(value, dict) and depth < 4:
            for key, inner in value.items():
                flatten(f"{prefix}.{key}", inner, depth + 1)
        elif isinstance(value, str | int | float | bool):
            operands[prefix] = value
        elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            operands[prefix] = [str(v) for v in value]

    for type_, claims in sorted(verified.items()):
        operands[type_] = "active"
        flatten(CLAIM_PREFIX + type_, claims)
    return {"credentials": operands}
