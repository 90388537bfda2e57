"""Two nodes as real processes: a manifest on A, the federated catalog on B."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from tests import services


def _catalog(node: services.LiveNode, token: str, **params: Any) -> list[dict[str, Any]]:
    r = httpx.get(f"{node.url}/api/v1/catalog", params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def _manifest(work: Path, b_address: str, b_url: str, other: str, with_public: bool = True) -> Path:
    shutil.copytree(services.REPO / "examples" / "data", work / "data", dirs_exist_ok=True)
    offerings = [
        {
            "name": "bearing-faults",
            "title": "Bearing fault labels",
            "source": "data/bearings.csv",
            "keywords": ["bearings"],
            "access_modes": ["compute"],
            "schema": {
                "columns": [
                    {"name": "bearing", "type": "string", "role": "id"},
                    {"name": "rpm", "type": "integer"},
                    {"name": "temperature_c", "type": "float"},
                    {"name": "rms_g", "type": "float"},
                    {"name": "fault", "type": "integer", "role": "label"},
                ]
            },
            "policy": {"template": "connector-restricted-usage", "params": {"participants": [b_address]}},
        },
        {
            "name": "maintenance-log",
            "title": "Maintenance log for partners only",
            "source": "data/maintenance-log.csv",
            "policy": {"template": "connector-restricted-usage", "params": {"participants": [other]}},
        },
        {
            "name": "internal",
            "title": "Internal vibration notes",
            "source": "data/maintenance-log.csv",
            "policy": {"template": "prohibit-access"},
        },
    ]
    if with_public:
        offerings.insert(
            0,
            {
                "name": "turbine-vibration",
                "title": "Turbine vibration 2026",
                "source": "data/vibration.csv",
                "keywords": ["vibration", "wind"],
                "access_modes": ["compute", "download"],
                "on_untrainable": "register-flagged",
                "policy": {"template": "n-times-usage", "params": {"count": 10}},
            },
        )
    path = work / "manifest.yaml"
    path.write_text(json.dumps({"apiVersion": "agora/v1", "offerings": offerings, "peers": [{"url": b_url}]}))
    return path


def test_federated_catalog_between_two_nodes(tmp_path: Path) -> None:
    b = services.start_node(tmp_path / "b", name="Beta Analytics", AGORA_CATALOG_CRAWL_INTERVAL="0.5")
    a = services.start_node(tmp_path / "a", name="Acme Wind")
    try:
        b_address = httpx.get(f"{b.url}/health").json()["participant"]
        a_address = httpx.get(f"{a.url}/health").json()["participant"]
        other = "0x" + "12" * 20
        manifest = _manifest(tmp_path / "m", b_address, b.url, other)
        applied = a.cli("apply", "-f", str(manifest), "--home", str(a.home))
        assert "4 create" in applied.stdout and "1 add-peer" in applied.stdout
        b.cli("peers", "add", a.url, "--home", str(b.home))
        token = b.token("catalog:read")

        def remote() -> list[dict[str, Any]]:
            return [i for i in _catalog(b, token) if i["provider"] == a_address]

        seen = services.wait_until(lambda: remote() if len(remote()) >= 2 else None, "B's first crawl of A")
        assert sorted(i["name"] for i in seen) == ["bearing-faults", "turbine-vibration"], (
            "B sees exactly what A's policies could grant it"
        )
        assert all(not i["stale"] for i in seen)

        hits = _catalog(b, token, q="vibration")
        assert [h["name"] for h in hits] == ["turbine-vibration"]
        assert [h["name"] for h in _catalog(b, token, keyword="bearings")] == ["bearing-faults"]
        assert [h["name"] for h in _catalog(b, token, access_mode="download")] == ["turbine-vibration"]
        assert _catalog(b, token, q="partners") == [], "an offering B may not see is not searchable either"

        # A retires one offering; B's next (incremental) crawl drops it
        a.cli(
            "apply",
            "-f",
            str(_manifest(tmp_path / "m", b_address, b.url, other, with_public=False)),
            "--home",
            str(a.home),
        )
        services.wait_until(
            lambda: [i["name"] for i in remote()] == ["bearing-faults"], "the retired offering to go"
        )

        # A goes down: B keeps serving its last copy, marked stale, without waiting on A
        a.stop()
        services.wait_until(lambda: all(i["stale"] for i in remote()) and remote(), "stale marking")
        cached = remote()
        assert [i["name"] for i in cached] == ["bearing-faults"]
        assert cached[0]["age_seconds"] >= 0
        peers = httpx.get(f"{b.url}/health").json()["peers"]
        assert peers[0]["last_error"]
    finally:
        a.stop()
        b.stop()


def test_catalog_request_requires_a_known_signed_sender(live_node: services.LiveNode) -> None:
    from tests import dsp_peer

    message = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "CatalogRequestMessage",
        "filter": [],
    }
    r = dsp_peer.post(dsp_peer.stranger(), live_node.url, "/dsp/catalog/request", message)
    assert r.status_code == 403
    assert r.json()["@type"] == "CatalogError" and "not a peer of this node" in r.json()["reason"][0]
    unsigned = httpx.post(f"{live_node.url}/dsp/catalog/request", json=message)
    assert unsigned.status_code == 401
