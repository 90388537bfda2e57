"""Quality evidence in the web UI, in headless Chromium, between two live nodes: Acme Wind
applies the example manifest (its turbine dataset declares a schema and a suite, validated by
Acme's node), Beta Analytics crawls it. Beta's catalog shows the quality badge of Acme's
dataset, its offering page the schema, profile and validation outcome read from Acme's DQV;
Acme's own page adds the version history. Screenshots land in test-artifacts/."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests import services
from tests.e2e.browsing import sign_in

ARTIFACTS = services.REPO / "test-artifacts"
TITLE = "Turbine vibration 2026"


def _catalog_item(node: services.LiveNode, wanted: str) -> dict[str, Any]:
    """The catalog item titled TITLE once its quality status is ``wanted`` (validation runs
    beside the notary; a peer sees it after its next crawl)."""
    headers = {"Authorization": f"Bearer {node.token('catalog:read')}"}
    deadline = time.monotonic() + 90
    item: dict[str, Any] = {}
    while time.monotonic() < deadline:
        items = httpx.get(f"{node.url}/api/v1/catalog", params={"q": "vibration"}, headers=headers).json()[
            "items"
        ]
        item = next((i for i in items if i["title"] == TITLE), {})
        if item.get("quality_status") == wanted:
            return item
        time.sleep(0.3)
    raise AssertionError(f"{TITLE} on {node.url} is not {wanted}: {item}")


def test_a_peers_dataset_shows_its_quality_evidence(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    a, b = nodes
    _catalog_item(a, "passed")
    _catalog_item(b, "passed")
    page = sign_in(browser, b, "catalog:read")
    page.goto(f"{b.url}/ui/catalog?q=vibration")
    result = page.get_by_role("listitem").filter(has_text=TITLE)
    assert "quality passed" in result.inner_text()
    result.get_by_role("link", name=TITLE).click()
    quality = page.get_by_role("region", name="Quality of the current version").inner_text()
    assert "quality passed" in quality and "3 of 3 expectations passed, 0 failed" in quality
    schema = page.get_by_role("table", name="Schema").inner_text()
    assert "ax\tfloat\tfeature\tg" in schema
    profile = page.get_by_role("table", name="Profile").inner_text()
    assert "turbine" in profile and "t_ms" in profile
    assert page.locator("#row-count").inner_text().isdigit()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-offering-quality-remote.png"), full_page=True)
    page.close()


def test_an_own_dataset_shows_its_version_history(
    browser: Any, nodes: tuple[services.LiveNode, services.LiveNode]
) -> None:
    a, _ = nodes
    _catalog_item(a, "passed")
    page = sign_in(browser, a, "catalog:read")
    page.goto(f"{a.url}/ui/catalog?q=vibration")
    page.get_by_role("link", name=TITLE).click()
    history = page.get_by_role("table", name="Versions and provenance")
    row = history.get_by_role("row").filter(has_text="v1 (current)")
    text = row.inner_text()
    assert "published" in text and "quality passed" in text and "3/3" in text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-offering-quality-own.png"), full_page=True)
    page.close()
