"""The web UI in headless Chromium (Debian's package, driven by Playwright): sign in, the
dashboard with a peer's freshness, live catalog search, an offering page with its policy in
plain words and its provenance. Screenshots land in test-artifacts/."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests import services
from tests.e2e.browsing import sign_in

ARTIFACTS = services.REPO / "test-artifacts"


def _sign_in(browser: Any, node: services.LiveNode) -> Any:
    return sign_in(browser, node, "catalog:read")


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def test_bad_token_is_refused(browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]) -> None:
    _, b = nodes
    page = browser.new_page()
    page.goto(f"{b.url}/ui/login")
    page.get_by_label("Bearer token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("the token is malformed")
    page.goto(f"{b.url}/ui/catalog")
    assert page.url.endswith("/ui/login")
    page.close()


def test_dashboard_shows_peer_freshness(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    _, b = nodes
    page = _sign_in(browser, b)
    assert page.get_by_role("heading", level=1).inner_text() == "Beta Analytics"
    row = page.get_by_role("row", name="Acme Wind")
    assert "fresh" in row.inner_text()
    assert "never crawled" not in row.inner_text()
    _shot(page, "dashboard")
    page.close()


def test_catalog_search_with_the_keyboard(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    _, b = nodes
    page = _sign_in(browser, b)
    page.get_by_role("link", name="Catalog").click()
    results = page.locator("#results")
    assert "Turbine vibration 2026" in results.inner_text()
    assert "Maintenance log (internal)" not in results.inner_text(), (
        "prohibit-access stays out of peers' catalogs"
    )
    search = page.get_by_label("Search")
    search.focus()
    page.keyboard.type("bearing")
    page.wait_for_function(
        "() => !document.querySelector('#results').innerText.includes('Turbine vibration')"
    )
    assert "Bearing fault labels" in results.inner_text()
    _shot(page, "catalog-search")
    page.keyboard.press("Tab")  # on to the Kind filter, every field reachable by keyboard
    assert page.evaluate("document.activeElement.id") == "kind"
    page.get_by_role("link", name="Bearing fault labels").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Bearing fault labels"
    terms = page.locator("ul.policy").inner_text()
    assert "predictive-maintenance" in terms and "research" in terms
    assert "prohibited" in terms.lower()
    _shot(page, "offering-remote")
    page.close()


def test_own_offering_page_shows_versions_and_provenance(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    a, _ = nodes
    token = a.token("catalog:read")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = httpx.get(f"{a.url}/api/v1/offerings", headers={"Authorization": f"Bearer {token}"}).json()[
            "items"
        ]
        if items and all(o["anchor"]["status"] == "ANCHORED" for o in items):
            break
        time.sleep(0.2)
    page = _sign_in(browser, a)
    page.goto(f"{a.url}/ui/catalog?q=vibration")
    page.get_by_role("link", name="Turbine vibration 2026").click()
    table = page.get_by_role("table", name="Versions and provenance").inner_text()
    assert "v1" in table and "ANCHORED" in table
    assert "agora verify" in page.get_by_role("region", name="Versions and provenance").inner_text()
    assert "at most 10" in page.locator("ul.policy").inner_text()
    _shot(page, "offering-own")
    page.close()


def test_negotiation_timeline_and_manual_approval(
    browser: Any,
    nodes: tuple[services.LiveNode, services.LiveNode],
    waiting_negotiation: Callable[[str], dict[str, Any]],
) -> None:
    a, _ = nodes
    waiting = waiting_negotiation("service-reports")
    page = sign_in(browser, a, "catalog:read", "negotiations:write")
    page.get_by_role("link", name="Negotiations").click()
    page.get_by_role("link", name=waiting["id"][9:17] + "…").click()
    assert "waiting for a person" in page.locator("main").inner_text()
    _shot(page, "negotiation-waiting")
    page.get_by_role("button", name="Approve").click()
    deadline = time.monotonic() + 20
    while (
        "FINALIZED" not in page.get_by_role("heading", level=1).inner_text() and time.monotonic() < deadline
    ):
        time.sleep(0.3)
        page.reload()
    timeline = page.get_by_role("region", name="Timeline").inner_text()
    assert "REQUESTED → AGREED" in timeline and "VERIFIED → FINALIZED" in timeline
    assert "tx" in page.get_by_role("region", name="Agreement").inner_text()
    _shot(page, "negotiation-finalized")
    page.get_by_role("link", name="Agreements").click()
    row = page.get_by_role("row", name="Beta Analytics")
    assert "research" in row.inner_text() and "recorded" in row.inner_text()
    _shot(page, "agreements")
    page.close()


SLOW_JOB = """\
import os, time
import joblib, numpy as np
from sklearn.linear_model import LogisticRegression

