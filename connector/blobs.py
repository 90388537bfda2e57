"""Signed messages that carry binary bytes: a signed envelope, a newline, the raw bytes.

Model weights would grow by a third as base64 inside JSON, and a JSON parser would hold
them as one huge string. Instead the body of such a request is::

    <the signed envelope as compact JSON, one line>\\n<the bytes>

and the envelope's body names the bytes by ``blob_sha256`` and ``blob_bytes``, so the
signature covers them: a receiver checks the envelope (bounded JSON, signature, sender,
nonce) and then that the bytes are exactly those the sender signed. Compact JSON never
holds a raw newline, so the first one ends the envelope.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kernel.errors import InvalidInput, PayloadTooLarge
from kernel.limits import JSON, loads

MEDIA_TYPE = "application/vnd.agora.signed-blob"
MAX_ENVELOPE_BYTES = 256 * 1024


class BlobMismatch(InvalidInput):
    type_slug = "blob-mismatch"
    title = "Bytes not those the sender signed"


def bind(body: dict[str, Any], blob: bytes) -> dict[str, Any]:
    """``body`` with the digest and length of ``blob`` (what the signature will cover)."""
    return {**body, "blob_sha256": hashlib.sha256(blob).hexdigest(), "blob_bytes": len(blob)}


def pack(envelope: dict[str, Any], blob: bytes) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" + blob


def split(data: bytes, *, max_bytes: int) -> tuple[Any, bytes]:
    """The envelope (parsed within the JSON bounds) and the bytes after it; the caller opens
    the envelope and then calls :func:`check`."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"this message is limited to {max_bytes} bytes")
    end = data.find(b"\n", 0, MAX_ENVELOPE_BYTES + 1)
    if end < 0:
        raise InvalidInput(
            f"not a signed message with bytes ({MEDIA_TYPE}): "
            f"no envelope line within {MAX_ENVELOPE_BYTES} bytes"
        )
    envelope = loads(data[:end], JSON.with_max_string(MAX_ENVELOPE_BYTES), what="the message's envelope")
    return envelope, data[end + 1 :]


def check(body: dict[str, Any], blob: bytes) -> bytes:
    """``blob`` if it is exactly the bytes ``body`` names, else :class:`BlobMismatch`."""
    digest, size = body.get("blob_sha256"), body.get("blob_bytes")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
        raise BlobMismatch("the signed message does not name its bytes (blob_sha256, blob_bytes)")
    if len(blob) != size:
        raise BlobMismatch(f"the message carries {len(blob)} bytes, the signature covers {size}")
    if hashlib.sha256(blob).hexdigest() != digest.lower():
        raise BlobMismatch("the bytes' sha256 differs from the one the sender signed")
    return blob
