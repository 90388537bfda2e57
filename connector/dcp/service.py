"""One object for the credential side of a node, built once by the runtime.

:class:`DcpService` holds the holder's store, the trusted issuers, the Credential Service
(for the ``/dcp`` routes), the verifier (for the protocol gate and the policies) and the
node's signer, and does what the management API and the command line ask: issue a
credential, import one, list and remove them, manage the trusted issuers, and mint the
access token this node hands a verifier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from connector.dcp.credentials import CredentialRefused, Signer, issue_credential, verified_credential
from connector.dcp.presentation import CredentialService
from connector.dcp.stores import HolderStore, TrustedIssuers, view
from connector.dcp.sts import SecureTokenService
from connector.dcp.tokens import Resolver, mint_access_token, type_scope
from connector.dcp.verifier import TokenSigner, Verifier
from kernel.errors import AgoraError, InvalidInput
from kernel.outbound import OutboundClient


@dataclass
class DcpService:
    signer: Signer
    holder: HolderStore
    trust: TrustedIssuers
    credentials: CredentialService
    verifier: Verifier
    resolve: Resolver
    sts: SecureTokenService | None = None  # AGORA_DCP_STS_*: tokens for a verifier driven from outside

    @classmethod
    def build(
        cls,
        engine: Engine,
        *,
        identity: TokenSigner,
        private_key: Callable[[], bytes],
        outbound: OutboundClient,
        resolve: Resolver,
        clock: Callable[[], float] = time.time,
    ) -> DcpService:
        """The credential side of the node whose ``identity`` (DID, self-issued tokens) and
        organisation ``private_key`` (credentials and presentations) are given."""
        signer = Signer.secp256k1(identity.did, private_key)
        holder, trust = HolderStore(engine), TrustedIssuers(engine)
        return cls(
            signer=signer,
            holder=holder,
            trust=trust,
            credentials=CredentialService(
                engine, signer=signer, resolve=resolve, holder=holder, trust=trust, clock=clock
            ),
            verifier=Verifier(
                identity=identity, outbound=outbound, resolve=resolve, trust=trust, clock=clock
            ),
            resolve=resolve,
        )

    def issue(
        self,
        subject: str,
        type_: str,
        claims: Mapping[str, Any] | None = None,
        *,
        days: float | None = 365,
        status: Mapping[str, Any] | None = None,
    ) -> str:
        """A credential signed by this node (it is its data space's issuer)."""
        return issue_credential(
            self.signer, subject=subject, type_=type_, claims=claims, days=days, status=status
        )

    def import_credential(self, raw: str, *, actor: str) -> dict[str, Any]:
        """Keep a credential received out of band: its issuer's signature, its dates and this
        node as its subject are checked (whether its issuer is trusted is each verifier's
        question)."""
        from connector.dcp.credentials import parse_credential

        try:
            credential = parse_credential(raw)
            try:
                document = self.resolve(credential.issuer)
            except AgoraError as exc:
                raise CredentialRefused(
                    f"the DID document of issuer {credential.issuer[:160]} cannot be read: {exc.detail}"
                ) from None
            credential = verified_credential(raw, document)
        except CredentialRefused as exc:
            raise InvalidInput(exc.detail) from None
        if credential.subject != self.signer.did:
            raise InvalidInput(
                f"the credential is about {credential.subject[:160]}, not this node ({self.signer.did})"
            )
        return view(self.holder.add(credential, actor=actor, source="import"))

    def verified(self, claims: dict[str, Any], did: str, types: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The caller's verified credentials of ``types`` (``{type: claims}``): its presentation,
        fetched from its credential service with the access token its request carried."""
        return self.verifier.verify(claims, self.resolve(did), [type_scope(t) for t in types])

    def presenting(self, verifier: str) -> dict[str, str]:
        """The ``token`` claim this node's requests to ``verifier`` carry: read access to the
        credentials it holds (none when it holds none)."""
        types = sorted({row.type for row in self.holder.all()})
        return {"token": self.access_token(verifier, types)} if types else {}

    def held(self) -> list[dict[str, Any]]:
        return [view(r) for r in self.holder.all()]

    def access_token(self, verifier: str, types: Sequence[str]) -> str:
        """The access token this node puts into its self-issued token's ``token`` claim when it
        calls ``verifier``: read access to its credentials of ``types``."""
        return mint_access_token(self.signer, verifier, [type_scope(t) for t in types])
