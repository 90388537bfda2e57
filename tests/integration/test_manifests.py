"""Declarative manifests through the API (test client) and the CLI (a live node)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kernel.errors import InvalidInput
from marketplace.manifests.cli import prepared
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


def send(client, auth, manifest: Path, *, apply: bool = False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What ``agora plan`` / ``agora apply`` do, against the test client."""
    with prepared(manifest) as (request, paths):
        r = client.post("/api/v1/manifests/plan", json=request, headers=auth())
        assert r.status_code == 200, r.text
        if not apply:
            return dict(r.json())
        files = [
            (f"source:{n}", (paths[n].name, paths[n].read_bytes(), "text/csv"))
            for n in r.json()["needs_bytes"]
        ]
        if files:
            r = client.post(
                "/api/v1/manifests/apply", data={"request": json.dumps(request)}, files=files, headers=auth()
            )
        else:
            r = client.post("/api/v1/manifests/apply", json=request, headers=auth())
        assert r.status_code == 200, r.text
        return dict(r.json())


def detail(client, auth, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    items = client.get("/api/v1/offerings", headers=auth()).json()["items"]
    offering_id = next(o["id"] for o in items if o["name"] == name)
    return dict(client.get(f"/api/v1/offerings/{offering_id}", headers=auth()).json())


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


QUALITY_MANIFEST = """apiVersion: agora/v1
offerings:
  - name: inline
    title: Inline suite
    source: a.csv
    schema:
      columns:
        - {name: a, type: integer, unit: mm}
        - {name: b, type: integer, role: label}
    expectations:
      - {type: expect_column_values_to_not_be_null, kwargs: {column: a}}
    on_failure: publish-flagged
  - name: from-file
    title: Suite file
    source: b.csv
    expectations: {suite: quality/s.json}
"""


def gx_suite(*columns: str) -> dict[str, Any]:
    """A suite as GX 1.x writes it (ids, meta and notes beside the expectations)."""
    return {
        "name": "checks",
        "id": "5a1e1c0d-0000-4000-8000-000000000000",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}, "meta": {}, "id": str(i)}
            for i, c in enumerate(columns)
        ],
        "meta": {"great_expectations_version": "1.24.1"},
        "notes": None,
    }


def quality_dir(tmp_path: Path) -> Path:
    (tmp_path / "quality").mkdir()
    (tmp_path / "a.csv").write_text("a,b\n1,0\n2,1\n")
    (tmp_path / "b.csv").write_text("a,b\n3,0\n4,1\n")
    (tmp_path / "quality" / "s.json").write_text(json.dumps(gx_suite("a", "b")))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(QUALITY_MANIFEST)
    return manifest


def test_quality_declarations_are_planned_and_applied(client, auth, tmp_path: Path) -> None:
    manifest = quality_dir(tmp_path)
    send(client, auth, manifest, apply=True)
    inline = detail(client, auth, "inline")["declared"]
    assert inline["schema"]["columns"] == [
        {"name": "a", "type": "integer", "unit": "mm"},
        {"name": "b", "type": "integer", "role": "label"},
    ]
    assert [e["kwargs"] for e in inline["expectations"]["expectations"]] == [{"column": "a"}]
    assert (inline["on_failure"], inline["on_untrainable"]) == ("publish-flagged", "reject")
    from_file = detail(client, auth, "from-file")["declared"]["expectations"]
    assert from_file["name"] == "checks" and len(from_file["expectations"]) == 2
    assert send(client, auth, manifest)["changes"] == [], "a second plan finds the declarations applied"

    (tmp_path / "quality" / "s.json").write_text(json.dumps(gx_suite("a", "b", "a")))
    manifest.write_text(QUALITY_MANIFEST.replace("unit: mm", "unit: cm"))
    planned = send(client, auth, manifest)
    assert [(c["action"], c["target"], c["fields"]) for c in planned["changes"]] == [
        ("update", "inline", ["quality_declared"]),
        ("update", "from-file", ["quality_declared"]),
    ]
    assert [c["detail"] for c in planned["changes"]] == [
        "metadata: quality (schema)",
        "metadata: quality (expectations)",
    ]
    send(client, auth, manifest, apply=True)
    changed = detail(client, auth, "from-file")
    assert len(changed["declared"]["expectations"]["expectations"]) == 3
    assert [v["version"] for v in changed["versions"]] == [1], "a declaration change is no new version"
    assert detail(client, auth, "inline")["declared"]["schema"]["columns"][0]["unit"] == "cm"
    assert send(client, auth, manifest)["changes"] == []


