"""The web UI against a hostile page in the same browser (headless Chromium).

The hostile page is served by a second loopback server: same host, other port, so the same
*site* as the node — the UI's SameSite=Strict cookie rides along with its requests, and
only the node's own checks stand in the way. Each test counts what got through."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from node.headers import SCHEMA_POLICY, UI_POLICY
from tests import services
from tests.e2e.browsing import WatchedBrowser, hostile_site, sign_in

AUTO_SUBMIT = """<!doctype html><html><head>{meta}</head><body>
<form method="post" action="{action}">{fields}</form>
<script>document.forms[0].submit()</script></body></html>"""


def _forged_form(action: str, fields: dict[str, str], referrer: str) -> str:
    inputs = "".join(f'<input name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items())
    meta = f'<meta name="referrer" content="{referrer}">' if referrer else ""
    return AUTO_SUBMIT.format(meta=meta, action=html.escape(action), fields=inputs)


@pytest.mark.parametrize("referrer", ["", "no-referrer"], ids=["plain", "no-referrer"])
def test_a_hostile_page_cannot_act_for_a_signed_in_person(
    chromium: Any,
    nodes: tuple[services.LiveNode, services.LiveNode],
    waiting_negotiation: Callable[[str], dict[str, Any]],
    referrer: str,
) -> None:
    """Approve, reject, sign-out and sign-in (as the attacker) posted by another origin's page
    while the victim is signed in: every one refused with 403, nothing changed."""
    a, _ = nodes
    acme = services.Org(a)
    waiting = waiting_negotiation(f"forgery-target-{referrer or 'plain'}")
    before = acme.api("GET", f"/negotiations/{waiting['id']}").json()
    victim = sign_in(chromium, a, "catalog:read", "negotiations:write")
    session = {c["name"]: c["value"] for c in victim.context.cookies()}["agora_ui_token"]
    base = f"{a.url}/ui"
    forgeries = {
        "approve": (f"{base}/negotiations/{waiting['id']}/approve", {"_csrf_token": "guessed"}),
        "reject": (f"{base}/negotiations/{waiting['id']}/reject", {"reason": "forged"}),
        "sign-out": (f"{base}/logout", {}),
        "sign-in": (f"{base}/login", {"token": a.token("catalog:read")}),  # as the attacker
    }
    reached, without_session = [], []
    with hostile_site() as site:
        for name, (action, fields) in forgeries.items():
            site.pages[f"{name}.html"] = _forged_form(action, fields, referrer)
            with victim.expect_response(lambda r: r.request.method == "POST") as answer:
                victim.goto(site.url(f"{name}.html"))
            response = answer.value
            # the victim's session goes along (SameSite does not stop a same-site page): the
            # node itself must refuse
            if f"agora_ui_token={session}" not in response.request.all_headers().get("cookie", ""):
                without_session.append(name)
            if response.status != 403:
                reached.append(f"{name}: {response.status}")
                continue
            detail = response.json()["detail"]
            assert detail.startswith("cross-site request refused"), detail
            assert (site.origin in detail) if not referrer else ("Origin is null" in detail), detail
    assert reached == [], f"forged requests that got past the node: {reached}"
    assert without_session == [], f"forged requests sent without the victim's session: {without_session}"

    after = acme.api("GET", f"/negotiations/{waiting['id']}").json()
    assert after["state"] == "REQUESTED" and after["history"] == before["history"]
    assert {c["name"]: c["value"] for c in victim.context.cookies()}["agora_ui_token"] == session
    victim.goto(f"{base}/negotiations/{waiting['id']}")
    assert victim.url.endswith(waiting["id"]), "the victim is still signed in as themselves"
    assert "waiting for a person" in victim.locator("main").inner_text()
    victim.close()


def test_no_other_origin_can_frame_the_node(
    chromium: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    """A signed-in person visits a page that frames the node's UI (clickjacking): the frames
    stay empty and Chromium reports the frame-ancestors block; a frame of the hostile site's
    own page shows that framing as such works."""
    a, _ = nodes
    victim = sign_in(chromium, a)
    console: list[str] = []
    victim.on("console", lambda m: console.append(m.text))
    targets = {
        "dashboard": "/ui/",
        "sign-in": "/ui/login",
        "negotiations": "/ui/negotiations",
        "api": "/schema",
    }
    with hostile_site() as site:
        site.pages["own.html"] = "<!doctype html><p>the hostile site's own page</p>"
        frames = "".join(f'<iframe id="{k}" src="{a.url}{v}"></iframe>' for k, v in targets.items())
        site.pages["frames.html"] = (
            f'<!doctype html>{frames}<iframe id="own" src="{site.url("own.html")}"></iframe>'
        )
        victim.goto(site.url("frames.html"))
        victim.wait_for_load_state("load")
        own = victim.locator("iframe#own").element_handle().content_frame()
        assert "the hostile site's own page" in own.locator("body").inner_text()
        shown = {}
        for name in targets:
            frame = victim.locator(f"iframe#{name}").element_handle().content_frame()
            text = frame.evaluate("() => document.body ? document.body.innerText : ''")
            if frame.url.startswith(a.url) or "Acme Wind" in text or "Sign in" in text:
                shown[name] = frame.url
        assert shown == {}, f"the node's pages rendered inside another origin's frame: {shown}"
    blocks = [m for m in console if "frame-ancestors 'none'" in m]
    assert len(blocks) == len(targets), console
    victim.close()


def test_the_policy_is_enforced_and_normal_use_breaks_none_of_it(
    browser: WatchedBrowser,
    chromium: Any,
    nodes: tuple[services.LiveNode, services.LiveNode],
    waiting_negotiation: Callable[[str], dict[str, Any]],
) -> None:
    """Click through every page, search, reject a request with the page's own form, open the
    API viewer and sign out, once with the button and once through htmx: no CSP violation
    and no console error (the ``browser`` fixture fails the test on any). Then show that the
    policy is really enforced: script injected into a page does not run, and is reported."""
    a, _ = nodes
    acme = services.Org(a)
    waiting = waiting_negotiation("reject-from-the-page")
    page = sign_in(browser, a, "catalog:read", "negotiations:write")
    policies = []
    page.on("response", lambda r: policies.append(r.headers.get("content-security-policy")))
    for link in ("Catalog", "Negotiations", "Agreements", "Jobs", "Dashboard"):
        page.get_by_role("link", name=link).click()
        page.wait_for_load_state("load")
    page.get_by_role("link", name="Catalog").click()
    page.get_by_label("Search").fill("turbine")
    page.locator("#results").get_by_role("link", name="Turbine vibration 2026").wait_for()
    page.locator("#results").get_by_role("link", name="Turbine vibration 2026").click()
    page.get_by_role("link", name="Negotiations").click()
    page.get_by_role("link", name=waiting["id"][9:17] + "…").click()
    page.get_by_label("Reason for rejecting").fill("not this quarter")
    page.get_by_role("button", name="Reject").click()
    page.wait_for_load_state("load")
    assert acme.api("GET", f"/negotiations/{waiting['id']}").json()["state"] == "TERMINATED"
    assert "not this quarter" in page.locator("main").inner_text()
    assert set(policies) == {UI_POLICY}, policies  # every page, fragment, script and stylesheet

    page.get_by_role("link", name="API").click()
    page.locator(".opblock").first.wait_for()
    page.go_back()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{a.url}/ui/login")
    page.goto(f"{a.url}/ui/")
    assert page.url.endswith("/ui/login"), "signed out"
    page.close()

    again = sign_in(browser, a)
    status = again.evaluate(
        "() => htmx.ajax('POST', '/ui/logout', {source: document.body, swap: 'none'}).then(() => 'sent')"
    )
    assert status == "sent"
    again.goto(f"{a.url}/ui/")
    assert again.url.endswith("/ui/login"), "an htmx POST carries the page's token (hx-headers)"
    again.close()

    probe_browser = WatchedBrowser(chromium)
    probe = sign_in(probe_browser, a)
    with hostile_site() as site:
        site.pages["evil.js"] = "window.__foreign = true"
        ran = probe.evaluate(
            """(foreign) => new Promise((done) => {
                 const inline = document.createElement('script');
                 inline.textContent = 'window.__inline = true';
                 document.body.append(inline);
                 const img = document.createElement('img');
                 img.setAttribute('onerror', 'window.__handler = true');
                 img.src = '/nothing-here.png';
                 document.body.append(img);
                 const script = document.createElement('script');
                 script.src = foreign;
                 script.onerror = script.onload = () => setTimeout(() => done(
                   [window.__inline, window.__handler, window.__foreign].filter(Boolean).length), 300);
                 document.body.append(script);
               })""",
            site.url("evil.js"),
        )
    assert ran == 0, "injected script ran despite the policy"
    violations = [p for p in probe_browser.problems if p.startswith("CSP: ")]
    directives = {v.split()[1] for v in violations}
    assert {"script-src-elem", "script-src-attr"} <= directives, probe_browser.problems
    assert any(site.url("evil.js") in v for v in violations), violations
    probe.close()


def test_the_api_viewer_works_with_nothing_but_the_node(
    browser: WatchedBrowser, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    """/schema with every other host blocked: Swagger UI still renders the operations list,
    and it never even asked another host for anything."""
    a, _ = nodes
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    foreign: list[str] = []

    def only_the_node(route: Any) -> None:
        if route.request.url.startswith(a.url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_node)
    response = page.goto(f"{a.url}/schema")
    assert response is not None and response.headers["content-security-policy"] == SCHEMA_POLICY
    operations = page.locator(".opblock")
    operations.first.wait_for()
    assert operations.count() >= 20, operations.count()
    assert "/api/v1/catalog" in page.locator("#swagger-ui").inner_text()
    page.locator(".opblock-summary").first.click()
    page.locator(".opblock-body").first.wait_for()
    assert foreign == [], f"the viewer asked other hosts for {foreign}"
    page.close()
    document = httpx.get(f"{a.url}/schema/openapi.json")
    assert document.status_code == 200 and document.json()["info"]["title"] == "Agora node"
