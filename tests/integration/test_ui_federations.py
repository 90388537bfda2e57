"""The web UI's federation pages through the real app in process, on rows written straight
into the node's database (tests/fl_ui_rows.py): the list, a federation's page with its
members, rounds and charts, the live part that stops being polled once the federation ended,
and the start and cancel buttons with their scope and state checks."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from sqlmodel import Session, select

from federation.models import CANCELLED, COMPLETED, OPEN, READY, RUNNING, Federation, FederationRound
from node.ui import csrf
from tests import services
from tests.fl_ui_rows import ACME, FIGURES, HOSTILE, HOSTILE_NAME, seed_federation

HERE = "http://testserver.local"
SVG = "{http://www.w3.org/2000/svg}"


def _sign_in(client: Any, runtime: Any, *scopes: str) -> str:
    """The UI cookie of a token with ``scopes``; the form token of that session."""
    token = runtime.issuer.issue(["catalog:read", *scopes], 600)
    client.cookies.set(csrf.SESSION_COOKIE, token)
    return csrf.token_for(runtime.issuer.key, token)


def _charts(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S)]


def _state(runtime: Any, fed_id: str) -> str:
    with Session(runtime.engine) as session:
        fed = session.get(Federation, fed_id)
        assert fed is not None
        return fed.state


def test_the_list_names_each_federation_with_its_state_and_rounds(client: Any, runtime: Any) -> None:
    running = seed_federation(runtime.engine, name="digits-fed")
    seed_federation(runtime.engine, state=COMPLETED, done=4, name="older-fed")
    _sign_in(client, runtime)
    page = client.get("/ui/federations")
    assert page.status_code == 200
    assert '<a href="/ui/federations" aria-current="page">Federations</a>' in page.text
    assert f'<a href="/ui/federations/{running.id}">digits-fed</a>' in page.text
    assert "round 3 of 3" in page.text and "RUNNING" in page.text and "COMPLETED" in page.text
    assert "round 3 of 3 done" in page.text  # the reason
    # every other page links to it from the navigation
    assert 'href="/ui/federations"' in client.get("/ui/jobs").text


def test_a_running_federation_shows_members_rounds_and_both_charts(client: Any, runtime: Any) -> None:
    fed = seed_federation(runtime.engine, done=3)  # rounds 1-3 done, the final evaluation open
    _sign_in(client, runtime)
    page = client.get(f"/ui/federations/{fed.id}")
    assert page.status_code == 200, page.text
    text = page.text

    # members: names (the hostile one escaped), agreement and dataset prefixes, rows, ε of the latest round
    assert "Acme Wind" in text and HOSTILE_NAME not in text and "&lt;script&gt;" in text
    assert "<script>alert" not in text
    assert f"sha256:{'a1' * 6}…" in text and f"{'0x' + 'a1' * 6}…" in text
    assert "<td>600</td>" in text and "<td>300</td>" in text
    assert "1.5" in text and "(δ 1e-05)" in text  # ε 0.5 per round, round 3, the latest a provider reported
    assert "&lt;b&gt;node noise" not in text and "<b>node noise" not in text  # the note is not shown

    # rounds: the Merkle root and asset prefixes, the figures, the dropped provider's reason
    assert f"{'05' * 6}…" in text and f"{'0x' + '08' * 5}…" in text
    assert "initial weights" in text and "after round 2" in text
    assert "no update by the round&#39;s deadline" in text or "no update by the round's deadline" in text
    overall_round_3 = (0.80 * 150 + 0.78 * 75) / 225
    assert f"{overall_round_3:.4f}" in text
    assert "final evaluation" in text and "OPEN" in text

    # the charts: well-formed SVG, one line per provider plus the overall one, a point per round
    accuracy, loss = _charts(text)
    for chart in (accuracy, loss):
        polylines = chart.findall(f".//{SVG}polyline")
        assert len(polylines) == 3
        assert [len(p.get("points", "").split()) for p in polylines] == [3, 3, 3]
        labels = [t.text or "" for t in chart.iter(f"{SVG}text")]
        assert "global model after round" in labels
        assert HOSTILE_NAME in labels  # the name itself, as text: escaped in the page
        assert any(label.startswith("all providers") for label in labels)
    assert accuracy.find(f"{SVG}title").text.startswith("Accuracy")  # type: ignore[union-attr]
    # x = round - 1: the first point sits on the y axis (the initial model)
    first = accuracy.findall(f".//{SVG}polyline")[0].get("points", "").split()[0]
    assert first.startswith("64.0,")

    # live: polled while RUNNING; cancel offered, start not
    assert f'hx-get="/ui/federations/{fed.id}/live"' in text
    assert f'action="/ui/federations/{fed.id}/cancel"' in text
    assert f'action="/ui/federations/{fed.id}/start"' not in text
    assert 'name="_csrf_token"' in text


def test_the_live_part_stops_polling_once_the_federation_ended(client: Any, runtime: Any) -> None:
    fed = seed_federation(runtime.engine, done=3)
    _sign_in(client, runtime)
    live = client.get(f"/ui/federations/{fed.id}/live")
    assert live.status_code == 200 and live.text.startswith('<div id="federation-live" hx-get=')
    with Session(runtime.engine) as session:
        row = session.get(Federation, fed.id)
        assert row is not None
        row.state, row.reason = COMPLETED, "completed 3 rounds"
        row.result = {
            "model_sha256": "2" * 64,
            "model_size": 2600,
            "model_asset_id": "0x" + "99" * 32,
            "onnx_error": "no ONNX here",
            "final_evaluation": {"accuracy": 0.9033, "num_examples": 225},
        }
        session.add(row)
        session.commit()
    live = client.get(f"/ui/federations/{fed.id}/live")
    assert live.status_code == 200 and live.text.startswith('<div id="federation-live">')
    assert "hx-get" not in live.text and "hx-trigger" not in live.text
    assert "completed 3 rounds" in live.text and "0.9033 on 225 rows" in live.text
    assert "not translated: no ONNX here" in live.text
    page = client.get(f"/ui/federations/{fed.id}").text
    assert "hx-trigger" not in page.split('id="federation-live"')[1]
    assert "/cancel" not in page and "/start" not in page


def test_a_federation_with_no_rounds_yet_draws_no_chart(client: Any, runtime: Any) -> None:
    fed = seed_federation(runtime.engine, state=READY, done=0)
    _sign_in(client, runtime)
    text = client.get(f"/ui/federations/{fed.id}").text
    assert "No rounds yet." in text and _charts(text) == []
    assert "hx-trigger" not in text.split('id="federation-live"')[1], "READY waits for a person"
    assert f'action="/ui/federations/{fed.id}/start"' in text


def test_starting_needs_the_scope_and_a_ready_federation(client: Any, runtime: Any) -> None:
    ready = seed_federation(runtime.engine, state=READY, done=0)
    running = seed_federation(runtime.engine, done=1)
    form = _sign_in(client, runtime)  # catalog:read only
    refused = client.post(
        f"/ui/federations/{ready.id}/start", data={"_csrf_token": form}, headers={"origin": HERE}
    )
    assert (
        refused.status_code == 403 and "federations:write" in refused.text and 'role="alert"' in refused.text
    )
    assert _state(runtime, ready.id) == READY

    form = _sign_in(client, runtime, "federations:write")
    again = client.post(
        f"/ui/federations/{running.id}/start", data={"_csrf_token": form}, headers={"origin": HERE}
    )
    assert again.status_code == 409 and "not READY" in again.text
    assert _state(runtime, running.id) == RUNNING

    no_token = client.post(f"/ui/federations/{ready.id}/start", headers={"origin": HERE})
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    assert _state(runtime, ready.id) == READY

    started = client.post(
        f"/ui/federations/{ready.id}/start",
        data={"_csrf_token": form},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    assert started.status_code == 303 and started.headers["location"] == f"/ui/federations/{ready.id}"
    assert _state(runtime, ready.id) == RUNNING
    page = client.get(f"/ui/federations/{ready.id}").text
    assert "started by" in page and f'hx-get="/ui/federations/{ready.id}/live"' in page


def test_cancelling_ends_the_open_round_and_refuses_what_this_node_does_not_coordinate(
    client: Any, runtime: Any
) -> None:
    with services.listening() as port:
        gone = f"http://127.0.0.1:{port}"  # the providers cannot be told: their deadlines end their part
    fed = seed_federation(runtime.engine, done=2, endpoint=gone)
    theirs = seed_federation(runtime.engine, role="provider", done=0, state=RUNNING)
    form = _sign_in(client, runtime, "federations:write")

    foreign = client.post(
        f"/ui/federations/{theirs.id}/cancel", data={"_csrf_token": form}, headers={"origin": HERE}
    )
    assert foreign.status_code == 404 and "coordinated by this node" in foreign.text
    assert _state(runtime, theirs.id) == RUNNING
    assert "rounds are the coordinator" in foreign.text  # the provider's view of it

    done = client.post(
        f"/ui/federations/{fed.id}/cancel",
        data={"_csrf_token": form},
        headers={"origin": HERE},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert _state(runtime, fed.id) == CANCELLED
    with Session(runtime.engine) as session:
        states = {
            r.number: r.state
            for r in session.exec(select(FederationRound).where(FederationRound.federation_id == fed.id))
        }
    assert states == {1: "DONE", 2: "DONE", 3: CANCELLED}
    page = client.get(f"/ui/federations/{fed.id}").text
    assert "cancelled by" in page and "hx-trigger" not in page.split('id="federation-live"')[1]
    assert states[3] != OPEN


def test_per_provider_figures_are_the_ones_the_providers_reported(client: Any, runtime: Any) -> None:
    """The tooltips of the accuracy chart's points carry each provider's own figures."""
    fed = seed_federation(runtime.engine, state=COMPLETED, done=4)
    _sign_in(client, runtime)
    accuracy, _ = _charts(client.get(f"/ui/federations/{fed.id}").text)
    tips = [t.text or "" for t in accuracy.iter(f"{SVG}title")]
    for provider, label in ((ACME, "Acme Wind"), (HOSTILE, HOSTILE_NAME)):
        for at, (value, _loss) in enumerate(FIGURES[provider]):
            assert f"{label}: {value:.4g} (global model after round {at})" in tips, (label, at)
