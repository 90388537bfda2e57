"""Canonical JSON (RFC 8785, JCS) for anything that is signed or hashed."""

from __future__ import annotations

from typing import Any

import rfc8785

from kernel.hashing import sha256_bytes


def canonical_json(value: Any) -> bytes:
    """The JCS serialisation: sorted keys, no whitespace, ECMAScript number forms."""
    return rfc8785.dumps(value)


def canonical_hash(value: Any) -> str:
    """sha256 hex of the canonical JSON of ``value``."""
    return sha256_bytes(canonical_json(value))
