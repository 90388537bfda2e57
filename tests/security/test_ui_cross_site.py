"""A forger against the web UI, at the HTTP level (the real app in process): every way a
state-changing /ui request can claim to come from the node is tried, and what reaches a
handler is counted. The browser-level attacks are in tests/e2e/test_ui_cross_site.py.

Also here: no cookie authenticates /api/v1, and every response of every route carries the
security headers."""

from __future__ import annotations

import re
from typing import Any

import pytest

from node import headers
from node.ui import csrf

HERE = "http://testserver.local"  # the origin Litestar's test client addresses
PUBLIC = "http://127.0.0.1:8000"  # AGORA_PUBLIC_URL of the test settings


def _form_token(page: str) -> str:
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page)
    assert match, "the page carries a form token"
    return match.group(1)


def _sign_in(client: Any, runtime: Any) -> tuple[str, str]:
    """Sign in through the login form; the session's token and its form token."""
    pre = _form_token(client.get("/ui/login").text)
    token = runtime.issuer.issue(["catalog:read", "negotiations:write"], 600)
    answer = client.post(
        "/ui/login",
        data={"token": token, "_csrf_token": pre},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/", answer.text
    return token, _form_token(client.get("/ui/").text)


# (name, request headers, which token the form carries)
FORGERIES = [
    ("no Origin, no Referer", {}, "right"),
    ("Origin of another port", {"origin": "http://testserver.local:9000"}, "right"),
    ("Origin of another scheme", {"origin": "https://testserver.local"}, "right"),
    ("Origin null (sandboxed frame, no-referrer page)", {"origin": "null"}, "right"),
    ("Origin that only starts like the node", {"origin": "http://testserver.local.evil.example"}, "right"),
    ("Origin with the node as user info", {"origin": "http://testserver.local@evil.example"}, "right"),
    ("Origin of another host", {"origin": "http://evil.example"}, "right"),
    ("no Origin, Referer of another host", {"referer": "http://evil.example/page"}, "right"),
    (
        "no Origin, Referer naming the node in its query",
        {"referer": f"http://evil.example/?from={HERE}/"},
        "right",
    ),
    ("Origin right, Referer foreign", {"origin": "http://evil.example", "referer": f"{HERE}/ui/"}, "right"),
    ("right Origin, no token", {"origin": HERE}, "none"),
    ("right Origin, token of another session", {"origin": HERE}, "other session"),
    ("right Origin, token of the pre-session", {"origin": HERE}, "pre-session"),
    ("right Origin, made-up token", {"origin": HERE}, "made up"),
    (
        "rebound DNS name: Origin and Host agree, no token",
        {"origin": "http://evil.example", "host": "evil.example"},
        "none",
    ),
]
GENUINE = [
    ("same Origin", {"origin": HERE}, "right"),
    ("public Origin (AGORA_PUBLIC_URL) behind a proxy", {"origin": PUBLIC}, "right"),
    ("no Origin, same-origin Referer", {"referer": f"{HERE}/ui/negotiations/x"}, "right"),
    ("token in X-CSRF-Token (htmx)", {"origin": HERE}, "header"),
]


def _send(
    client: Any, runtime: Any, path: str, request_headers: dict[str, str], kind: str, right: str
) -> Any:
    token = {
        "right": right,
        "header": None,
        "none": None,
        "other session": csrf.token_for(runtime.issuer.key, runtime.issuer.issue(["catalog:read"], 600)),
        "pre-session": csrf.token_for(runtime.issuer.key, client.cookies.get(csrf.PRESESSION_COOKIE)),
        "made up": "A" * 43,
    }[kind]
    sent = dict(request_headers)
    if kind == "header":
        sent["x-csrf-token"] = right
    data = {"reason": "forged"} | ({"_csrf_token": token} if token else {})
    return client.post(path, data=data, headers=sent, follow_redirects=False)


@pytest.mark.parametrize(
    "path", ["/ui/negotiations/nonexistent/approve", "/ui/negotiations/nonexistent/reject"]
)
def test_forged_decisions_reach_no_handler(client: Any, runtime: Any, path: str) -> None:
    _, right = _sign_in(client, runtime)
    reached = []
    for name, request_headers, kind in FORGERIES:
        answer = _send(client, runtime, path, request_headers, kind, right)
        if answer.status_code != 403:
            reached.append(f"{name}: {answer.status_code}")
        else:
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["detail"], name
    assert reached == [], f"{len(reached)} of {len(FORGERIES)} forged requests reached the handler: {reached}"
    for name, request_headers, kind in GENUINE:
        answer = _send(client, runtime, path, request_headers, kind, right)
        # the handler ran: it sends the person back to the negotiation with its answer
        assert answer.status_code == 303, (name, answer.text)
        assert answer.headers["location"].startswith("/ui/negotiations/nonexistent?message=no"), name


def test_a_forged_sign_out_keeps_the_session_and_a_forged_sign_in_sets_none(
    client: Any, runtime: Any
) -> None:
    session, right = _sign_in(client, runtime)
    attacker = runtime.issuer.issue(["catalog:read"], 600)
    changed = []
    for name, request_headers, kind in FORGERIES:
        for path, data in (("/ui/logout", {}), ("/ui/login", {"token": attacker})):
            token = right if kind == "right" else None
            answer = client.post(
                path,
                data=data | ({"_csrf_token": token} if token else {}),
                headers=request_headers,
                follow_redirects=False,
            )
            if answer.status_code != 403 or "set-cookie" in answer.headers:
                changed.append(f"{path} {name}: {answer.status_code} {answer.headers.get('set-cookie')}")
    assert changed == []
    assert client.cookies.get(csrf.SESSION_COOKIE) == session
    assert client.get("/ui/", follow_redirects=False).status_code == 200, "still signed in as themselves"

    out = client.post(
        "/ui/logout", data={"_csrf_token": right}, headers={"origin": HERE}, follow_redirects=False
    )
    assert out.status_code == 303 and csrf.SESSION_COOKIE in out.headers["set-cookie"]
    assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/login"


def test_the_sign_in_form_needs_its_pre_session(client: Any, runtime: Any) -> None:
    """Sign-in is state-changing too: without the pre-session cookie its token cannot match."""
    token = runtime.issuer.issue(["catalog:read"], 600)
    pre = _form_token(client.get("/ui/login").text)
    client.cookies.delete(csrf.PRESESSION_COOKIE)
    refused = client.post(
        "/ui/login",
        data={"token": token, "_csrf_token": pre},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    assert refused.status_code == 403 and "no UI session cookie" in refused.json()["detail"]
    assert "set-cookie" not in refused.headers


def test_get_cannot_sign_out(client: Any, runtime: Any) -> None:
    """A link or an <img> elsewhere cannot sign anyone out: sign-out takes a POST only."""
    _sign_in(client, runtime)
    assert client.get("/ui/logout", follow_redirects=False).status_code == 405
    assert client.get("/ui/", follow_redirects=False).status_code == 200


def test_no_cookie_authenticates_the_api(client: Any, runtime: Any) -> None:
    """/api/v1 reads the Authorization header only: the UI's cookie, even holding an admin
    token and sent on every path, opens nothing there (and browsers keep it to /ui)."""
    admin = runtime.issuer.issue(["admin"], 600)
    client.cookies.set(csrf.SESSION_COOKIE, admin, path="/")
    calls = [("GET", "/api/v1/offerings"), ("GET", "/api/v1/negotiations"), ("POST", "/api/v1/participants")]
    for method, path in calls:
        answer = client.request(method, path, json={}, headers={"origin": HERE})
        assert answer.status_code == 401, (method, path, answer.status_code)
    assert client.get("/api/v1/offerings", headers={"authorization": f"Bearer {admin}"}).status_code == 200
    pre = _form_token(client.get("/ui/login").text)
    signed = client.post(
        "/ui/login",
        data={"token": admin, "_csrf_token": pre},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    cookie = signed.headers["set-cookie"]
    assert "Path=/ui" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_response_of_every_route_carries_the_security_headers(client: Any) -> None:
    paths = {(m, _concrete(r.path)) for r in client.app.routes for m in getattr(r, "methods", ())}
    paths |= {
        ("GET", "/ui/static/agora.css"),
        ("GET", "/schema/static/swagger-ui-bundle.js"),
        ("GET", "/schema/static/LICENSE"),
        ("GET", "/no/such/path"),
        ("DELETE", "/health"),
    }
    missing, statuses = [], set()
    for method, path in sorted(paths):
        answer = client.request(method, path, follow_redirects=False)
        statuses.add(answer.status_code)
        wanted = {"content-security-policy": headers.policy_for(path), **headers.COMMON}
        wrong = {k: answer.headers.get(k) for k, v in wanted.items() if answer.headers.get(k) != v}
        if wrong:
            missing.append(f"{method} {path} ({answer.status_code}): {wrong}")
    assert missing == [], f"{len(missing)} of {len(paths)} responses lack a header:\n" + "\n".join(missing)
    assert {200, 401, 403, 404, 405} <= statuses, statuses  # successes and every kind of refusal


def test_the_viewer_serves_only_its_own_files(client: Any) -> None:
    assert client.get("/schema/static/index.html").status_code == 404  # the package's petstore page
    assert client.get("/schema/static/..%2F..%2Fpyproject.toml").status_code == 404
    licence = client.get("/schema/static/LICENSE")
    assert licence.status_code == 200 and "Apache License" in licence.text
    page = client.get("/schema").text
    assert "<script>" not in page and "cdn" not in page.lower()
    assert 'src="/schema/static/swagger-ui-bundle.js"' in page


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Node.Example:80/path?q", "http://node.example"),
        ("https://node.example:443", "https://node.example"),
        ("https://node.example:8443/", "https://node.example:8443"),
        ("http://[::1]:8000/ui", "http://[::1]:8000"),
        ("http://node.example@evil.example", "http://evil.example"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("http://node.example:99999", None),
        ("javascript:alert(1)", None),
    ],
)
def test_origins_are_read_as_browsers_write_them(url: str, origin: str | None) -> None:
    assert csrf.origin_of(url) == origin


def test_the_token_is_bound_to_the_session_and_the_node(runtime: Any, settings_factory: Any) -> None:
    from node.auth import TokenIssuer

    key = runtime.issuer.key
    assert csrf.token_for(key, "session-a") == csrf.token_for(key, "session-a")
    assert csrf.token_for(key, "session-a") != csrf.token_for(key, "session-b")
    other_node = TokenIssuer.for_node(settings_factory()).key
    assert csrf.token_for(other_node, "session-a") != csrf.token_for(key, "session-a")
