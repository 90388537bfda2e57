"""The holder's Credential Service: presenting credentials to a verifier, and taking new
ones from their issuers (DCP Resolution, Storage and Offer APIs).

``POST /dcp/presentations/query`` (a ``PresentationQueryMessage``): the verifier's
self-issued token must be meant for this node and carry, in its ``token`` claim, an access
token this node issued to that very verifier (:mod:`connector.dcp.tokens`). The query asks by
``scope`` only: with a ``presentationDefinition`` as well it is a 400, a presentation
definition alone is not supported (501) unless empty (400). The answer holds the held,
unexpired credentials of the scopes both asked and granted (asking for more than the token
grants gets less, not an error) in one JWT presentation signed by this node for the verifier.

``POST /dcp/credentials`` (a ``CredentialMessage``) and ``POST /dcp/offers`` (a
``CredentialOfferMessage``) are for issuers the operator trusts: a CredentialMessage names
its ``status`` (ISSUED or REJECTED), ``issuerPid`` and ``holderPid``; a delivered credential is
checked (the issuer's signature, this node as its subject, a type trusted from that issuer)
and kept; an offer is recorded in the audit log for the operator to act on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from connector.dcp.credentials import (
    FORMATS,
    VC_CONTEXT,
    CredentialRefused,
    Signer,
    parse_credential,
    verified_credential,
)
from connector.dcp.stores import HolderStore, TrustedIssuers
from connector.dcp.tokens import (
    Caller,
    Resolver,
    check_caller,
    parse_scopes,
    query_scopes,
    read_access_token,
    redeem_access_token,
)
from connector.dsp.id_tokens import Unverified
from kernel.audit import record
from kernel.db import transaction
from kernel.errors import AgoraError, Forbidden, InvalidInput

DCP_CONTEXT = "https://w3id.org/dspace-dcp/v1.0/dcp.jsonld"
PE_CONTEXT = "https://identity.foundation/presentation-exchange/submission/v1"
VP_TTL = 300
MAX_CREDENTIALS = 64  # in one delivery, offer or presentation
MAX_PID = 200  # an issuerPid or holderPid


class NotSupported(AgoraError):
    type_slug = "not-supported"
    status = 501
    title = "Not supported"


def credential_service_entry(did: str, public_url: str) -> dict[str, Any]:
    """The ``service`` entry of this node's DID document naming its Credential Service."""
    return {
        "id": f"{did}#credential-service",
        "type": "CredentialService",
        "serviceEndpoint": public_url.rstrip("/") + "/dcp",
    }


def _message(body: Any, expected: str) -> dict[str, Any]:
    """A DCP message of type ``expected`` in the DCP context, else a 400."""
    if not isinstance(body, dict):
        raise InvalidInput(f"a {expected} is a JSON object")
    kind = body.get("type", body.get("@type"))
    if kind != expected:
        raise InvalidInput(f"expected a {expected}, got {str(kind)[:80]!r}")
    context = body.get("@context")
    contexts = context if isinstance(context, list) else [context]
    if DCP_CONTEXT not in contexts:
        raise InvalidInput(f"a {expected}'s @context names {DCP_CONTEXT}")
    return body


