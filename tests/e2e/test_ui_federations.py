"""A federation's page in headless Chromium: it follows the rounds live (htmx, no reload),
draws accuracy and loss as inline SVG that the UI's Content-Security-Policy lets render (the
browser fixture fails the test on any violation or console error), stops asking once the
federation ended, and cancels from its button. The node runs no round driver, so the rows the
test writes into its database stay as written. Screenshot in test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session

from federation.models import CANCELLED, COMPLETED, Federation
from kernel.db import make_engine
from tests import services
from tests.e2e.browsing import sign_in
from tests.fl_ui_rows import finish_round, seed_federation

ARTIFACTS = services.REPO / "test-artifacts"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.LiveNode]:
    node = services.start_node(
        tmp_path_factory.mktemp("fl-ui"), name="Coordinating Org", AGORA_FEDERATIONS_ENABLED="false"
    )
    yield node
    node.stop()


def _set_state(engine: Any, federation_id: str, state: str, reason: str) -> None:
    with Session(engine) as session:
        fed = session.get(Federation, federation_id)
        assert fed is not None
        fed.state, fed.reason = state, reason
        session.add(fed)
        session.commit()


def test_a_federation_page_follows_its_rounds_and_stops_when_it_ends(
    browser: Any, coordinator: services.LiveNode
) -> None:
    engine = make_engine(f"sqlite:///{coordinator.home / 'agora.db'}", pool=False)
    fed = seed_federation(engine, done=2)  # round 3 open
    page = sign_in(browser, coordinator, "catalog:read")
    polls: list[int] = []
    page.on("response", lambda r: polls.append(r.status) if r.url.endswith(f"{fed.id}/live") else None)
    page.get_by_role("link", name="Federations").click()
    page.get_by_role("link", name="digits-fed").click()
    assert page.url.endswith(fed.id)

    accuracy = page.get_by_role("img", name="Accuracy on the providers' held-out rows")
    loss = page.get_by_role("img", name="Loss on the providers' held-out rows")
    for chart in (accuracy, loss):
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200, box
    lengths = "() => [...document.querySelectorAll('svg.chart polyline')].map(p => p.points.numberOfItems)"
    assert page.evaluate(lengths) == [2] * 6  # overall + 2 providers, per chart: after rounds 0 and 1

    finish_round(engine, fed.id, 3)  # the round closes at the node: the page redraws by itself
    page.wait_for_function(
        "() => [...document.querySelectorAll('svg.chart polyline')].every(p => p.points.numberOfItems === 3)"
    )
    assert "after round 2" in page.locator("#federation-live").inner_text()

    _set_state(engine, fed.id, COMPLETED, "completed 3 rounds")
    page.wait_for_function("() => document.querySelector('#federation-live').innerText.includes('COMPLETED')")
    seen = len(polls)
    page.wait_for_timeout(4500)  # two polling periods
    assert len(polls) == seen and set(polls) == {200}, polls
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-federation.png"), full_page=True)
    page.close()


def test_the_cancel_button_cancels_with_the_scope(browser: Any, coordinator: services.LiveNode) -> None:
    engine = make_engine(f"sqlite:///{coordinator.home / 'agora.db'}", pool=False)
    with services.listening() as port:
        gone = f"http://127.0.0.1:{port}"
    fed = seed_federation(engine, done=1, endpoint=gone, name="to-cancel")

    reader = sign_in(browser, coordinator, "catalog:read")
    reader.goto(f"{coordinator.url}/ui/federations/{fed.id}")
    reader.get_by_role("button", name="Cancel federation").click()
    assert "federations:write" in reader.get_by_role("alert").inner_text()
    reader.close()
    # the refusal is a 403 page, which Chromium notes on the console: that one is expected
    refused = [p for p in browser.problems if "status of 403" in p and p.endswith(f"{fed.id}/cancel)")]
    assert len(refused) == 1, browser.problems
    browser.problems.remove(refused[0])
    with Session(engine) as session:
        row = session.get(Federation, fed.id)
        assert row is not None and row.state == "RUNNING"

    writer = sign_in(browser, coordinator, "catalog:read", "federations:write")
    writer.goto(f"{coordinator.url}/ui/federations/{fed.id}")
    writer.get_by_role("button", name="Cancel federation").click()
    writer.wait_for_url(f"{coordinator.url}/ui/federations/{fed.id}")
    assert CANCELLED in writer.locator("#federation-live").inner_text()
    assert writer.get_by_role("button", name="Cancel federation").count() == 0
    writer.close()