def test_bad_suites_are_refused_with_file_line_and_field(client, auth, tmp_path: Path) -> None:
    manifest = quality_dir(tmp_path)
    line = QUALITY_MANIFEST[: QUALITY_MANIFEST.index("expectations: {suite")].count("\n") + 1
    suite_file = tmp_path / "quality" / "s.json"
    bad = gx_suite("a")
    bad["expectations"][0]["type"] = "drop_table"
    suite_file.write_text(json.dumps(bad))
    with pytest.raises(InvalidInput) as refused, prepared(manifest):
        pass
    assert refused.value.detail.startswith(
        f"manifest.yaml:{line}: offerings.1.expectations.suite: quality/s.json"
    )
    assert "expectations.0.type" in refused.value.detail
    suite_file.write_text("x" * (300 * 1024))
    with pytest.raises(InvalidInput, match="over 256 KiB"), prepared(manifest):
        pass
    suite_file.unlink()
    with pytest.raises(InvalidInput, match="no such suite file"), prepared(manifest):
        pass

    sources = sources_of(tmp_path, {"inline": "a.csv", "from-file": "b.csv"})
    too_many = {"expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}}] * 501}
    for suites, fragment in [
        ({}, "was not sent with the manifest"),
        ({"from-file": bad}, f"manifest.yaml:{line}: quality/s.json: Value error, not an expectation name"),
        ({"from-file": too_many}, "at most 500"),
        ({"from-file": gx_suite("a"), "inline": gx_suite("a")}, "names no suite file"),
        ({"from-file": gx_suite("a"), "elsewhere": gx_suite("a")}, "names no suite file"),
    ]:
        r = plan(client, auth, QUALITY_MANIFEST, sources, suites)
        assert r.status_code == 400, r.text
        assert fragment in json.dumps(r.json()), r.json()
    assert offerings(client, auth) == {}


MODEL_MANIFEST = """apiVersion: agora/v1
offerings:
  - name: rul-model
    kind: model
    title: Remaining useful life
    source: model.onnx
    aliases: {aliases}
"""


def test_aliases_in_the_manifest(client, auth, runtime, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    (tmp_path / "model.onnx").write_bytes(b"model version one")
    manifest.write_text(MODEL_MANIFEST.format(aliases="{champion: 1}"))
    first = send(client, auth, manifest)
    assert [(c["action"], c.get("alias")) for c in first["changes"]] == [
        ("create", None),
        ("alias", "champion"),
    ]
    assert first["changes"][1]["detail"] == "champion → version 1 (new)"
    send(client, auth, manifest, apply=True)
    offering_id = detail(client, auth, "rul-model")["id"]
    assert runtime.aliases.current(offering_id) == {"champion": 1}

    (tmp_path / "model.onnx").write_bytes(b"model version two")
    manifest.write_text(MODEL_MANIFEST.format(aliases="{champion: 2, candidate: 1}"))
    second = send(client, auth, manifest)
    assert [(c["action"], c["detail"]) for c in second["changes"]] == [
        ("new-version", "version 2 from model.onnx"),
        ("alias", "champion → version 2 (moved from version 1)"),
        ("alias", "candidate → version 1 (new)"),
    ]
    send(client, auth, manifest, apply=True)
    assert runtime.aliases.current(offering_id) == {"candidate": 1, "champion": 2}
    runtime.aliases.move(offering_id, "staging", 1, "someone")
    third = send(client, auth, manifest)
    assert third["changes"] == []
    assert third["notes"] == ["rul-model: alias staging (version 1) is not in the manifest; left where it is"]

    manifest.write_text(MODEL_MANIFEST.format(aliases="{champion: 9}"))
    r = plan(client, auth, manifest.read_text(), sources_of(tmp_path, {"rul-model": "model.onnx"}))
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "offerings.0.aliases.champion"
    assert "manifest.yaml:7: rul-model has no version 9" in r.json()["errors"][0]["message"]
    dataset = MODEL_MANIFEST.replace("kind: model", "kind: dataset").format(aliases="{champion: 1}")
    r = plan(
        client, auth, dataset.replace("rul-model", "other"), sources_of(tmp_path, {"other": "model.onnx"})
    )
    assert r.status_code == 400 and "aliases name versions of model offerings" in r.json()["detail"]
    for reserved in ("{latest: 1}", "{Champion: 1}", "{champion: 0}"):
        r = plan(client, auth, MODEL_MANIFEST.format(aliases=reserved), {})
        assert r.status_code == 400, reserved
    assert runtime.aliases.current(offering_id) == {"candidate": 1, "champion": 2, "staging": 1}


def test_a_rejected_version_is_not_planned_again(client, auth, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "apiVersion: agora/v1\nofferings:\n  - name: gauges\n    title: Gauges\n    source: g.csv\n"
        "    expectations:\n      - {type: expect_column_values_to_be_between, "
        "kwargs: {column: a, min_value: 0, max_value: 1}}\n    on_failure: reject\n"
    )
    (tmp_path / "g.csv").write_text("a,b\n0,1\n1,0\n")
    send(client, auth, manifest, apply=True)
    (tmp_path / "g.csv").write_text("a,b\n5,1\n7,0\n")  # fails the suite: never offered
    assert [c["action"] for c in send(client, auth, manifest, apply=True)["changes"]] == ["new-version"]
    offering = detail(client, auth, "gauges")
    assert [v["version"] for v in offering["versions"]] == [1, 2]
    assert offering["version"] == 1 and offering["versions"][1]["published"] is False
    again = send(client, auth, manifest)
    assert again["changes"] == [] and again["unchanged"] == ["gauges"]
