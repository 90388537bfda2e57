"""Security headers on every response the node sends: UI pages, API, protocol and schema.

A browser that opens anything the node serves is told what it may do with it:

* ``Content-Security-Policy`` — where scripts, styles, images and requests may come from,
  that no other site may frame the page (``frame-ancestors 'none'``), that ``<base>`` cannot
  re-point relative links and that forms post only back to the node. Three policies:

  - the web UI (``/ui``): everything from the node itself and nothing inline; htmx is a
    file from ``/ui/static`` and is told not to inject its indicator ``<style>``;
  - the OpenAPI viewer (``/schema``): its scripts, styles and the document from the node,
    plus ``data:`` images (Swagger UI draws its icons as data URIs in its stylesheet);
  - everything else (JSON, files, protocol messages): nothing at all may load.
* ``X-Content-Type-Options: nosniff`` — a JSON body or a downloaded file is never run as
  script or rendered as HTML because it looks like one.
* ``Referrer-Policy: same-origin`` — the node's URLs (offering and negotiation ids) are not
  sent to other sites, while the node's own form posts keep their ``Origin`` header, which
  the UI's cross-site check reads (``no-referrer`` would turn it into ``Origin: null``).
* ``X-Frame-Options: DENY`` — ``frame-ancestors`` for browsers that predate it.

A header a handler set itself is left as it is. The hook runs on the application's outgoing
messages (Litestar's ``before_send``), so routing errors (404, 405) and every exception
response carry the headers too.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

UI_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SCHEMA_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
NOTHING_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def policy_for(path: str) -> str:
    """The Content-Security-Policy for a request path."""
    if path == "/ui" or path.startswith("/ui/"):
        return UI_POLICY
    if path == "/schema" or path.startswith("/schema/"):
        return SCHEMA_POLICY
    return NOTHING_POLICY


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: add the headers to the start of every HTTP response."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    wanted = {"content-security-policy": policy_for(scope.get("path", "")), **COMMON}
    for name, value in wanted.items():
        if headers.get(name) is None:
            headers.add(name, value)
