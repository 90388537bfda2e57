"""The sending side of the protocol: the node's one client for requests to peers.

Every request goes through the node's one :class:`~kernel.outbound.OutboundClient` (address
rules, no redirects, timeouts, size caps) to the DSP base URL the peer advertises; a peer
client only adds this node's self-issued token for the peer's DID (binding the body) and
reads the plain JSON answer within bounds. A peer's refusal arrives as a DSP error message
(``…Error`` with ``code`` and ``reason``) or a problem document, and becomes the error
class its code names; a 5xx or an unknown code is the peer's failure (:class:`PeerError`).

:func:`resolve_did` and :func:`discover_dsp_base` are how a new peer is read: its DID
document, and ``/.well-known/dspace-version``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from connector import blobs
from connector.dsp.binding import VERSION
from connector.dsp.identity import DidDocument, NodeIdentity, did_document_url, read_did_document
from connector.models import Participant
from kernel.client import raise_for_problem
from kernel.errors import PROBLEM_BASE, AgoraError, InvalidInput, PeerError, ServiceUnavailable
from kernel.limits import JSON, JsonLimits, loads
from kernel.outbound import OutboundClient, OutboundRefused

CHUNK = 1024 * 1024
DOCUMENT_BYTES = 64 * 1024  # a DID document or version metadata is a few hundred bytes


def _reply_limits(response: httpx.Response) -> JsonLimits:
    """A peer's reply is held to the JSON bounds before it is parsed (its size is already
    capped by the outbound client): a catalog page may hold many tokens, none may nest deep."""
    return JsonLimits(
        max_string=len(response.content), max_tokens=max(JSON.max_tokens, len(response.content) // 4)
    )


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class PeerClient:
    """Talks to one peer at its DSP base, as this node (its token for the peer's DID)."""

    def __init__(
        self,
        base_url: str,
        *,
        outbound: OutboundClient,
        identity: NodeIdentity,
        peer_did: str,
        claims: Callable[[str], dict[str, Any]] = lambda _did: {},
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.outbound = outbound
        self.identity = identity
        self.peer_did = peer_did
        self._claims = claims

    def _headers(
        self, method: str, url: str, content: bytes, media_type: str = "application/json"
    ) -> dict[str, str]:
        request = (method, urlsplit(url).path)
        token = self.identity.token(self.peer_did, content, request=request, **self._claims(self.peer_did))
        return {"Authorization": f"Bearer {token}", "Content-Type": media_type}

    def post(
        self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], httpx.Response]:
        return self.post_url(self.base_url + path, body, params)

    def post_url(
        self, url: str, body: dict[str, Any], params: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], httpx.Response]:
        """POST to a full URL (a callback address the peer gave, checked by the caller)."""
        content = _encode(body)
        response = self.outbound.request(
            "POST", url, content=content, headers=self._headers("POST", url, content), params=params
        )
        return self._reply(response), response

    def get(self, path: str) -> dict[str, Any]:
        url = self.base_url + path
        response = self.outbound.request("GET", url, headers=self._headers("GET", url, b""))
        return self._reply(response)

    def post_blob(self, path: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        """A message carrying raw bytes (see :mod:`connector.blobs`); the reply's body."""
        content, url = blobs.pack(blobs.bind(body, blob), blob), self.base_url + path
        response = self.outbound.request(
            "POST", url, content=content, headers=self._headers("POST", url, content, blobs.MEDIA_TYPE)
        )
        return self._reply(response)

    def _reply(self, response: httpx.Response) -> dict[str, Any]:
        self._raise_for_error(response)
        if not response.content.strip():
            return {}
        try:
            reply = loads(response.content, _reply_limits(response), what=f"the reply of {self.base_url}")
        except InvalidInput as exc:
            raise PeerError(f"peer {self.base_url} answered with no readable JSON: {exc.detail}") from exc
        if not isinstance(reply, dict):
            raise PeerError(f"peer {self.base_url} answered with JSON that is not an object")
        return reply

    @contextmanager
    def stream(
        self, path: str, body: dict[str, Any], *, max_bytes: int | None = None
    ) -> Iterator[Iterator[bytes]]:
        """A request whose answer is raw bytes (checked by the caller against a digest the
        peer stated elsewhere), streamed in chunks, at most ``max_bytes``."""
        content, url = _encode(body), self.base_url + path
        with self.outbound.stream(
            "POST", url, content=content, headers=self._headers("POST", url, content), max_bytes=max_bytes
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_error(response)
            yield response.iter_bytes(CHUNK)

    def _raise_for_error(self, response: httpx.Response) -> None:
        """The peer's refusal as an error; one of no known code names the peer."""
        if response.status_code < 400:
            return
        try:
            raise_for_problem(_as_problem(response))
        except AgoraError as error:
            # a peer's 5xx (or an unknown type) is the peer's failure: never a 5xx of this node's own
            if type(error) is AgoraError or (
                error.status >= 500 and not isinstance(error, ServiceUnavailable)
            ):
                raise PeerError(f"peer {self.base_url} refused: {error.detail[:500]}") from None
            raise


def _as_problem(response: httpx.Response) -> httpx.Response:
    """A DSP error message (``code``, ``reason``) read as the problem document it stands for."""
    try:
        body = loads(response.content, what="the error message")
    except InvalidInput:
        return response
    if not (isinstance(body, dict) and str(body.get("@type", "")).endswith("Error") and "code" in body):
        return response
    reasons = body.get("reason") or []
    words = [
        str(r.get("@value", r) if isinstance(r, dict) else r)
        for r in (reasons if isinstance(reasons, list) else [reasons])
    ]
    problem = {
        "type": PROBLEM_BASE + str(body["code"]),
        "detail": "; ".join(words)[:2000] or str(body["code"]),
    }
    return httpx.Response(response.status_code, json=problem)


class PeerClients:
    """Makes the client for a participant from what this node knows of it."""

    def __init__(
        self,
        outbound: OutboundClient,
        identity: NodeIdentity,
        lookup: Callable[[str], Participant | None],
        claims: Callable[[str], dict[str, Any]] = lambda _did: {},
    ) -> None:
        self.outbound = outbound
        self.identity = identity
        self._lookup = lookup
        self.claims = claims  # what every token adds (the access token of this node's credentials)

    def to(self, address: str, base_url: str | None = None) -> PeerClient:
        """A client for participant ``address`` at its DSP base (or ``base_url``)."""
        peer = self._lookup(address)
        if peer is None or not peer.did:
            raise InvalidInput(f"{address} is not a participant this node has a DID for")
        return PeerClient(
            base_url or peer.dsp_url or peer.endpoint,
            outbound=self.outbound,
            identity=self.identity,
            peer_did=peer.did,
            claims=self.claims,
        )


def _document(outbound: OutboundClient, url: str, what: str) -> Any:
    try:
        response = outbound.request("GET", url, max_bytes=DOCUMENT_BYTES)
        response.raise_for_status()
        return loads(response.content, what=what)
    except OutboundRefused:
        raise
    except InvalidInput as exc:
        raise ServiceUnavailable(f"cannot read {what} at {url}: {exc.detail}") from exc
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"cannot read {what} at {url}: {exc}") from exc


def resolve_did(did: str, outbound: OutboundClient, *, use_https: bool = True) -> DidDocument:
    """``did``'s document, fetched and checked (its id is ``did``; keys it can check)."""
    url = did_document_url(did, use_https=use_https)
    return read_did_document(did, _document(outbound, url, f"the DID document of {did[:160]}"))


def discover_dsp_base(url: str, outbound: OutboundClient) -> str:
    """The DSP base URL a connector at ``url`` advertises for version 2025-1: its
    ``/.well-known/dspace-version`` at the origin, or under ``url``'s path."""
    parts = httpx.URL(url.rstrip("/"))
    root = str(parts.copy_with(path="/", query=None, fragment=None)).rstrip("/")
    tried = [root + "/.well-known/dspace-version"]
    if parts.path not in ("", "/"):
        tried.append(url.rstrip("/") + "/.well-known/dspace-version")
    failures = []
    for where in tried:
        try:
            metadata = _document(outbound, where, "the DSP version metadata")
        except ServiceUnavailable as exc:
            failures.append(exc.detail)
            continue
        versions = metadata.get("protocolVersions") if isinstance(metadata, dict) else None
        for entry in versions if isinstance(versions, list) else []:
            if isinstance(entry, dict) and entry.get("version") == VERSION:
                binding = str(entry.get("binding", "HTTPS")).upper()
                path = entry.get("path")
                if binding == "HTTPS" and isinstance(path, str) and path.startswith("/"):
                    return root + path.rstrip("/")
        failures.append(f"{where} lists no DSP {VERSION} HTTPS binding")
    raise ServiceUnavailable(f"{url} advertises no DSP {VERSION} base: " + "; ".join(failures))