class CredentialService:
    def __init__(
        self,
        engine: Engine,
        *,
        signer: Signer,
        resolve: Resolver,
        holder: HolderStore,
        trust: TrustedIssuers,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.resolve = resolve
        self.holder = holder
        self.trust = trust
        self.clock = clock

    def _caller(
        self, authorization: str | None, raw: bytes, admit: Callable[[Unverified], None] | None = None
    ) -> Caller:
        return check_caller(
            self.engine,
            authorization,
            raw,
            audience=self.signer.did,
            resolve=self.resolve,
            now=self.clock(),
            admit=admit,
        )

    # Resolution API --------------------------------------------------------------------

    def query(self, authorization: str | None, raw: bytes, body: Any) -> dict[str, Any]:
        """Answer a verifier's PresentationQueryMessage. The access token the verifier's token
        carries must be one this node issued it before the verifier's DID is resolved."""

        def admit(unverified: Unverified) -> None:
            token = unverified.claims.get("token")
            read_access_token(self.signer, token, verifier=unverified.did, now=self.clock())

        caller = self._caller(authorization, raw, admit)
        message = _message(body, "PresentationQueryMessage")
        if "presentationDefinition" in message:
            if "scope" in message:
                raise InvalidInput("a query asks by scope or by presentationDefinition, not both")
            if not message["presentationDefinition"]:
                raise InvalidInput("the query's presentationDefinition is empty")
            raise NotSupported("this Credential Service answers queries by scope, not presentationDefinition")
        asked = parse_scopes(query_scopes(message.get("scope")))
        granted = redeem_access_token(
            self.engine, self.signer, caller.claims.get("token"), verifier=caller.did, now=self.clock()
        )
        allowed = asked & granted
        if not allowed:
            raise Forbidden(f"the access token grants {caller.did[:160]} none of the scopes it asks for")
        rows = self.holder.matching(
            subject=self.signer.did,
            types=[s.value for s in allowed if s.kind == "type"],
            ids=[s.value for s in allowed if s.kind == "id"],
        )
        credentials = [r.raw for r in rows[:MAX_CREDENTIALS]]
        return {
            "@context": [DCP_CONTEXT],
            "type": "PresentationResponseMessage",
            "presentation": [self.presentation(caller.did, credentials)],
        }

    def presentation(self, verifier: str, credentials: list[str]) -> str:
        """A JWT presentation of ``credentials`` for ``verifier``, signed by this node."""
        at = int(self.clock())
        return self.signer.sign(
            {
                "iss": self.signer.did,
                "sub": self.signer.did,
                "aud": verifier,
                "jti": f"urn:uuid:{uuid.uuid4()}",
                "iat": at,
                "nbf": at,
                "exp": at + VP_TTL,
                "vp": {
                    "@context": [VC_CONTEXT, PE_CONTEXT],
                    "type": "VerifiablePresentation",
                    "verifiableCredential": credentials,
                },
            }
        )

    # Storage and Offer APIs ------------------------------------------------------------

    def _issuer(self, authorization: str | None, raw: bytes) -> Caller:
        """A trusted issuer, judged before its DID document is asked for."""

        def admit(unverified: Unverified) -> None:
            did = unverified.did
            if not self.trust.knows(did):
                trust_add = "agora credentials trust add"
                raise Forbidden(f"{did[:160]} is not an issuer this node trusts ({trust_add})")

        return self._caller(authorization, raw, admit)

    def receive(self, authorization: str | None, raw: bytes, body: Any) -> dict[str, Any]:
        """Take a CredentialMessage: keep the credentials an ISSUED one delivers."""
        caller = self._issuer(authorization, raw)
        message = _message(body, "CredentialMessage")
        status = message.get("status")
        if status not in ("ISSUED", "REJECTED"):
            raise InvalidInput(
                f"a CredentialMessage's status is ISSUED or REJECTED, not {str(status)[:40]!r}"
            )
        for name in ("issuerPid", "holderPid"):
            pid = message.get(name)
            if not isinstance(pid, str) or not 0 < len(pid) <= MAX_PID:
                raise InvalidInput(f"a CredentialMessage names its {name} (1 to {MAX_PID} characters)")
        issuer_pid = str(message["issuerPid"])
        if status == "REJECTED":
            self._note(
                caller.did, "credential.rejected", issuer_pid, {"reason": message.get("rejectionReason")}
            )
            return {"stored": []}
        entries = message.get("credentials")
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_CREDENTIALS:
            raise InvalidInput(f"an ISSUED CredentialMessage delivers 1 to {MAX_CREDENTIALS} credentials")
        checked = [self._delivered(caller, entry) for entry in entries]
        stored = []
        for credential in checked:
            self.holder.add(credential, actor=caller.did, source=f"issuer {issuer_pid[:100]}")
            stored.append(credential.id)
        return {"stored": stored}

    def _delivered(self, caller: Caller, entry: Any) -> Any:
        if not isinstance(entry, dict) or not isinstance(entry.get("payload"), str):
            raise InvalidInput("each delivered credential is {credentialType, payload: <JWT>, format}")
        if entry.get("format", "jwt") not in FORMATS:
            raise InvalidInput(
                f"credential format {str(entry.get('format'))[:40]!r} is not {' or '.join(FORMATS)}"
            )
        try:
            credential = parse_credential(entry["payload"])
        except CredentialRefused as exc:
            raise InvalidInput(exc.detail) from None
        if credential.issuer != caller.did:
            raise Forbidden(f"{caller.did[:160]} delivered a credential issued by {credential.issuer[:160]}")
        credential = verified_credential(entry["payload"], caller.document, now=self.clock())
        if credential.subject != self.signer.did:
            raise Forbidden(f"a delivered credential is about {credential.subject[:160]}, not this node")
        named = entry.get("credentialType")
        if named is not None and named not in credential.types:
            raise InvalidInput(f"the credential delivered as {str(named)[:80]} is a {credential.type}")
        if not self.trust.allows(caller.did, credential.type):
            raise Forbidden(f"{caller.did[:160]} is not trusted to issue {credential.type}")
        return credential

    def offer(self, authorization: str | None, raw: bytes, body: Any) -> dict[str, Any]:
        """Take a CredentialOfferMessage: recorded for the operator."""
        caller = self._issuer(authorization, raw)
        message = _message(body, "CredentialOfferMessage")
        if message.get("issuer") != caller.did:
            raise InvalidInput("a CredentialOfferMessage names its sender as its issuer")
        offered = message.get("credentials")
        if not isinstance(offered, list) or not 0 < len(offered) <= MAX_CREDENTIALS:
            raise InvalidInput(f"an offer lists 1 to {MAX_CREDENTIALS} credentials")
        summary = []
        for item in offered:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise InvalidInput("each offered credential is an object with an id")
            summary.append(
                {"id": item["id"][:200], "credentialType": str(item.get("credentialType", ""))[:100]}
            )
        self._note(caller.did, "credential.offer", caller.did, {"credentials": summary})
        return {"received": len(summary)}

    def _note(self, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
        with transaction(self.engine) as session:
            record(
                session,
                actor=actor[:200],
                action=action,
                subject_type="issuer",
                subject_id=subject[:200],
                details=details,
            )
