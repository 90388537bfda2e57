"""The outbound address rules and origins, without the network; then the one outbound
client against a counting listener on loopback (a stand-in for an internal service)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from kernel.addresses import (
    AddressRefused,
    AddressRules,
    classify,
    foreign_origin,
    is_loopback_url,
    origin,
    parse_ip,
)
from kernel.errors import ServiceUnavailable
from kernel.outbound import OutboundClient, OutboundPolicy, OutboundRefused
from tests import services

STRICT = AddressRules()
PUBLIC = {"8.8.8.8": ["8.8.8.8"]}


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT: not reachable from the internet
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("fec0::1", "private"),  # deprecated site-local
        ("169.254.169.254", "link-local"),  # the cloud metadata address
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.1.2.3", "reserved"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),  # documentation
        ("198.18.0.1", "reserved"),  # benchmarking
        ("2001:db8::1", "reserved"),  # documentation
        # an IPv4 address wrapped in IPv6 is judged as the IPv4 address it carries
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("::7f00:1", "loopback"),  # IPv4-compatible (deprecated)
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_every_kind_of_address_is_classified(address: str, kind: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short form
        ("017700000001", "127.0.0.1"),
        ("2852039166", "169.254.169.254"),  # the metadata address, in decimal
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("0", "0.0.0.0"),
        ("example.org", None),
        ("peer.internal", None),
    ],
)
def test_host_spellings_are_read_as_the_socket_layer_reads_them(spelling: str, address: str | None) -> None:
    parsed = parse_ip(spelling)
    assert (str(parsed) if parsed else None) == address


def never(host: str, port: int) -> list[str]:
    raise AssertionError(f"no resolution expected for {host}")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "0",
        "169.254.169.254",
        "2852039166",
        "[::ffff:169.254.169.254]",
        "10.0.0.5",
        "192.168.0.1",
        "[fd12::1]",
        "224.0.0.1",
    ],
)
def test_strict_rules_refuse_every_non_public_literal_without_resolving(host: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        STRICT.addresses(host, 80, never)
    assert "is a" in str(refused.value)


def test_the_refusal_names_the_address_and_the_setting_that_would_allow_it() -> None:
    with pytest.raises(
        AddressRefused, match=r"127\.0\.0\.1 is a loopback address \(AGORA_OUTBOUND_ALLOW_LOOPBACK\)"
    ):
        STRICT.addresses("2130706433", 80, never)
    with pytest.raises(
        AddressRefused, match=r"10\.0\.0\.5 is a private address \(AGORA_OUTBOUND_ALLOW_PRIVATE\)"
    ):
        STRICT.addresses("10.0.0.5", 80, never)
    with pytest.raises(AddressRefused, match="the cloud metadata address"):
        STRICT.addresses("169.254.169.254", 80, never)


def test_rules_judge_what_a_name_resolves_to() -> None:
    names = {"friendly.example": ["10.0.0.5"], "mixed.example": ["10.0.0.5", "8.8.8.8"], **PUBLIC}

    def resolve(host: str, port: int) -> list[str]:
        return names[host]

    with pytest.raises(AddressRefused, match=r"friendly\.example: 10\.0\.0\.5 is a private address"):
        STRICT.addresses("friendly.example", 443, resolve)
    # only the checked public address is ever connected to
    assert STRICT.addresses("mixed.example", 443, resolve) == ["8.8.8.8"]
    assert STRICT.addresses("8.8.8.8", 443, resolve) == ["8.8.8.8"]


def test_what_the_operator_may_allow() -> None:
    loopback = AddressRules(allow_loopback=True)
    private = AddressRules(allow_private=True)
    assert loopback.addresses("127.0.0.1", 80, never) == ["127.0.0.1"]
    assert loopback.addresses("[::ffff:127.0.0.1]", 80, never) == ["::ffff:7f00:1"]
    assert private.addresses("10.0.0.5", 80, never) == ["10.0.0.5"]
    for host in ("10.0.0.5", "192.168.1.1"):
        with pytest.raises(AddressRefused):
            loopback.addresses(host, 80, never)
    # link-local (the metadata address), multicast and unspecified are never allowed
    both = AddressRules(allow_loopback=True, allow_private=True)
    for host in ("169.254.169.254", "224.0.0.1", "0.0.0.0", "[fe80::1]", "240.0.0.1"):
        with pytest.raises(AddressRefused):
            both.addresses(host, 80, never)
    exempt = AddressRules(exempt_hosts=frozenset({"idp.internal"}))
    assert exempt.addresses("idp.internal", 443, lambda h, p: ["10.9.9.9"]) == ["10.9.9.9"]


@pytest.mark.parametrize(
    ("url", "verified", "same"),
    [
        ("http://127.0.0.1:8001/dsp", "http://127.0.0.1:8001", True),
        ("HTTP://Peer.Example./dsp", "http://peer.example", True),
        ("http://peer.example:80/x", "http://peer.example", True),
        ("https://peer.example/dsp", "https://peer.example:443", True),
        ("http://127.0.0.1:8002/dsp", "http://127.0.0.1:8001", False),  # another port
        ("https://peer.example/dsp", "http://peer.example", False),  # another scheme
        ("http://peer.example.evil.test/dsp", "http://peer.example", False),
        ("http://peer.example@127.0.0.1:8001/dsp", "http://peer.example", False),  # userinfo trick
        ("http://2130706433:8001/dsp", "http://127.0.0.1:8001", False),  # same address, another host
    ],
)
def test_origins(url: str, verified: str, same: bool) -> None:
    assert (origin(url) == origin(verified)) is same
    refusal = foreign_origin(url, verified, "callbackAddress", "the peer's verified")
    assert (refusal is None) is same
    if not same:
        assert refusal is not None and url in refusal and "is not on the peer's verified origin" in refusal


@pytest.mark.parametrize("bad", [None, "", 42, "file:///etc/passwd", "gopher://peer.example/", "not a url"])
def test_a_callback_that_is_no_http_url_is_refused(bad: Any) -> None:
    assert foreign_origin(bad, "http://peer.example", "callbackAddress", "the peer's") is not None


def test_loopback_public_urls_are_development_nodes() -> None:
    assert is_loopback_url("http://127.0.0.1:8000")
    assert is_loopback_url("http://localhost:8000")
    assert is_loopback_url("http://[::1]:8000")
    assert not is_loopback_url("https://acme.example")
    assert not is_loopback_url("http://10.0.0.5:8000")


def test_the_loopback_default_follows_the_public_url() -> None:
    from node.settings import Settings

    assert Settings(public_url="http://127.0.0.1:8000").outbound_loopback_allowed
    assert not Settings(public_url="https://acme.example").outbound_loopback_allowed
    assert Settings(public_url="https://acme.example", outbound_allow_loopback=True).outbound_loopback_allowed
    assert not Settings(
        public_url="http://127.0.0.1:8000", outbound_allow_loopback=False
    ).outbound_loopback_allowed


# The client against a real listener ---------------------------------------------------------


class Listener:
    """An HTTP server on loopback that counts the requests reaching it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                listener.hits.append(self.path)
                routes = {
                    "/redirect": self._redirect,
                    "/endless": self._endless,
                    "/announced": self._announced,
                    "/slow": self._slow,
                    "/trickle": self._trickle,
                    "/gzip": self._gzip,
                }
                routes.get(self.path, self._ok)()

            def _ok(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def _redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{listener.port}/")
                self.end_headers()

            def _endless(self) -> None:
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(4096):  # up to 256 MiB, unless the client hangs up
                        self.wfile.write(b"x" * 65536)
                        listener.sent += 65536
                except OSError:
                    return

            def _announced(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(1024**3))
                self.end_headers()

            def _slow(self) -> None:
                time.sleep(2.5)
                self._ok()

            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    return

            def _gzip(self) -> None:
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = services.LoopbackHTTP(Handler)
        self.port = self.server.port

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


@pytest.fixture
def dev() -> Iterator[OutboundClient]:
    """A development node's client: loopback allowed, short limits."""
    client = OutboundClient(
        OutboundPolicy(
            rules=AddressRules(allow_loopback=True),
            read_timeout=1.0,
            deadline=2.0,
            max_response_bytes=64 * 1024,
        )
    )
    yield client
    client.close()


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "localhost", "0"]
)
def test_a_strict_client_sends_nothing_to_loopback_in_any_spelling(listener: Listener, host: str) -> None:
    client = OutboundClient()
    try:
        with pytest.raises(OutboundRefused, match=r"(loopback|unspecified) address"):
            client.request("GET", listener.url("/", host))
    finally:
        client.close()
    assert listener.hits == []


