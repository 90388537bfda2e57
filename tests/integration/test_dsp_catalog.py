"""The catalog a node serves validates against the DSP 2025-1 schemas, and filters by policy."""

from __future__ import annotations

import json
from typing import Any

from eth_account import Account

from tests import dsp

PEER = Account.create()
OTHER = "0x" + "34" * 20


def register(client, auth, name: str, policy: dict[str, Any] | None) -> None:  # type: ignore[no-untyped-def]
    meta = {"title": f"Offering {name}", "name": name, "keywords": ["test"], "media_type": "text/csv"}
    if policy is not None:
        meta["policy"] = policy
    files = {"metadata": (None, json.dumps(meta)), "file": (f"{name}.csv", f"a\n{name}\n".encode())}
    r = client.post("/api/v1/offerings", files=files, headers=auth())
    assert r.status_code == 201, r.text


def test_served_catalog_validates_and_hides_what_the_policy_excludes(client, auth, runtime) -> None:
    register(client, auth, "open", {"template": "provide-access"})
    register(
        client,
        auth,
        "for-peer",
        {"template": "connector-restricted-usage", "params": {"participants": [PEER.address]}},
    )
    register(
        client,
        auth,
        "for-other",
        {"template": "connector-restricted-usage", "params": {"participants": [OTHER]}},
    )
    register(
        client,
        auth,
        "purpose-bound",
        {
            "permissions": [
                {
                    "action": "use",
                    "constraints": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}],
                }
            ]
        },
    )
    register(client, auth, "nobody", {"template": "prohibit-access"})
    register(client, auth, "no-policy", None)

    catalog, next_cursor = runtime.catalog.dcat_catalog(PEER.address)
    assert next_cursor is None
    assert dsp.errors("catalog/catalog-schema.json", catalog) == []
    names = sorted(d["agora:name"] for d in catalog["dataset"])
    assert names == ["for-peer", "open", "purpose-bound"]
    for dataset in catalog["dataset"]:
        assert dataset["hasPolicy"][0]["@type"] == "Offer"
        assert dsp.errors("catalog/dataset-schema.json", {"@context": catalog["@context"], **dataset}) == []

    other_view, _ = runtime.catalog.dcat_catalog(OTHER)
    assert sorted(d["agora:name"] for d in other_view["dataset"]) == ["for-other", "open", "purpose-bound"]


def test_catalog_pages_and_incremental_changes(client, auth, runtime) -> None:
    for i in range(5):
        register(client, auth, f"o{i}", {"template": "provide-access"})
    first, cursor = runtime.catalog.dcat_catalog(PEER.address, limit=2)
    assert len(first["dataset"]) == 2 and cursor
    seen = [d["agora:name"] for d in first["dataset"]]
    while cursor:
        page, cursor = runtime.catalog.dcat_catalog(PEER.address, limit=2, cursor=cursor)
        seen += [d["agora:name"] for d in page["dataset"]]
    assert seen == [f"o{i}" for i in range(5)]

    from datetime import datetime

    since = datetime.fromisoformat(first["agora:modifiedUntil"])
    offering = runtime.offerings.by_name("o0")
    runtime.offerings.set_status(offering.id, "retired", "test")
    changed, _ = runtime.catalog.dcat_catalog(PEER.address, since=since)
    assert offering.id in changed["agora:removed"]
    assert all(d["agora:name"] != "o0" for d in changed["dataset"])


def test_catalog_search_api(client, auth) -> None:
    register(client, auth, "wind-turbines", {"template": "provide-access"})
    register(client, auth, "solar-panels", {"template": "provide-access"})
    r = client.get("/api/v1/catalog", params={"q": "turb"}, headers=auth("catalog:read"))
    assert r.status_code == 200
    assert [i["name"] for i in r.json()["items"]] == ["wind-turbines"]
    assert client.get("/api/v1/catalog", params={"q": "!!!"}, headers=auth()).status_code == 400
    assert client.get("/api/v1/catalog", params={"limit": 0}, headers=auth()).status_code == 400
    everything = client.get("/api/v1/catalog", params={"limit": 1}, headers=auth()).json()
    assert len(everything["items"]) == 1 and everything["next_cursor"]
    rest = client.get(
        "/api/v1/catalog", params={"limit": 1, "cursor": everything["next_cursor"]}, headers=auth()
    ).json()
    assert rest["items"][0]["name"] != everything["items"][0]["name"]
