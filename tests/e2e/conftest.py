"""Browser-test fixtures: Debian's Chromium driven by Playwright, two organisations' nodes
(Acme Wind provides the example manifest, Beta Analytics crawls it), and negotiations
waiting for Acme's approval."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.e2e.browsing import WatchedBrowser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        services.unavailable("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        services.unavailable("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[WatchedBrowser]:
    """Pages of this browser report CSP violations and console errors: a test that clicks
    through the UI fails on any of them."""
    watched = WatchedBrowser(chromium)
    yield watched
    assert watched.problems == [], "the pages reported:\n" + "\n".join(watched.problems)


@pytest.fixture(scope="session")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.LiveNode, services.LiveNode]]:
    root = tmp_path_factory.mktemp("ui")
    a = services.start_node(root / "a", name="Acme Wind", AGORA_ANCHOR_MAX_DELAY="0.2")
    b = services.start_node(root / "b", name="Beta Analytics", AGORA_CATALOG_CRAWL_INTERVAL="0.5")
    try:
        work = root / "manifest"
        shutil.copytree(services.REPO / "examples", work)
        text = (work / "manifest.yaml").read_text() + f"peers:\n  - url: {b.url}\n"
        (work / "manifest.yaml").write_text(text)
        a.cli("apply", "-f", str(work / "manifest.yaml"), "--home", str(a.home))
        b.cli("peers", "add", a.url, "--home", str(b.home))
        token = b.token("catalog:read")
        # the three offerings Beta may see; bearing-faults only once its suite passed (on_failure: reject)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            items = httpx.get(f"{b.url}/api/v1/catalog", headers={"Authorization": f"Bearer {token}"}).json()[
                "items"
            ]
            if len(items) >= 3:
                break
            time.sleep(0.2)
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="session")
def waiting_negotiation(
    nodes: tuple[services.LiveNode, services.LiveNode], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Any]]:
    """``waiting_negotiation(name)``: Acme offers a CSV named ``name`` with manual approval,
    Beta asks for it; returns the negotiation as Acme sees it (REQUESTED, waiting for a person)."""
    a, b = nodes
    acme, beta = services.Org(a), services.Org(b)

    def make(name: str) -> dict[str, Any]:
        source = tmp_path_factory.mktemp(name) / "log.csv"
        source.write_text("when,what\n2026-01-01,inspect\n")
        meta = {
            "title": f"{name} (approval needed)",
            "name": name,
            "media_type": "text/csv",
            "approval": "manual",
            "policy": {"template": "provide-access"},
        }
        with source.open("rb") as f:
            created = acme.api(
                "POST",
                "/offerings",
                data={"metadata": json.dumps(meta)},
                files={"file": ("log.csv", f, "text/csv")},
            )
        assert created.status_code == 201, created.text
        started = beta.api(
            "POST",
            "/negotiations",
            json={"offering_id": created.json()["id"], "provider": a.url, "purpose": "research"},
        )
        assert started.status_code == 201, started.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for n in acme.api("GET", "/negotiations").json():
                if n["peer_pid"] == started.json()["id"] and n["state"] == "REQUESTED":
                    return dict(n)
            time.sleep(0.2)
        raise AssertionError(f"Beta's request for {name} did not reach Acme")

    return make
