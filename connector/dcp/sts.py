"""The holder's Secure Token Service, for a verifier the operator drives from outside.

A node puts an access token for its own credentials into every self-issued token it sends
(:meth:`connector.dcp.service.DcpService.presenting`). A verifier that is not called by the
node (the Eclipse DCP TCK testing the node's Credential Service, an operator's own script)
needs one handed to it. Two ways exist, both minting the same single-use, five-minute
token bound to one verifier's DID for read scopes:

* ``POST /api/v1/credentials/access-tokens`` (scope ``admin``), JSON ``{verifier, scopes}``;
* ``POST /dcp/sts/token``, the OAuth 2.0 client-credentials form EDC's STS takes and the
  TCK sends when ``dataspacetck.sts.url`` names ``<node>/dcp/sts``: ``grant_type=
  client_credentials``, ``client_id``, ``client_secret``, ``audience`` (the verifier's DID),
  ``bearer_access_scope`` (space-separated scopes). The answer's ``access_token`` is a
  self-issued ID token of this node for that audience whose ``token`` claim is the access
  token. It answers only when the operator set ``AGORA_DCP_STS_CLIENT_ID`` and
  ``AGORA_DCP_STS_CLIENT_SECRET`` (at least 24 characters); otherwise 404.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from connector.dcp.credentials import Signer
from connector.dcp.tokens import ACCESS_TTL, MAX_SCOPES, mint_access_token, parse_scopes
from connector.dcp.verifier import TokenSigner
from kernel.errors import InvalidInput, NotFound, Unauthorized, UnsupportedMediaType

MAX_FORM_BYTES = 16 * 1024
MIN_SECRET = 24
FORM = "application/x-www-form-urlencoded"
_FIELDS = ("grant_type", "client_id", "client_secret", "audience", "bearer_access_scope")


def check_grant(verifier: str, scopes: Sequence[str]) -> None:
    """An access token is bound to a verifier's DID and grants read scopes by type or id."""
    if not verifier.startswith("did:") or len(verifier) > 500 or any(c.isspace() for c in verifier):
        raise InvalidInput(f"an access token is bound to a verifier's DID, not {verifier[:100]!r}")
    if not 1 <= len(scopes) <= MAX_SCOPES:
        raise InvalidInput(f"an access token grants 1 to {MAX_SCOPES} scopes, not {len(scopes)}")
    for scope in scopes:
        if len(scope) > 300 or not parse_scopes([scope]):
            raise InvalidInput(f"{scope[:100]!r} is not a read scope of credentials by type or id")


class SecureTokenService:
    def __init__(self, *, identity: TokenSigner, signer: Signer, client_id: str, client_secret: str) -> None:
        if not client_id or len(client_secret) < MIN_SECRET:
            raise ValueError(
                f"the token service needs a client id and a client secret of at least {MIN_SECRET} characters"
            )
        self.identity = identity
        self.signer = signer
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()

    def token(self, raw: bytes, content_type: str | None) -> dict[str, Any]:
        """The token response for a client-credentials request, or a 4xx with the reason;
        the client is authenticated before anything it asks for is looked at."""
        form = _form(raw, content_type)
        client_ok = secrets.compare_digest(form["client_id"].encode(), self._client_id)
        secret_ok = secrets.compare_digest(form["client_secret"].encode(), self._client_secret)
        if not (client_ok and secret_ok):
            raise Unauthorized("the client id or secret is not this token service's", error="invalid_client")
        if form["grant_type"] != "client_credentials":
            raise InvalidInput(
                f"the token service grants client_credentials only, not {form['grant_type'][:40]!r}",
                error="unsupported_grant_type",
            )
        audience, scopes = form["audience"], form["bearer_access_scope"].split()
        try:
            check_grant(audience, scopes)
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, error="invalid_scope") from None
        access = mint_access_token(self.signer, audience, scopes)
        return {
            "access_token": self.identity.token(audience, token=access),
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL,
        }


def unconfigured() -> NotFound:
    """The refusal of a node whose operator runs no token service."""
    return NotFound(
        "this node runs no token service: set AGORA_DCP_STS_CLIENT_ID and AGORA_DCP_STS_CLIENT_SECRET"
    )


def _form(raw: bytes, content_type: str | None) -> dict[str, str]:
    if (content_type or "").split(";")[0].strip().lower() != FORM:
        raise UnsupportedMediaType(f"a token request is a form ({FORM})")
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidInput(f"a token request is limited to {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the token request is not a readable form", error="invalid_request") from None
    missing = [f for f in _FIELDS if not fields.get(f, [""])[0]]
    if missing:
        raise InvalidInput(f"the token request lacks {', '.join(missing)}", error="invalid_request")
    repeated = [f for f in _FIELDS if len(fields[f]) > 1]
    if repeated:
        raise InvalidInput(f"the token request repeats {', '.join(repeated)}", error="invalid_request")
    return {f: fields[f][0] for f in _FIELDS}