data = np.load(os.environ["AGORA_DATA"] + "/train.npz")
for step in range(1, 5):
    print(f"step {step} of 4", flush=True)
    print(f"##agora progress={step / 4}", flush=True)
    time.sleep(1.5)
X = data["X"].reshape(len(data["y"]), -1)
model = LogisticRegression(max_iter=300).fit(X, data["y"])
joblib.dump(model, os.environ["AGORA_OUTPUT"] + "/model.joblib")
"""


def test_a_training_job_page_follows_the_job_live(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode], tmp_path: Path
) -> None:
    """Beta's job page updates itself (htmx) while the job runs at Acme, then shows the verdict."""
    import base64
    import json

    from training_jobs import bundle as bundles
    from training_jobs.datasets import digits_npz

    a, b = nodes
    acme, beta = services.Org(a), services.Org(b)
    with digits_npz(tmp_path / "digits.npz").open("rb") as f:
        meta = {
            "name": "digit-scans-live",
            "title": "Digit scans",
            "media_type": "application/x-npz",
            "access_modes": ["compute"],
            "policy": {"template": "provide-access"},
            "job_logs": "full",  # the consumer's page shows the job's own output as it comes
        }
        created = acme.api(
            "POST", "/offerings", data={"metadata": json.dumps(meta)}, files={"file": ("d.npz", f)}
        )
    assert created.status_code == 201, created.text
    started = beta.api(
        "POST",
        "/negotiations",
        json={
            "offering_id": created.json()["id"],
            "provider": a.url,
            "purpose": "research",
            "access_mode": "compute",
        },
    )
    assert started.status_code == 201, started.text
    deadline = time.monotonic() + 30
    while (negotiation := beta.api("GET", f"/negotiations/{started.json()['id']}").json())[
        "state"
    ] != "FINALIZED":
        assert time.monotonic() < deadline and negotiation["state"] != "TERMINATED", negotiation
        time.sleep(0.2)
    code = tmp_path / "bundle"
    code.mkdir()
    (code / "train.py").write_text(SLOW_JOB)
    packed = bundles.pack(code)
    spec = {
        "name": "slow-digits",
        "agreement": negotiation["agreement_id"],
        "provider": a.url,
        "code": {"entrypoint": "train.py", "digest": bundles.digest(packed)},
        "output": {"format": "sklearn", "path": "model.joblib"},
        "onnx": {"input_shape": [1, 64]},
    }
    submitted = beta.api("POST", "/jobs", json={"spec": spec, "bundle": base64.b64encode(packed).decode()})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]

    page = _sign_in(browser, b)
    log_polls: list[int] = []
    page.on("response", lambda r: log_polls.append(r.status) if r.url.endswith(f"{job_id}/log") else None)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("link", name="slow-digits").click()
    assert page.url.endswith(job_id)
    progress = page.locator("#job-status progress")
    seen = set()
    deadline = time.monotonic() + 90
    while "COMPLETED" not in page.locator("#job-status").inner_text():  # no reload: htmx swaps it
        assert time.monotonic() < deadline, page.locator("#job-status").inner_text()
        seen.add(float(progress.get_attribute("value") or 0))
        time.sleep(0.3)
    assert len([v for v in seen if 0 < v < 1]) >= 2, seen  # the bar moved while the job ran
    verdict = page.get_by_role("region", name="Verified by the provider's node").inner_text()
    assert "ONNX Runtime accuracy" in verdict and "stays with the provider" in verdict
    # a function, not an expression: Playwright evaluates an expression with eval(), which the CSP forbids
    page.wait_for_function("() => document.querySelector('#job-log').innerText.includes('completed')")
    assert "step 4 of 4" in page.locator("#job-log").inner_text()
    # once the job has ended the log answers 286 and htmx stops asking
    deadline = time.monotonic() + 10
    while 286 not in log_polls and time.monotonic() < deadline:
        page.wait_for_timeout(300)
    polls = len(log_polls)
    page.wait_for_timeout(4500)  # two polling periods
    assert log_polls[-1] == 286 and len(log_polls) == polls, log_polls
    _shot(page, "job-completed")
    page.close()
