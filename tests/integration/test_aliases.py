"""Model aliases between two organisations' nodes on one chain: Acme moves ``champion``
between versions of a model offering (audited, notarized with the version as parent, shown
to its peer), Beta negotiates for "the version named champion" and gets the version it named
when Acme agreed, for as long as that agreement lasts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.job_orgs import job_orgs, poll

MODEL_V1, MODEL_V2 = b"onnx model, version one", b"onnx model, version two"


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.Org, services.Org, dict[str, str]]]:
    """Acme with a model offering (versions 1 and 2) and a dataset offering; Beta its peer."""
    root = tmp_path_factory.mktemp("aliases")
    with job_orgs(root, {}, {}, workers=0, env={"AGORA_CATALOG_CRAWL_INTERVAL": "1"}) as orgs:
        acme = orgs.acme
        meta = {
            "name": "wind-model",
            "kind": "model",
            "title": "Wind power model",
            "media_type": "application/onnx",
            "policy": {"template": "provide-access"},
        }
        model = _upload(acme, "/offerings", MODEL_V1, {"metadata": json.dumps(meta)})
        _upload(acme, f"/offerings/{model}/versions", MODEL_V2, {})
        data = {"name": "wind-data", "title": "Wind data", "media_type": "text/plain"}
        dataset = _upload(acme, "/offerings", b"plain text", {"metadata": json.dumps(data)})
        yield acme, orgs.beta, {"model": model, "dataset": dataset}


def _upload(org: services.Org, path: str, content: bytes, fields: dict[str, str]) -> str:
    r = org.api(
        "POST", path, data=fields, files={"file": ("model.onnx", content, "application/octet-stream")}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _versions(org: services.Org, offering: str) -> dict[int, dict[str, Any]]:
    return {v["version"]: v for v in org.api("GET", f"/offerings/{offering}").json()["versions"]}


def _move(org: services.Org, offering: str, name: str, version: int) -> dict[str, Any]:
    r = org.api("PUT", f"/offerings/{offering}/aliases/{name}", json={"version": version})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _audit(org: services.Org, offering: str) -> list[tuple[str, Any, Any]]:
    with sqlite3.connect(org.node.home / "agora.db") as db:
        rows = db.execute(
            "SELECT action, details FROM audit_log WHERE subject_id = ? AND action LIKE 'offering.alias%' ORDER BY id",
            (offering,),
        ).fetchall()
    return [(action, json.loads(d)["from"], json.loads(d)["to"]) for action, d in rows]


def _provenance(org: services.Org, asset: str) -> dict[str, Any]:
    doc = org.api("GET", f"/provenance/{asset}").json()
    return {**doc, "state": doc["anchor"]["status"]}


def _negotiate(acme: services.Org, beta: services.Org, offering: str, **asked: Any) -> dict[str, Any]:
    body = {"offering_id": offering, "provider": acme.node.url, "purpose": "research", **asked}
    r = beta.api("POST", "/negotiations", json=body)
    assert r.status_code == 201, r.text
    return poll(
        lambda: beta.api("GET", f"/negotiations/{r.json()['id']}").json(), ("FINALIZED", "TERMINATED")
    )


def _transfer(beta: services.Org, agreement: str, out: Path) -> bytes:
    beta.node.cli("transfer", agreement, "-o", str(out), "--url", beta.node.url, "--token", beta.token)
    return out.read_bytes()


def test_moves_are_audited_notarized_and_reach_the_peer(
    world: tuple[services.Org, services.Org, dict[str, str]],
) -> None:
    acme, beta, ids = world
    model = ids["model"]
    moved = _move(acme, "wind-model", "candidate", 1)  # by name
    assert (moved["offering_id"], moved["version"], moved["from"]) == (model, 1, None)
    moved = _move(acme, model, "candidate", 2)
    assert (moved["from"], moved["version"]) == (1, 2)
    assert _audit(acme, model)[-2:] == [("offering.alias", None, 1), ("offering.alias", 1, 2)]

    # the anchor of the move is on chain, its parent the version's own asset: agora verify walks it
    versions = _versions(acme, model)
    assert versions[2]["aliases"] == ["candidate"] and versions[1]["aliases"] == []
    asset = moved["anchor"]["asset_id"]
    doc = poll(lambda: _provenance(acme, asset), ("ANCHORED",), timeout=60)
    assert doc["asset"]["kind"] == "alias" and doc["asset"]["metadata"]["version"] == 2
    assert [p["asset"]["id"] for p in doc["parents"]] == [versions[2]["anchor"]["asset_id"]]
    poll(lambda: {"state": _versions(acme, model)[2]["anchor"]["status"]}, ("ANCHORED",), timeout=60)
    verdict = json.loads(
        acme.node.cli("verify", asset, "--url", acme.node.url, "--token", acme.token, "--json").stdout
    )
    assert verdict["verified"], verdict
    assert verdict["asset"]["kind"] == "alias"
    assert [p["kind"] for p in verdict["asset"]["parents"]] == ["model"]

    # the CLI: list, move, delete
    home = ["--url", acme.node.url, "--token", acme.token]
    assert "candidate" in acme.node.cli("offerings", "aliases", "wind-model", *home).stdout
    out = acme.node.cli("offerings", "alias", "wind-model", "1", "staging", *home).stdout
    assert "staging" in out and "v1" in out
    acme.node.cli("offerings", "alias", "wind-model", "--delete", "staging", *home)
    assert _audit(acme, model)[-1] == ("offering.alias.delete", 1, None)
    assert acme.api("GET", f"/offerings/{model}/aliases").json()["aliases"] == {"candidate": 2}

    # Beta's copy of Acme's catalog carries the aliases
    def peer_aliases() -> Any:
        with sqlite3.connect(beta.node.home / "agora.db") as db:
            row = db.execute("SELECT document FROM catalog_entry WHERE offering_id = ?", (model,)).fetchone()
        found = json.loads(row[0]).get("agora:aliases") if row else None
        return found == {"candidate": 2}

    services.wait_until(peer_aliases, "Beta's catalog copy to carry the aliases", timeout=30)


def test_hostile_alias_requests_change_nothing(
    world: tuple[services.Org, services.Org, dict[str, str]],
) -> None:
    acme, beta, ids = world
    model = ids["model"]
    before = (acme.api("GET", f"/offerings/{model}/aliases").json(), len(_audit(acme, model)))
    refused = {
        ("PUT", f"/offerings/{model}/aliases/champion", json.dumps({"version": "1"})): 400,
        ("PUT", f"/offerings/{model}/aliases/champion", json.dumps({"version": 1, "extra": 1})): 400,
        ("PUT", f"/offerings/{model}/aliases/champion", json.dumps({"version": True})): 400,
        ("PUT", f"/offerings/{model}/aliases/champion", json.dumps({"version": 2**40})): 400,
        ("PUT", f"/offerings/{model}/aliases/champion", "[" * 5000): 413,
        ("PUT", f"/offerings/{model}/aliases/champion", "{"): 400,
        ("PUT", f"/offerings/{model}/aliases/latest", json.dumps({"version": 1})): 400,
        ("PUT", f"/offerings/{model}/aliases/Champion", json.dumps({"version": 1})): 400,
        ("PUT", f"/offerings/{model}/aliases/{'a' * 65}", json.dumps({"version": 1})): 400,
        ("PUT", f"/offerings/{model}/aliases/champion", json.dumps({"version": 9})): 404,
        ("PUT", f"/offerings/{ids['dataset']}/aliases/champion", json.dumps({"version": 1})): 400,
        ("PUT", "/offerings/no-such-model/aliases/champion", json.dumps({"version": 1})): 404,
        ("DELETE", f"/offerings/{model}/aliases/never-set", ""): 404,
    }
    for (method, path, body), status in refused.items():
        r = httpx.request(
            method,
            f"{acme.node.url}/api/v1{path}",
            content=body,
            headers={"Authorization": f"Bearer {acme.token}", "Content-Type": "application/json"},
        )
        assert r.status_code == status, (path, body[:40], r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
    reader = acme.node.token("catalog:read")
    r = httpx.put(
        f"{acme.node.url}/api/v1/offerings/{model}/aliases/champion",
        json={"version": 1},
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert r.status_code == 403
    # the consumer cannot name a version its way in: a malformed alias is refused before anything
    r = beta.api(
        "POST",
        "/negotiations",
        json={"offering_id": model, "provider": acme.node.url, "purpose": "research", "alias": "../x"},
    )
    assert r.status_code == 400
    after = (acme.api("GET", f"/offerings/{model}/aliases").json(), len(_audit(acme, model)))
    assert after == before


def test_an_agreement_keeps_the_version_its_alias_named(
    world: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path
) -> None:
    acme, beta, ids = world
    model = ids["model"]
    versions = _versions(acme, model)
    _move(acme, model, "champion", 1)

    first = _negotiate(acme, beta, model, alias="champion")
    assert first["state"] == "FINALIZED", first
    terms = first["agreement"]["terms"]
    assert (terms["version"], terms["alias"]) == (1, "champion")
    assert terms["sha256"] == versions[1]["sha256"].removeprefix("sha256:")
    assert first["asked"] == {"agora:alias": "champion"}

    _move(acme, model, "champion", 2)
    assert _transfer(beta, first["agreement_id"], tmp_path / "old.onnx") == MODEL_V1
    second = _negotiate(acme, beta, model, alias="champion")
    assert second["agreement"]["terms"]["version"] == 2
    assert _transfer(beta, second["agreement_id"], tmp_path / "new.onnx") == MODEL_V2
    assert _transfer(beta, first["agreement_id"], tmp_path / "old-again.onnx") == MODEL_V1

    pinned = _negotiate(acme, beta, model, version=1)
    assert pinned["agreement"]["terms"]["version"] == 1 and "alias" not in pinned["agreement"]["terms"]

    unknown = _negotiate(acme, beta, model, alias="production")
    assert unknown["state"] == "TERMINATED" and "no alias 'production'" in unknown["reason"], unknown

    # the owner downloads by alias too: the API and the CLI
    r = acme.api("GET", f"/offerings/{model}/download", params={"alias": "champion"})
    assert r.status_code == 200 and r.content == MODEL_V2
    out = tmp_path / "champion.onnx"
    acme.node.cli(
        "offerings",
        "download",
        model,
        "-o",
        str(out),
        "--alias",
        "champion",
        "--url",
        acme.node.url,
        "--token",
        acme.token,
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(MODEL_V2).hexdigest()
    missing = acme.api("GET", f"/offerings/{model}/download", params={"alias": "production"})
    assert missing.status_code == 404 and "no alias" in missing.json()["detail"]
