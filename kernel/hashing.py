"""sha256 everywhere: the identity of every asset version is the hash of its bytes.

In text a digest is written ``sha256:<64 hex>``; in storage keys and the database the bare
hex is used.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import BinaryIO

from kernel.errors import InvalidInput

PREFIX = "sha256:"
CHUNK = 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]{64}$")


def parse_digest(text: str) -> str:
    """Accept ``sha256:<hex>`` or bare hex; return the bare lower-case hex or raise."""
    value = text.strip().lower().removeprefix(PREFIX)
    if not _HEX.match(value):
        raise InvalidInput(f"not a sha256 digest: {text!r}")
    return value


def is_digest(text: str) -> bool:
    return bool(_HEX.match(text.strip().lower().removeprefix(PREFIX)))


def sha256_stream(stream: BinaryIO, chunk: int = CHUNK) -> tuple[str, int]:
    """Hash a binary stream without holding it in memory; return (hex, size)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        n = stream.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    with path.open("rb", buffering=0) as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repr_digest(hex_digest: str) -> str:
    """The RFC 9530 ``Repr-Digest`` value for a sha256 hex digest."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hex_digest)).decode()}:"


def repr_digest_hex(value: str | None) -> str | None:
    """The sha256 hex digest from a ``Repr-Digest`` header, if it carries one."""
    for item in (value or "").split(","):
        algo, _, encoded = item.strip().partition("=")
        if algo.lower() == "sha-256" and encoded.startswith(":") and encoded.endswith(":"):
            try:
                return base64.b64decode(encoded[1:-1]).hex()
            except ValueError:
                return None
    return None
