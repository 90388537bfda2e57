"""The web UI refuses requests that another site makes in a signed-in person's name.

The UI signs a person in with a cookie, and a browser attaches cookies to every request it
sends to the node, whichever page asked for it. The cookie is ``SameSite=Strict``, but a
*site* ignores ports and subdomains: a page served by another program on the same host
(``127.0.0.1:9000``) or by a sibling subdomain is the same site, and its form posts carry
the cookie. So every state-changing request under ``/ui`` (sign-in, sign-out, approve,
reject, and any POST, PUT, PATCH or DELETE added later: the check sits on the router, not
on each handler) must pass two checks, each enough on its own:

1. **Where it comes from.** Its ``Origin`` header — or, when a browser sends none, the
   origin of its ``Referer`` — is the node's public origin (``AGORA_PUBLIC_URL``) or the
   origin the request was addressed to (its scheme and ``Host``). A request that names
   neither is refused: every browser this UI supports sends ``Origin`` with a POST.
2. **What it knows.** It carries a token (form field ``_csrf_token`` or header
   ``X-CSRF-Token``) equal to an HMAC of the browser's session cookie under a key derived
   from the node's token key. Another page cannot read the HttpOnly cookie, so it cannot
   compute the token; and since the token is bound to the session rather than to a second
   cookie, planting a cookie of one's own (which a same-host page can do) does not help.
   Before sign-in the session is a random pre-session cookie that the sign-in page sets.

A refused request is :class:`Forbidden` (403, problem+json with the reason) and reaches no
handler. Every page gets the token in its template context (``csrf_input``,
``csrf_token()``), set here on each UI request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from joserfc.jwk import ECKey
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler
from litestar.utils.scope.state import ScopeState

from kernel.errors import Forbidden

SESSION_COOKIE = "agora_ui_token"
PRESESSION_COOKIE = "agora_ui_presession"
FORM_FIELD = "_csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEYS: dict[str, bytes] = {}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL as a browser serialises an origin (lower case, no
    default port); ``None`` for anything that is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def own_origins(public_url: str, scheme: str, host_header: str | None) -> set[str]:
    """The origins a page of this node may have: its public one and the one addressed."""
    origins = {origin_of(public_url)}
    if host_header:
        origins.add(origin_of(f"{scheme}://{host_header}"))
    return {o for o in origins if o}


def origin_refusal(headers: Mapping[str, str], allowed: set[str]) -> str | None:
    """Why a state-changing request does not come from one of ``allowed``; ``None`` if it does."""
    origin = headers.get("origin")
    if origin is not None:
        if origin.strip() == "null":
            return "cross-site request refused: its Origin is null (an opaque or sandboxed page)"
        if origin_of(origin) in allowed:
            return None
        return (
            f"cross-site request refused: Origin {origin!r} is not this node ({', '.join(sorted(allowed))})"
        )
    referer = headers.get("referer")
    if referer is not None:
        if origin_of(referer) in allowed:
            return None
        return (
            f"cross-site request refused: it was sent from {origin_of(referer) or 'an unknown page'}, "
            f"not from this node ({', '.join(sorted(allowed))})"
        )
    return "cross-site request refused: it names no Origin or Referer, so it cannot be told from a forgery"


def _key(token_key: ECKey) -> bytes:
    """An HMAC key of its own, derived from the node's token key (the same across restarts)."""
    kid = str(token_key.kid)
    if kid not in _KEYS:
        d = str(token_key.as_dict(private=True)["d"])
        private = base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))
        _KEYS[kid] = hmac.new(private, b"agora web ui csrf v1", hashlib.sha256).digest()
    return _KEYS[kid]


def token_for(token_key: ECKey, session: str) -> str:
    """The form token of a session (the session or pre-session cookie's value)."""
    digest = hmac.new(_key(token_key), session.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def session_of(cookies: Mapping[str, str]) -> str | None:
    """What the form token is bound to: the sign-in cookie, else the pre-session cookie."""
    return cookies.get(SESSION_COOKIE) or cookies.get(PRESESSION_COOKIE) or None


def start_presession(request: Request[Any, Any, Any], secure: bool) -> Cookie | None:
    """For a browser with neither cookie: a pre-session cookie to set, its token put in the
    page's context so the sign-in form can be posted."""
    if session_of(request.cookies) is not None:
        return None
    value = secrets.token_urlsafe(32)
    ScopeState.from_scope(request.scope).csrf_token = token_for(_token_key(request), value)
    return Cookie(
        key=PRESESSION_COOKIE, value=value, path="/ui", httponly=True, samesite="strict", secure=secure
    )


def _token_key(connection: ASGIConnection[Any, Any, Any, Any]) -> ECKey:
    key: ECKey = connection.app.state.runtime.issuer.key
    return key


async def _submitted(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get(HEADER)
    if header:
        return header
    if isinstance(connection, Request) and connection.content_type[0] in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        value = (await connection.form()).get(FORM_FIELD)
        return value if isinstance(value, str) else None
    return None


async def same_origin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of the UI router: puts the session's token in the page context and refuses a
    state-changing request that fails either check (see the module docstring)."""
    session = session_of(connection.cookies)
    expected = token_for(_token_key(connection), session) if session else None
    if expected is not None:
        ScopeState.from_scope(connection.scope).csrf_token = expected
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    settings = connection.app.state.runtime.settings
    allowed = own_origins(settings.public_url, connection.scope["scheme"], connection.headers.get("host"))
    refusal = origin_refusal(connection.headers, allowed)
    if refusal is not None:
        raise Forbidden(refusal)
    if expected is None:
        raise Forbidden("this browser has no UI session cookie: open /ui/login and try again")
    submitted = await _submitted(connection)
    if not submitted:
        raise Forbidden(f"the request carries no CSRF token (form field {FORM_FIELD} or header X-CSRF-Token)")
    if not hmac.compare_digest(submitted.encode(), expected.encode()):
        raise Forbidden("the CSRF token does not belong to this session: reload the page and try again")
