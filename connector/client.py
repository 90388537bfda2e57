"""The sending side of the peer protocol: signed requests to another node, verified replies.

Every request goes through the node's one :class:`~kernel.outbound.OutboundClient` (address
rules, no redirects, timeouts, size caps); a peer client only adds the envelope and checks
that the reply is signed by the peer it asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from connector import blobs
from connector.envelope import EnvelopeRejected, open_envelope, seal
from kernel.addresses import foreign_origin
from kernel.client import raise_for_problem
from kernel.errors import AgoraError, InvalidInput, PeerError, ServiceUnavailable
from kernel.limits import JSON, JsonLimits, loads
from kernel.outbound import OutboundClient

CHUNK = 1024 * 1024
IDENTITY_BYTES = 64 * 1024  # a signed identity statement is a few hundred bytes


def _reply_limits(response: httpx.Response) -> JsonLimits:
    """A peer's reply is held to the JSON bounds before it is parsed (its size is already
    capped by the outbound client): a catalog page may hold many tokens, none may nest deep."""
    return JsonLimits(
        max_string=len(response.content), max_tokens=max(JSON.max_tokens, len(response.content) // 4)
    )


class PeerClient:
    """Talks to one peer whose address is known; refuses replies not signed by it."""

    def __init__(
        self,
        base_url: str,
        *,
        outbound: OutboundClient,
        private_key: bytes,
        own_address: str,
        peer_address: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.outbound = outbound
        self._key = private_key
        self.own_address = own_address
        self.peer_address = peer_address

    def post(
        self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], httpx.Response]:
        envelope = seal(body, private_key=self._key, recipient=self.peer_address)
        response = self.outbound.request("POST", self.base_url + path, json=envelope, params=params)
        return self._opened_reply(response), response

    def post_blob(self, path: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        """A signed message carrying raw bytes (see :mod:`connector.blobs`); the signed reply's body."""
        envelope = seal(blobs.bind(body, blob), private_key=self._key, recipient=self.peer_address)
        response = self.outbound.request(
            "POST",
            self.base_url + path,
            content=blobs.pack(envelope, blob),
            headers={"Content-Type": blobs.MEDIA_TYPE},
        )
        return self._opened_reply(response)

    def _opened_reply(self, response: httpx.Response) -> dict[str, Any]:
        self._raise_for_problem(response)
        try:
            reply = loads(response.content, _reply_limits(response), what=f"the reply of {self.base_url}")
            opened = open_envelope(reply, recipient=self.own_address)
        except InvalidInput as exc:
            raise EnvelopeRejected(
                f"peer {self.base_url} answered without a signed envelope: {exc.detail}"
            ) from exc
        if opened.sender.lower() != self.peer_address.lower():
            raise EnvelopeRejected(
                f"the reply is signed by {opened.sender}, not by the peer {self.peer_address}"
            )
        return opened.body

    @contextmanager
    def stream(
        self, path: str, body: dict[str, Any], *, max_bytes: int | None = None
    ) -> Iterator[Iterator[bytes]]:
        """A signed request whose answer is raw bytes (checked by the caller against a digest
        the peer signed elsewhere), streamed in chunks, at most ``max_bytes``."""
        envelope = seal(body, private_key=self._key, recipient=self.peer_address)
        with self.outbound.stream(
            "POST", self.base_url + path, json=envelope, max_bytes=max_bytes
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_problem(response)
            yield response.iter_bytes(CHUNK)

    def _raise_for_problem(self, response: httpx.Response) -> None:
        """The peer's problem document as an error; one of no known type names the peer."""
        try:
            raise_for_problem(response)
        except AgoraError as error:
            # a peer's 5xx (or an unknown type) is the peer's failure: never a 5xx of this node's own
            if type(error) is AgoraError or (
                error.status >= 500 and not isinstance(error, ServiceUnavailable)
            ):
                raise PeerError(f"peer {self.base_url} refused: {error.detail[:500]}") from None
            raise


def fetch_identity(url: str, outbound: OutboundClient) -> dict[str, Any]:
    """A node's self-signed identity statement (address, name, endpoint), verified."""
    response = outbound.request("GET", url.rstrip("/") + "/dsp/identity", max_bytes=IDENTITY_BYTES)
    try:
        response.raise_for_status()
        envelope = loads(response.content, what=f"the identity of {url}")
    except InvalidInput as exc:
        raise ServiceUnavailable(f"cannot read the identity of {url}: {exc.detail}") from exc
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"cannot read the identity of {url}: {exc}") from exc
    if not isinstance(envelope, dict) or "sender" not in envelope:
        raise EnvelopeRejected(f"{url} did not answer with a signed identity")
    opened = open_envelope(envelope, recipient=str(envelope["sender"]))
    identity = dict(opened.body)
    if str(identity.get("address", "")).lower() != opened.sender.lower():
        raise EnvelopeRejected(
            f"{url}'s identity names {identity.get('address')} but is signed by {opened.sender}"
        )
    identity["address"] = opened.sender
    return identity


def chain_refusal(doc: dict[str, Any], provider_endpoint: str, own_chain_rpc: str) -> str | None:
    """Why the chain a provider's provenance document names may not be asked, or None.

    Checking received bytes means asking the chain the document names; the consumer's node
    asks only its own chain or one on the provider's verified origin (the provider's
    embedded chain at ``/chain/rpc``), never an address the provider picked elsewhere."""
    rpc = (doc.get("chain") or {}).get("rpc_url") if isinstance(doc.get("chain"), dict) else None
    if isinstance(rpc, str) and own_chain_rpc and rpc.rstrip("/") == own_chain_rpc.rstrip("/"):
        return None
    return foreign_origin(rpc, provider_endpoint, "the chain the provenance names", "the provider's verified")
