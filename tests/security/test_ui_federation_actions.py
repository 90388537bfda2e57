"""A forger and a hostile peer against the UI's federation pages, at the HTTP level (the real
app in process, rows written into its database by tests/fl_ui_rows.py).

* Every forgery of tests/security/test_ui_cross_site.py (foreign or missing Origin, missing,
  foreign or made-up CSRF token, a rebound DNS name) is sent to start and to cancel, with the
  victim signed in with ``federations:write``: what changed a federation's state is counted.
* What other organisations chose (a provider's name, a provider's reason, the name of a
  federation another node coordinates) is shown as text: the markup it carries is counted in
  the pages.
"""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session, select

from federation.models import CANCELLED, READY, RUNNING, Contribution, Federation, FederationMember
from tests.fl_ui_rows import seed_federation
from tests.security.test_ui_cross_site import FORGERIES, GENUINE, HERE, _form_token, _send

MARKUP = '<img src=x onerror="alert(1)"><script>alert(2)</script><svg onload=alert(3)>'


def _sign_in(client: Any, runtime: Any) -> str:
    """Sign in through the login form with federations:write; the session's form token."""
    pre = _form_token(client.get("/ui/login").text)
    token = runtime.issuer.issue(["catalog:read", "federations:write"], 600)
    answer = client.post(
        "/ui/login",
        data={"token": token, "_csrf_token": pre},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return _form_token(client.get("/ui/").text)


def _state(runtime: Any, federation_id: str) -> str:
    with Session(runtime.engine) as session:
        fed = session.get(Federation, federation_id)
        assert fed is not None
        return fed.state


def test_forged_starts_and_cancels_change_no_federation(client: Any, runtime: Any) -> None:
    right = _sign_in(client, runtime)
    ready = seed_federation(runtime.engine, state=READY, done=0)
    running = seed_federation(runtime.engine, done=1)
    changed, reached = [], []
    for name, request_headers, kind in FORGERIES:
        for fed, action, before in ((ready, "start", READY), (running, "cancel", RUNNING)):
            answer = _send(
                client, runtime, f"/ui/federations/{fed.id}/{action}", request_headers, kind, right
            )
            if answer.status_code != 403 or not answer.headers["content-type"].startswith(
                "application/problem+json"
            ):
                reached.append(f"{action} {name}: {answer.status_code}")
            if _state(runtime, fed.id) != before:
                changed.append(f"{action} {name}")
    assert reached == [] and changed == [], (
        f"{len(reached)} of {2 * len(FORGERIES)} forgeries reached a handler, {len(changed)} changed a state"
    )
    # the same requests from the node's own page do what they say
    for name, request_headers, kind in GENUINE:
        fresh = seed_federation(runtime.engine, state=READY, done=0)
        answer = _send(client, runtime, f"/ui/federations/{fresh.id}/start", request_headers, kind, right)
        assert answer.status_code == 303 and _state(runtime, fresh.id) == RUNNING, name
        answer = _send(client, runtime, f"/ui/federations/{fresh.id}/cancel", request_headers, kind, right)
        assert answer.status_code == 303 and _state(runtime, fresh.id) == CANCELLED, name


def test_what_peers_chose_is_shown_as_text(client: Any, runtime: Any) -> None:
    ours = seed_federation(runtime.engine, done=3)
    theirs = seed_federation(runtime.engine, role="provider", done=0, name=MARKUP[:64])
    with Session(runtime.engine) as session:
        for member in session.exec(select(FederationMember).where(FederationMember.federation_id == ours.id)):
            member.provider_name, member.reason = MARKUP, f"the provider says: {MARKUP}"
            session.add(member)
        for part in session.exec(select(Contribution).where(Contribution.federation_id == ours.id)):
            part.state, part.reason = "FAILED", f"the provider says: {MARKUP}"
            part.privacy = {"epsilon": MARKUP, "delta": {"nested": MARKUP}}
            session.add(part)
        fed = session.get(Federation, theirs.id)
        assert fed is not None
        fed.reason = MARKUP
        session.add(fed)
        session.commit()
    client.cookies.set("agora_ui_token", runtime.issuer.issue(["catalog:read"], 600))
    pages = {
        "list": client.get("/ui/federations").text,
        "page": client.get(f"/ui/federations/{ours.id}").text,
        "live": client.get(f"/ui/federations/{ours.id}/live").text,
        "theirs": client.get(f"/ui/federations/{theirs.id}").text,
    }
    leaked = {
        where: {
            "script": len(re.findall(r"<script(?![^>]*src=\"/ui/static/htmx)", html)),
            "img": html.count("<img"),
            "event handlers": len(re.findall(r"<[^>]+\son(error|load)=", html)),
        }
        for where, html in pages.items()
    }
    assert all(count == 0 for counts in leaked.values() for count in counts.values()), leaked
    assert "&lt;img src=x" in pages["page"] and "&lt;img src=x" in pages["theirs"]
    assert pages["page"].count("<svg ") == 2  # the charts are the only SVG, the name inside them escaped
