"""The one HTTP client for every request this node makes to another party.

Peers, their catalogs, data addresses, identity statements and identity providers are
reached through :class:`OutboundClient` only, so the same guarantees hold everywhere:

* connections go only to addresses :class:`~kernel.addresses.AddressRules` allows, decided
  on the address the host resolved to, and the socket connects to that very address (a DNS
  answer that changes between the check and the connection cannot slip past);
* no redirect is followed (a 3xx is refused with its ``Location``), no proxy from the
  environment is used, and compressed answers are refused (no decompression bombs);
* connect and read timeouts, and a total deadline for each request and its answer, so a
  peer that trickles one byte at a time cannot hold a thread;
* a size cap on each answer, enforced while it streams in (an announced ``Content-Length``
  over the cap is refused before reading).

A refusal is an :class:`OutboundRefused` naming the URL and the rule; a peer that cannot be
reached or is too slow is :class:`~kernel.errors.ServiceUnavailable` (callers may retry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpcore
import httpx

from kernel.addresses import AddressRefused, AddressRules, Resolver, hosts_of, origin_text, system_resolver
from kernel.errors import AgoraError, ServiceUnavailable

MiB = 1024 * 1024
_DEADLINE = "agora.deadline"  # request extensions read by the transport
_MAX_BYTES = "agora.max_bytes"
_TOTAL = "the total time limit for the request passed"


class OutboundRefused(AgoraError):
    """The node will not send this request, or will not take this answer."""

    type_slug = "outbound-refused"
    status = 502
    title = "Outbound request refused"


@dataclass(frozen=True)
class OutboundPolicy:
    """Limits of outbound requests; built from the settings (``AGORA_OUTBOUND_*``)."""

    rules: AddressRules = field(default_factory=AddressRules)
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    deadline: float = 120.0  # seconds for one request and its whole answer
    max_response_bytes: int = 16 * MiB  # protocol messages, identity statements, key sets
    max_download_bytes: int = 8 * 1024 * MiB  # streamed downloads (checked against a digest)
    min_download_rate: int = 64 * 1024  # bytes/s a download must average (its deadline)
    retries: int = 1


_local = threading.local()  # the deadline of the request this thread is sending or reading


def _bounded(timeout: float | None) -> float | None:
    """``timeout`` shortened to what is left of this thread's request deadline."""
    until: float | None = getattr(_local, "until", None)
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout(_TOTAL)
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every read and write respects the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _bounded(timeout))
        except httpcore.ReadTimeout:
            _bounded(None)  # says so when it was the deadline, not the read timeout, that ran out
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """Resolves, checks every address against the rules, connects to a checked one."""

    def __init__(self, rules: AddressRules, resolve: Resolver) -> None:
        self._rules = rules
        self._resolve = resolve
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._rules.addresses(host, port, self._resolve)
        except AddressRefused as exc:
            raise OutboundRefused(f"this node does not connect to {exc}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        failure: Exception = httpcore.ConnectError(f"cannot connect to {host}")
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address, port, _bounded(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _Stream(stream)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise OutboundRefused("outbound requests go over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _CappedBody(httpx.SyncByteStream):
    """An answer's body, cut off (and refused) once it passes its cap or its deadline."""

    def __init__(self, inner: httpx.SyncByteStream, cap: int, until: float | None, url: str) -> None:
        self._inner, self._cap, self._until, self._url = inner, cap, until, url

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        parts = iter(self._inner)
        while True:
            _local.until = self._until
            try:
                part = next(parts)
            except StopIteration:
                return
            finally:
                _local.until = None
            received += len(part)
            if received > self._cap:
                raise OutboundRefused(f"the answer from {self._url} is larger than {self._cap} bytes")
            yield part

    def close(self) -> None:
        self._inner.close()


class _Transport(httpx.HTTPTransport):
    """httpx's transport with the guarded network backend, redirect refusal and caps."""

    def __init__(self, policy: OutboundPolicy, resolve: Resolver) -> None:
        super().__init__(trust_env=False, retries=policy.retries)
        # the pool httpx builds, with the one difference that matters: the network backend
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=True),
            retries=policy.retries,
            network_backend=_Backend(policy.rules, resolve),
        )
        self._policy = policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        seconds = request.extensions.get(_DEADLINE)
        until = time.monotonic() + float(seconds) if seconds else None
        cap = int(request.extensions.get(_MAX_BYTES, self._policy.max_response_bytes))
        url = str(request.url.copy_with(query=None))
        _local.until = until
        try:
            response = super().handle_request(request)
        finally:
            _local.until = None
        refusal = _refusal(response, cap, url)
        if refusal:
            response.close()
            raise OutboundRefused(refusal)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _CappedBody(response.stream, cap, until, url)
        return response


def _refusal(response: httpx.Response, cap: int, url: str) -> str | None:
    if 300 <= response.status_code < 400 and "location" in response.headers:
        return (
            f"{url} answered {response.status_code} redirecting to {response.headers['location']}: "
            "this node follows no redirects"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"{url} answered compressed ({encoding}); this node asks for and takes identity only"
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        return f"the answer from {url} announces {length} bytes, more than the {cap} this node takes"
    return None


class OutboundClient:
    """Thread-safe; one per node (its connection pool is shared by every caller)."""

    def __init__(self, policy: OutboundPolicy | None = None, *, resolve: Resolver = system_resolver) -> None:
        self.policy = policy or OutboundPolicy()
        self._resolve = resolve
        self._http = httpx.Client(
            transport=_Transport(self.policy, resolve),
            timeout=httpx.Timeout(self.policy.read_timeout, connect=self.policy.connect_timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"Accept-Encoding": "identity"},
        )

    def exempting(self, *urls: str) -> OutboundClient:
        """A client for destinations the operator configured (an identity provider): their
        hosts are exempt from the address rules; every other limit stays."""
        rules = replace(self.policy.rules, exempt_hosts=self.policy.rules.exempt_hosts | hosts_of(urls))
        return OutboundClient(replace(self.policy, rules=rules), resolve=self._resolve)

    def request(
        self, method: str, url: str, *, max_bytes: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send and read the whole answer (at most ``max_bytes``, within the deadline)."""
        extensions = {
            _DEADLINE: self.policy.deadline,
            _MAX_BYTES: self.policy.max_response_bytes if max_bytes is None else max_bytes,
        }
        with self._errors(url):
            return self._http.request(method, url, extensions=extensions, **kwargs)

    @contextmanager
    def stream(
        self, method: str, url: str, *, max_bytes: int | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """Send; the answer streams (at most ``max_bytes``, by default the download cap; its
        deadline allows for the cap at the minimum download rate)."""
        cap = self.policy.max_download_bytes if max_bytes is None else max_bytes
        deadline = self.policy.deadline + cap / self.policy.min_download_rate
        with (
            self._errors(url),
            self._http.stream(method, url, extensions={_DEADLINE: deadline, _MAX_BYTES: cap}, **kwargs) as r,
        ):
            yield r

    @contextmanager
    def _errors(self, url: str) -> Iterator[None]:
        """httpx's errors as the node's: refused (bad URL) or unavailable (retry later)."""
        try:
            yield
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise OutboundRefused(f"{url} is not an http(s) URL this node can call: {exc}") from None
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{_where(url)} {_timeout_text(exc, self.policy)}") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{_where(url)} is unreachable: {exc}") from exc

    def close(self) -> None:
        self._http.close()


def _where(url: str) -> str:
    try:
        return origin_text(url)
    except ValueError:
        return url


def _timeout_text(exc: httpx.TimeoutException, policy: OutboundPolicy) -> str:
    try:  # the timeouts this request ran with (a caller may have shortened them)
        timeouts = dict(exc.request.extensions.get("timeout") or {})
    except RuntimeError:
        timeouts = {}
    if isinstance(exc, httpx.ConnectTimeout):
        seconds = timeouts.get("connect") or policy.connect_timeout
        return f"could not be connected to within {seconds:g} s (connect timeout)"
    if _TOTAL in str(exc):
        return "did not finish its answer within the request's total time limit (deadline)"
    return f"sent nothing for {timeouts.get('read') or policy.read_timeout:g} s (read timeout)"