def test_the_client_connects_to_the_address_it_checked(listener: Listener) -> None:
    """A name resolved once, checked, and connected to as that address: a second answer
    (DNS rebinding) is never asked for."""
    answers = iter([["127.0.0.1"]])  # a second resolution would raise StopIteration

    def resolve(host: str, port: int) -> list[str]:
        return next(answers)

    strict = OutboundClient(resolve=lambda host, port: ["127.0.0.1"])
    with pytest.raises(OutboundRefused, match=r"rebind\.example: 127\.0\.0\.1 is a loopback address"):
        strict.request("GET", listener.url("/", "rebind.example"))
    assert listener.hits == []
    dev = OutboundClient(OutboundPolicy(rules=AddressRules(allow_loopback=True)), resolve=resolve)
    assert dev.request("GET", listener.url("/", "rebind.example")).text == "ok"
    assert listener.hits == ["/"]


def test_no_redirect_is_followed(listener: Listener, dev: OutboundClient) -> None:
    with pytest.raises(
        OutboundRefused, match=r"answered 302 redirecting to .*: this node follows no redirects"
    ):
        dev.request("GET", listener.url("/redirect"))
    assert listener.hits == ["/redirect"], "the redirect's target was never asked"


def test_an_endless_answer_is_cut_off_at_the_cap(listener: Listener, dev: OutboundClient) -> None:
    with pytest.raises(OutboundRefused, match="larger than 65536 bytes"):
        dev.request("GET", listener.url("/endless"))
    time.sleep(0.3)
    # cut off while it streams: the server got rid of a few socket buffers, not 256 MiB
    assert listener.sent < 16 * 1024 * 1024, listener.sent


