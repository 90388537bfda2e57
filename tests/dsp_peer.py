"""Protocol requests as a node (or a stranger) would send them, for tests that play a peer.

A request carries the sender's self-issued DCP token in ``Authorization`` (see
:mod:`connector.dsp.identity`); :func:`as_node` signs as a running test node with its own
organisation key, :func:`stranger` as an organisation no node knows.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx

from connector.dsp.identity import NodeIdentity, did_for_url


def identity(url: str, private_key: bytes, name: str = "test peer") -> NodeIdentity:
    """The identity of a node at ``url`` holding ``private_key``."""
    from eth_account import Account

    return NodeIdentity(
        did=did_for_url(url),
        address=Account.from_key(private_key).address,
        private_key=lambda: private_key,
        url=url,
        name=name,
    )


def as_node(node: Any) -> NodeIdentity:
    """The identity of a running test node (``tests.services.LiveNode``)."""
    return identity(node.url, node.org_key())


def stranger(url: str = "http://127.0.0.1:9") -> NodeIdentity:
    return identity(url, secrets.token_bytes(32), "stranger")


def headers(
    sender: NodeIdentity, recipient_url: str, body: bytes, url: str, method: str = "POST", **claims: Any
) -> dict[str, str]:
    """Headers with ``sender``'s token for the node at ``recipient_url``, bound to ``body`` and
    to the request (``method`` and the path of ``url``, a URL or a path), as an Agora node
    binds them."""
    request = (method, urlsplit(url).path)
    token = sender.token(did_for_url(recipient_url), body, request=request, **claims)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def post(
    sender: NodeIdentity, recipient_url: str, path: str, body: Any, *, timeout: float = 30.0, **claims: Any
) -> httpx.Response:
    """POST ``body`` (JSON) to ``recipient_url + path`` with ``sender``'s token."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = recipient_url.rstrip("/") + path
    return httpx.post(
        url, content=raw, headers=headers(sender, recipient_url, raw, url, **claims), timeout=timeout
    )


def get(sender: NodeIdentity, recipient_url: str, path: str, *, timeout: float = 30.0) -> httpx.Response:
    url = recipient_url.rstrip("/") + path
    return httpx.get(url, headers=headers(sender, recipient_url, b"", url, "GET"), timeout=timeout)


def key_headers(did: str, kid: str, key: Any, recipient_url: str, body: bytes) -> dict[str, str]:
    """Headers with a self-issued token for ``did`` signed by any ``key`` (a joserfc key of
    a curve the DCP profile names: P-256, secp256k1, Ed25519) as its method ``kid``, binding
    ``body``: how a connector that is not an Agora node signs."""
    import hashlib
    import time
    import uuid

    from connector.dsp.id_tokens import BODY_CLAIM, TOKEN_TTL, sign

    now = int(time.time())
    claims = {
        "iss": did,
        "sub": did,
        "aud": did_for_url(recipient_url),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_TTL,
        BODY_CLAIM: hashlib.sha256(body).hexdigest(),
    }
    return {"Authorization": f"Bearer {sign(claims, key, kid)}", "Content-Type": "application/json"}


def post_raw(
    sender: NodeIdentity,
    recipient_url: str,
    url: str,
    raw: bytes,
    *,
    content_type: str = "application/json",
    timeout: float = 60.0,
) -> httpx.Response:
    """POST ``raw`` to ``url`` with ``sender``'s token for the node whose public URL is
    ``recipient_url`` (``url`` may be that node's own port, around a front it sits behind)."""
    return httpx.post(
        url,
        content=raw,
        headers={**headers(sender, recipient_url, raw, url), "Content-Type": content_type},
        timeout=timeout,
    )
