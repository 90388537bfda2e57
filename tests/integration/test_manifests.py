"""Declarative manifests through the API (test client) and the CLI (a live node)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import services

EXAMPLES = services.REPO / "examples"


def sources_of(manifest_dir: Path, names: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, rel in names.items():
        data = (manifest_dir / rel).read_bytes()
        out[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return out


def example_sources(directory: Path = EXAMPLES) -> dict[str, dict[str, Any]]:
    return sources_of(
        directory,
        {
            "turbine-vibration": "data/vibration.csv",
            "bearing-faults": "data/bearings.csv",
            "maintenance-log": "data/maintenance-log.csv",
            "digit-scans": "data/digits.npz",
        },
    )


def example_suites(directory: Path = EXAMPLES) -> dict[str, Any]:
    """The suite files the example manifest names, as the client sends them (GX suite JSON)."""
    return {"bearing-faults": json.loads((directory / "quality" / "bearings.json").read_text())}


def plan(client, auth, text: str, sources: dict[str, Any], suites: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    suites = example_suites() if suites is None and "suite: quality/" in text else suites or {}
    return client.post(
        "/api/v1/manifests/plan",
        json={"manifest": text, "source_name": "manifest.yaml", "sources": sources, "suites": suites},
        headers=auth(),
    )


def apply(client, auth, text: str, directory: Path, sources: dict[str, Any], needs: list[str]):  # type: ignore[no-untyped-def]
    rels = {
        "turbine-vibration": "data/vibration.csv",
        "bearing-faults": "data/bearings.csv",
        "maintenance-log": "data/maintenance-log.csv",
        "digit-scans": "data/digits.npz",
    }
    suites = example_suites(directory) if "suite: quality/" in text else {}
    body = {"manifest": text, "source_name": "manifest.yaml", "sources": sources, "suites": suites}
    if not needs:
        return client.post("/api/v1/manifests/apply", json=body, headers=auth())
    request = json.dumps(body)
    files = [(f"source:{n}", (rels[n], (directory / rels[n]).read_bytes(), "text/csv")) for n in needs]
    return client.post("/api/v1/manifests/apply", data={"request": request}, files=files, headers=auth())


def offerings(client, auth) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = client.get("/api/v1/offerings", params={"limit": 100}, headers=auth()).json()["items"]
    return {o["name"]: o for o in items}


def test_plan_changes_nothing_and_apply_is_idempotent(client, auth) -> None:
    text = (EXAMPLES / "manifest.yaml").read_text()
    sources = example_sources()
    first = plan(client, auth, text, sources)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [c["action"] for c in body["changes"]] == ["create"] * 4
    assert sorted(body["needs_bytes"]) == [
        "bearing-faults",
        "digit-scans",
        "maintenance-log",
        "turbine-vibration",
    ]
    assert offerings(client, auth) == {}, "plan must not change anything"

    applied = apply(client, auth, text, EXAMPLES, sources, body["needs_bytes"])
    assert applied.status_code == 200, applied.text
    state = offerings(client, auth)
    assert set(state) == {"turbine-vibration", "bearing-faults", "maintenance-log", "digit-scans"}
    assert state["digit-scans"]["access_modes"] == ["compute"]
    assert state["digit-scans"]["media_type"] == "application/x-npz"
    assert state["bearing-faults"]["policy"]["prohibitions"] == [{"action": "download"}]
    assert state["turbine-vibration"]["policy"] == {"template": "n-times-usage", "params": {"count": 10}}
    assert state["bearing-faults"]["access_modes"] == ["compute"]

    again = apply(client, auth, text, EXAMPLES, sources, [])
    assert again.status_code == 200
    assert again.json()["changes"] == []
    assert again.json()["summary"].startswith("no changes")
    assert offerings(client, auth) == state


def test_new_version_update_retire_reactivate(client, auth, tmp_path: Path) -> None:
    work = tmp_path / "m"
    shutil.copytree(EXAMPLES, work)
    text = (work / "manifest.yaml").read_text()
    apply(
        client,
        auth,
        text,
        work,
        example_sources(work),
        ["turbine-vibration", "bearing-faults", "maintenance-log", "digit-scans"],
    )

    (work / "data" / "vibration.csv").write_text("turbine,t_ms,ax,ay,az\nT00,0,0.1,0.2,0.3\n")
    changed = text.replace("title: Bearing fault labels", "title: Bearing fault labels v2")
    changed = changed.replace(changed[changed.index("  - name: maintenance-log") :], "")
    p = plan(client, auth, changed, example_sources(work)).json()
    actions = {(c["action"], c["target"]) for c in p["changes"]}
    assert actions == {
        ("new-version", "turbine-vibration"),
        ("update", "bearing-faults"),
        ("retire", "maintenance-log"),
    }
    assert next(c for c in p["changes"] if c["action"] == "update")["fields"] == ["title"]

    result = apply(client, auth, changed, work, example_sources(work), p["needs_bytes"])
    assert result.status_code == 200, result.text
    state = offerings(client, auth)
    assert "maintenance-log" not in state, "a retired offering leaves the list"
    assert state["turbine-vibration"]["version"] == 2
    assert state["bearing-faults"]["title"] == "Bearing fault labels v2"

    back = plan(
        client,
        auth,
        text.replace("title: Bearing fault labels\n", "title: Bearing fault labels v2\n"),
        example_sources(work),
    ).json()
    assert ("reactivate", "maintenance-log") in {(c["action"], c["target"]) for c in back["changes"]}


def test_api_registered_offerings_are_never_retired(client, auth) -> None:
    files = {"metadata": (None, json.dumps({"title": "By hand", "name": "by-hand"})), "file": ("x", b"bytes")}
    assert client.post("/api/v1/offerings", files=files, headers=auth()).status_code == 201
    p = plan(client, auth, "apiVersion: agora/v1\nofferings: []\n", {}).json()
    assert p["changes"] == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "apiVersion: agora/v1\nofferings:\n  - name: x\n    title: T\n    source: a.csv\n    colour: red\n",
            "manifest.yaml:6",
        ),
        ("apiVersion: agora/v2\n", "apiVersion"),
        (
            "apiVersion: agora/v1\nofferings:\n  - name: x\n    title: T\n    source: a.csv\n"
            "  - name: x\n    title: U\n    source: b.csv\n",
            "appears twice",
        ),
        ("apiVersion: agora/v1\nofferings: [\n", "not valid YAML"),
        (
            "apiVersion: agora/v1\nofferings:\n  - name: x\n    title: T\n    source: a.csv\n    policy:\n"
            "      permissions:\n        - action: use\n          constraints:\n"
            "            - {leftOperand: purpose, operator: lt, rightOperand: 3}\n",
            "offerings.0.policy",
        ),
    ],
)
def test_invalid_manifests_name_file_line_and_field(client, auth, text: str, fragment: str) -> None:
    sources = {"x": {"sha256": "a" * 64, "size": 1}}
    r = plan(client, auth, text, sources)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert fragment in problem["detail"] or any(
        fragment in (e["path"] + e["message"]) for e in problem.get("errors", [])
    )
    assert offerings(client, auth) == {}


def test_apply_refuses_missing_or_changed_bytes(client, auth) -> None:
    text = (EXAMPLES / "manifest.yaml").read_text()
    sources = example_sources()
    missing = client.post(
        "/api/v1/manifests/apply",
        json={"manifest": text, "sources": sources, "suites": example_suites()},
        headers=auth(),
    )
    assert missing.status_code == 400
    assert "upload its source" in missing.json()["detail"]
    wrong = dict(sources)
    wrong["turbine-vibration"] = {"sha256": "b" * 64, "size": 10}
    r = apply(
        client,
        auth,
        text,
        EXAMPLES,
        wrong,
        ["turbine-vibration", "bearing-faults", "maintenance-log", "digit-scans"],
    )
    assert r.status_code == 400
    assert "changed since it was hashed" in r.json()["detail"]
    assert offerings(client, auth) == {}


def test_manifest_json_schema_is_published() -> None:
    from marketplace.manifests.schema import SCHEMA_FILE, manifest_json_schema

    regenerate = "python -c 'from marketplace.manifests.schema import write_json_schema; write_json_schema()'"
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(
        json.dumps(manifest_json_schema(), sort_keys=True)
    ), regenerate


def test_cli_plan_and_apply(live_node: services.LiveNode, tmp_path: Path) -> None:
    work = tmp_path / "m"
    shutil.copytree(EXAMPLES, work)
    manifest = str(work / "manifest.yaml")
    home = str(live_node.home)
    planned = live_node.cli("plan", "-f", manifest, "--home", home)
    assert planned.stdout.count("create") >= 4 and "plan: 4 create" in planned.stdout
    assert "applied: 4 create" in live_node.cli("apply", "-f", manifest, "--home", home).stdout
    assert "no changes" in live_node.cli("apply", "-f", manifest, "--home", home).stdout
    text = (work / "manifest.yaml").read_text()
    line = text[: text.index("source: data/bearings.csv")].count("\n") + 1
    (work / "manifest.yaml").write_text(text.replace("source: data/bearings.csv", "source: data/nope.csv"))
    bad = live_node.cli("plan", "-f", manifest, "--home", home, check=False)
    assert bad.returncode == 1
    assert f"manifest.yaml:{line}: offerings.1.source" in bad.stderr and "no such file" in bad.stderr