def test_an_announced_oversize_is_refused_before_reading(listener: Listener, dev: OutboundClient) -> None:
    with pytest.raises(OutboundRefused, match="announces 1073741824 bytes"):
        dev.request("GET", listener.url("/announced"))


def test_a_compressed_answer_is_refused(listener: Listener, dev: OutboundClient) -> None:
    with pytest.raises(OutboundRefused, match="compressed"):
        dev.request("GET", listener.url("/gzip"))


def test_a_silent_peer_hits_the_read_timeout(listener: Listener, dev: OutboundClient) -> None:
    with pytest.raises(ServiceUnavailable, match=r"sent nothing for 1 s \(read timeout\)"):
        dev.request("GET", listener.url("/slow"))


def test_a_trickling_peer_hits_the_deadline(listener: Listener, dev: OutboundClient) -> None:
    """One byte every 0.2 s never trips a 1 s read timeout; the 2 s deadline ends it."""
    with pytest.raises(ServiceUnavailable, match="total time limit"):
        dev.request("GET", listener.url("/trickle"))


def test_streams_have_their_cap_too(listener: Listener, dev: OutboundClient) -> None:
    received = 0
    with (
        pytest.raises(OutboundRefused, match="larger than 100000 bytes"),
        dev.stream("GET", listener.url("/endless"), max_bytes=100_000) as response,
    ):
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert received <= 100_000


def test_other_schemes_are_refused(dev: OutboundClient) -> None:
    with pytest.raises(OutboundRefused, match="not an http"):
        dev.request("GET", "file:///etc/passwd")
