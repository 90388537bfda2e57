"""What the browser tests share: pages that report every Content-Security-Policy violation,
signing in, and a page on another origin (a second loopback HTTP server) playing a hostile
site."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import services

# runs in every frame before the page's own scripts; CDP-injected, so no CSP applies to it
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__agoraViolation(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} on ${e.documentURI}`);
});
"""


@dataclass
class WatchedBrowser:
    """``new_page`` like a Playwright browser's, each page reporting into ``problems``: CSP
    violations (the ``securitypolicyviolation`` event), console errors and uncaught errors."""

    browser: Any
    problems: list[str] = field(default_factory=list)

    def new_page(self, **options: Any) -> Any:
        page = self.browser.new_page(**options)
        page.expose_function("__agoraViolation", lambda text: self.problems.append(f"CSP: {text}"))
        page.add_init_script(REPORT_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        return page

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text} ({message.location.get('url')})")


def sign_in(browser: Any, node: services.LiveNode, *scopes: str) -> Any:
    """A new page (own cookie jar) signed in to ``node``'s UI with a token of ``scopes``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{node.url}/ui/")
    assert page.url.endswith("/ui/login"), "the UI asks who you are first"
    page.get_by_label("Bearer token").fill(node.token(*(scopes or ("catalog:read",))))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{node.url}/ui/")
    return page


@dataclass
class HostileSite:
    """Pages served from another origin on loopback (same host, other port: the same *site*
    as the node, so SameSite cookies ride along with its requests)."""

    port: int
    pages: dict[str, str]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.origin}/{name}"


@contextmanager
def hostile_site() -> Iterator[HostileSite]:
    """Serve ``site.pages[name]`` at ``/name`` until the block ends."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write((body or "not here").encode())

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HostileSite(port=server.server_address[1], pages=pages)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
