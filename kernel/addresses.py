"""Which network addresses the node may contact, and what an origin is.

Another organisation's node chooses the URLs it hands this node (its endpoint, a callback,
a data address). Left unchecked, a hostile peer could make this node open connections to
its own internal services: the cloud metadata address, a database on the private network,
an admin port on loopback. :class:`AddressRules` decides on the *resolved* address (after
DNS, so a friendly name pointing at 10.0.0.5 is seen as 10.0.0.5; decimal, octal and hex
spellings of IPv4 are read as the socket layer reads them; an IPv4 address hidden in an
IPv6 one is unwrapped):

* always refused: unspecified (``0.0.0.0``, ``::``), link-local (``169.254.0.0/16`` with the
  metadata address ``169.254.169.254``, ``fe80::/10``), multicast, and reserved or otherwise
  not globally routable addresses (``240.0.0.0/4``, documentation and benchmark ranges …);
* refused unless allowed: private (``10/8``, ``172.16/12``, ``192.168/16``, ``100.64/10``,
  ``fc00::/7``, ``fec0::/10``) and loopback (``127/8``, ``::1``);
* hosts the operator named in the configuration (an OIDC issuer) are exempt.

:func:`origin` reduces a URL to (scheme, host, port), the unit a peer's verified identity
covers: a callback or data address on another origin than the peer's endpoint is refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

METADATA = ipaddress.IPv4Address("169.254.169.254")
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any spelling the socket layer accepts
    (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``[::1]``), else None."""
    text = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, IPv4-compatible)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is (``loopback``, ``private``, ``link-local`` …;
    an IPv6 address carrying an IPv4 one is that one's kind), or None for a public address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return classify(inner)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def describe(ip: IPAddress) -> str:
    """``ip`` as a refusal names it: with the IPv4 address it carries, or what it is."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return f"{ip} (that is {inner})"
    if ip == METADATA:
        return f"{ip} (the cloud metadata address)"
    return str(ip)


class AddressRefused(Exception):
    """No address of a host may be connected to; the message names each and why."""


@dataclass(frozen=True)
class AddressRules:
    """Which resolved addresses outbound requests may connect to."""

    allow_private: bool = False
    allow_loopback: bool = False
    exempt_hosts: frozenset[str] = field(default_factory=frozenset)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why a connection to ``ip`` is refused (with the setting that would allow it), or None."""
        kind = classify(ip)
        if kind is None or (kind == "loopback" and self.allow_loopback):
            return None
        if kind == "private" and self.allow_private:
            return None
        setting = {
            "loopback": " (AGORA_OUTBOUND_ALLOW_LOOPBACK)",
            "private": " (AGORA_OUTBOUND_ALLOW_PRIVATE)",
        }
        return f"{describe(ip)} is a {kind} address{setting.get(kind, '')}"

    def exempt(self, host: str) -> bool:
        return _norm_host(host) in self.exempt_hosts

    def addresses(self, host: str, port: int, resolve: Resolver) -> list[str]:
        """The addresses of ``host`` this node may connect to, in resolver order; raises
        :class:`AddressRefused` with the reason when there is none."""
        literal = parse_ip(host)
        found = [str(literal)] if literal is not None else resolve(host, port)
        if self.exempt(host):
            return found
        allowed: list[str] = []
        refused: list[str] = []
        for text in found:
            reason = self.refusal(ipaddress.ip_address(text))
            (refused if reason else allowed).append(reason or text)
        if not allowed:
            named = host if literal is None or _plain_ip(host) else f"{host} ({literal})"
            raise AddressRefused(
                f"{named}: {'; '.join(refused) or 'no address'}" if found else f"{host} has no address"
            )
        return allowed


def _plain_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (DNS, hosts file), IPv4 and IPv6."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names a loopback host (a development node, e.g. http://127.0.0.1:8000)."""
    try:
        host = origin(url)[1]
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = parse_ip(host)
    return ip is not None and classify(ip) == "loopback"


# Origins ---------------------------------------------------------------------------------


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, with default ports filled in; ValueError else."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return scheme, _norm_host(parsed.host), parsed.port or _DEFAULT_PORTS[scheme]


def origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def foreign_origin(url: object, verified: str, what: str, whose: str) -> str | None:
    """Why ``url`` (a URL a message carries) may not be used, or None when it is on the origin
    of ``verified`` (the endpoint of the peer's verified identity)."""
    if not isinstance(url, str) or not url:
        return f"{what} must be a URL on {whose} origin {origin_text(verified)}"
    try:
        same = origin(url) == origin(verified)
    except ValueError as exc:
        return f"{what} is refused: {exc}"
    if same:
        return None
    return (
        f"{what} {url} is refused: it is not on {whose} origin {origin_text(verified)} "
        "(this node sends protocol messages only to the endpoint of a peer's verified identity)"
    )


def hosts_of(urls: Iterable[str]) -> frozenset[str]:
    """The hosts of operator-configured URLs (exempt from the address rules)."""
    hosts = set()
    for url in urls:
        if url:
            try:
                hosts.add(origin(url)[1])
            except ValueError:
                continue
    return frozenset(hosts)
