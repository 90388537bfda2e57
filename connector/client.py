"""The sending side of the peer protocol: signed requests to another node, verified replies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from connector.envelope import EnvelopeRejected, open_envelope, seal
from kernel.client import raise_for_problem
from kernel.errors import AgoraError, ServiceUnavailable

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=3.0)
CHUNK = 1024 * 1024


class PeerClient:
    """Talks to one peer whose address is known; refuses replies not signed by it."""

    def __init__(
        self,
        base_url: str,
        *,
        private_key: bytes,
        own_address: str,
        peer_address: str,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = private_key
        self.own_address = own_address
        self.peer_address = peer_address
        self.http = http or httpx.Client(timeout=TIMEOUT, transport=httpx.HTTPTransport(retries=2))

    def post(
        self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], httpx.Response]:
        envelope = seal(body, private_key=self._key, recipient=self.peer_address)
        try:
            response = self.http.post(self.base_url + path, json=envelope, params=params)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"peer {self.base_url} unreachable: {exc}") from exc
        self._raise_for_problem(response)
        try:
            opened = open_envelope(response.json(), recipient=self.own_address)
        except ValueError as exc:
            raise EnvelopeRejected(f"peer {self.base_url} answered without a signed envelope") from exc
        if opened.sender.lower() != self.peer_address.lower():
            raise EnvelopeRejected(
                f"the reply is signed by {opened.sender}, not by the peer {self.peer_address}"
            )
        return opened.body, response

    @contextmanager
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[Iterator[bytes]]:
        """A signed request whose answer is raw bytes (checked by the caller against a digest
        the peer signed elsewhere), streamed in chunks."""
        envelope = seal(body, private_key=self._key, recipient=self.peer_address)
        try:
            with self.http.stream(
                "POST", self.base_url + path, json=envelope, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_problem(response)
                yield response.iter_bytes(CHUNK)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"peer {self.base_url} unreachable: {exc}") from exc

    def _raise_for_problem(self, response: httpx.Response) -> None:
        """The peer's problem document as an error; one of no known type names the peer."""
        try:
            raise_for_problem(response)
        except AgoraError as error:
            if type(error) is AgoraError:
                raise AgoraError(f"peer {self.base_url} refused: {error.detail}") from None
            raise

    def close(self) -> None:
        self.http.close()


def fetch_identity(url: str, http: httpx.Client | None = None) -> dict[str, Any]:
    """A node's self-signed identity statement (address, name, endpoint), verified."""
    client = http or httpx.Client(timeout=TIMEOUT)
    try:
        response = client.get(url.rstrip("/") + "/dsp/identity")
        response.raise_for_status()
        envelope = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ServiceUnavailable(f"cannot read the identity of {url}: {exc}") from exc
    finally:
        if http is None:
            client.close()
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
