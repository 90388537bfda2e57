"""Data space membership: the credentials every protocol caller presents (``AGORA_DCP_SCOPES``).

When the operator names membership scopes (``org.eclipse.dspace.dcp.vc.type:MembershipCredential:read``
and the like), the protocol gate (:class:`~connector.dsp.gate.ProtocolGate`) has each caller's
presentation fetched from its Credential Service and verified
(:class:`~connector.dcp.verifier.Verifier`) before a catalog, negotiation or transfer request
is served; a caller that is not a peer may then be admitted on its presentation alone.

The cost an unknown caller can cause is bounded: the gate checks its token's form, algorithm,
audience, times and ``jti`` before anything is fetched; DID documents are kept for
:data:`DOCUMENT_TTL` seconds (at most :data:`MAX_ENTRIES` of them), and a verified result per
(DID, token ``jti``) for as long, so a message read twice (a retried blob) is not verified twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from connector.dcp.tokens import Resolver
from connector.dcp.verifier import Verifier
from connector.dsp.id_tokens import TokenRejected
from connector.dsp.identity import DidDocument
from kernel.errors import AgoraError
from kernel.expiring import Expiring

DOCUMENT_TTL = 60.0
MAX_ENTRIES = 1024


class Membership:
    """Checks a caller's membership presentation for the operator's ``scopes``."""

    def __init__(
        self,
        scopes: Sequence[str],
        *,
        verifier: Verifier,
        resolve: Resolver,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = DOCUMENT_TTL,
        use_https: bool = True,
    ) -> None:
        if not scopes:
            raise ValueError("membership needs at least one scope")
        self.scopes = list(scopes)
        self.use_https = use_https  # how did:web resolves (the origin an admitted caller is kept at)
        self.verifier = verifier
        self._resolve = resolve
        self._documents = Expiring(ttl, clock, MAX_ENTRIES)
        self._verified = Expiring(ttl, clock, MAX_ENTRIES)

    def document(self, did: str) -> DidDocument:
        """``did``'s document (resolved through the node's outbound client, kept a minute)."""
        known = self._documents.get(did)
        if isinstance(known, DidDocument):
            return known
        try:
            document = self._resolve(did)
        except TokenRejected:
            raise
        except AgoraError as exc:
            raise TokenRejected(f"the DID document of {did[:160]} cannot be read: {exc.detail}") from None
        self._documents.put(did, document)
        return document

    def verify(self, claims: dict[str, Any], document: DidDocument) -> dict[str, dict[str, Any]]:
        """The caller's verified credentials ``{type: claims}`` (its token's ``claims`` checked
        already); :class:`~connector.dcp.credentials.CredentialRefused` or
        :class:`~connector.dsp.id_tokens.TokenRejected` naming the failed check."""
        key = (document.did, str(claims.get("jti", "")))
        known = self._verified.get(key)
        if isinstance(known, dict):
            return known
        verified = self.verifier.verify(claims, document, self.scopes)
        self._verified.put(key, verified)
        return verified
