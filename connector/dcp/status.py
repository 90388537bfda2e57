"""Credential status lists (BitstringStatusList, StatusList2021): revocation checks.

A credential with a ``credentialStatus`` entry points at a status list credential (its
``statusListCredential`` URL) and a bit in it (``statusListIndex``). The list's
``credentialSubject.encodedList`` is the GZIP of the bitstring, base64url without padding
(BitstringStatusList puts the multibase prefix ``u`` before it); bit *i* is bit ``7 - i % 8``
of byte ``i // 8`` (the highest bit first). A set bit means revoked (or suspended, as the
entry's ``statusPurpose`` says): the credential is refused.

The list is fetched through the node's outbound client, capped in size, and its inflated
bits capped too. It is either a JWT (then the credential's issuer must have signed it) or the
plain JSON of the credential, as the issuer serves it at the URL it signed into the
credential; plain JSON only over HTTPS (or from a loopback host), since over plain HTTP
anyone on the path could clear a revoked credential's bit.
"""

from __future__ import annotations

import base64
import gzip
import io
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from connector.dcp.credentials import Credential, CredentialRefused, check_signature, read_jwt
from connector.dsp.identity import DidDocument
from kernel.addresses import is_loopback_url
from kernel.errors import InvalidInput
from kernel.limits import loads
from kernel.outbound import OutboundClient

ENTRY_TYPES = ("BitstringStatusListEntry", "StatusList2021Entry")
CHECKED_PURPOSES = ("revocation", "suspension")
MAX_LIST_BYTES = 1024 * 1024  # the fetched status list credential
MAX_BITS = 2**24  # 2 MiB inflated
DEFAULT_BITS = 131_072  # the 16 KiB the specifications ask as the smallest list


def encode_status_list(set_bits: Iterable[int], size: int = DEFAULT_BITS, *, multibase: bool = True) -> str:
    """The ``encodedList`` of a list of ``size`` bits where ``set_bits`` are set (an issuer's
    side; BitstringStatusList's multibase form, StatusList2021's without the ``u``)."""
    bits = bytearray((size + 7) // 8)
    for index in set_bits:
        if not 0 <= index < size:
            raise InvalidInput(f"status index {index} is outside a list of {size} bits")
        bits[index // 8] |= 0x80 >> (index % 8)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
        f.write(bytes(bits))
    encoded = base64.urlsafe_b64encode(buffer.getvalue()).rstrip(b"=").decode()
    return ("u" if multibase else "") + encoded


def decode_status_list(encoded: str) -> bytes:
    """The bitstring of an ``encodedList`` (with or without the multibase ``u``)."""
    candidates = [encoded[1:], encoded] if encoded.startswith("u") else [encoded]
    for text in candidates:
        try:
            packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            continue
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            bits = inflater.decompress(packed, MAX_BITS // 8 + 1)
        except zlib.error:
            continue
        if len(bits) > MAX_BITS // 8 or inflater.unconsumed_tail:
            raise CredentialRefused(f"the status list holds more than {MAX_BITS} bits")
        if inflater.eof:
            return bits
    raise CredentialRefused("the status list's encodedList is not base64url of GZIP")


def bit_is_set(bits: bytes, index: int) -> bool:
    if not 0 <= index < len(bits) * 8:
        raise CredentialRefused(f"status index {index} is outside the list ({len(bits) * 8} bits)")
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


def fetcher(outbound: OutboundClient) -> Callable[[str], bytes]:
    """Fetch a status list through the node's outbound client (capped, no redirects)."""

    def fetch(url: str) -> bytes:
        response = outbound.request("GET", url, max_bytes=MAX_LIST_BYTES)
        if response.status_code != 200:
            raise CredentialRefused(f"the status list at {url[:200]} answered HTTP {response.status_code}")
        return response.content

    return fetch


class StatusLists:
    """Checks credentials' status entries, fetching each list once per check."""

    def __init__(self, fetch: Callable[[str], bytes]) -> None:
        self.fetch = fetch
        self._lists: dict[str, dict[str, Any]] = {}

    def check(self, credential: Credential, issuer: DidDocument) -> None:
        """Refuse ``credential`` when its status entry says revoked or suspended."""
        entry = credential.status
        if entry is None:
            return
        kind, purpose = entry.get("type"), entry.get("statusPurpose", "revocation")
        name = f"{credential.type} {credential.id[:80]}"
        if kind not in ENTRY_TYPES:
            raise CredentialRefused(f"credential {name} has a status entry of unknown type {str(kind)[:60]}")
        if purpose not in CHECKED_PURPOSES:
            return  # a message or refresh purpose says nothing about validity
        if str(entry.get("statusSize", 1)) != "1":
            raise CredentialRefused(f"credential {name}'s status entries of more than one bit are not read")
        try:
            index = int(str(entry.get("statusListIndex")))
        except ValueError:
            raise CredentialRefused(f"credential {name}'s statusListIndex is not a number") from None
        url = entry.get("statusListCredential")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise CredentialRefused(f"credential {name}'s status entry names no statusListCredential URL")
        subject = self._list(url, issuer)
        listed = subject.get("statusPurpose", purpose)
        if listed != purpose:
            raise CredentialRefused(
                f"the status list at {url[:200]} is for {str(listed)[:40]}, not {purpose}"
            )
        encoded = subject.get("encodedList")
        if not isinstance(encoded, str):
            raise CredentialRefused(f"the status list at {url[:200]} has no encodedList")
        if bit_is_set(decode_status_list(encoded), index):
            done = "revoked" if purpose == "revocation" else "suspended"
            raise CredentialRefused(f"credential {name} is {done} (status list {url[:200]}, index {index})")

    def _list(self, url: str, issuer: DidDocument) -> dict[str, Any]:
        """The credentialSubject of the status list credential at ``url``, issued by ``issuer``."""
        if url not in self._lists:
            self._lists[url] = self._fetch(url, issuer)
        return self._lists[url]

    def _fetch(self, url: str, issuer: DidDocument) -> dict[str, Any]:
        text = self.fetch(url)[: MAX_LIST_BYTES + 1].strip()
        if len(text) > MAX_LIST_BYTES:
            raise CredentialRefused(f"the status list at {url[:200]} is larger than {MAX_LIST_BYTES} bytes")
        if text[:1] != b"{":
            header, claims = read_jwt(text.decode(errors="replace"), f"the status list at {url[:200]}")
            kid = str(header.get("kid") or "")
            kid = issuer.did + kid if kid.startswith("#") else kid
            check_signature(text.decode(), kid, issuer, f"the status list at {url[:200]}")
            document = claims.get("vc", claims)
        else:
            if not (url.startswith("https://") or is_loopback_url(url)):
                raise CredentialRefused(
                    f"the status list at {url[:200]} is unsigned JSON over plain HTTP: "
                    "an unsigned list is read over HTTPS only"
                )
            try:
                document = loads(text, what=f"the status list at {url[:200]}")
            except InvalidInput as exc:
                raise CredentialRefused(exc.detail) from None
        if not isinstance(document, dict):
            raise CredentialRefused(f"the status list at {url[:200]} is not a credential")
        named = document.get("issuer")
        named = named.get("id") if isinstance(named, dict) else named
        if named is not None and named != issuer.did:
            raise CredentialRefused(f"the status list at {url[:200]} is issued by another DID")
        subject = document.get("credentialSubject")
        if not isinstance(subject, dict):
            raise CredentialRefused(f"the status list at {url[:200]} has no credentialSubject")
        return subject
