"""The demo's data-quality chapter: schemas, expectation suites and profiles as evidence in the
catalog, a version failing its suite and one passing, a dataset kept in a DVC repository, and a
model offering whose alias ``champion`` moves to a new version that Beta then negotiates for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kernel.client import NodeClient
from kernel.errors import AgoraError
from node.demo_kit import negotiate, say, step

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Acme Data",
    "GIT_AUTHOR_EMAIL": "data@acme.example",
    "GIT_COMMITTER_NAME": "Acme Data",
    "GIT_COMMITTER_EMAIL": "data@acme.example",
    "DVC_NO_ANALYTICS": "1",
}
DVC_OFFERING = """  - name: rotor-temperatures
    kind: dataset
    title: Rotor temperatures (DVC)
    description: Rotor bearing temperatures kept in Acme's DVC repository
    keywords: [temperature, dvc]
    source: dvc://sensors-repo/data/rotor.csv@main
    media_type: text/csv
    access_modes: [download]
    policy: {template: provide-access}
    expectations:
      - {type: expect_column_values_to_not_be_null, kwargs: {column: temperature_c}}
"""


def data_quality(
    work: Path, manifest: Path, acme: NodeClient, beta: NodeClient, acme_url: str, first_step: int
) -> int:
    """Steps ``first_step`` … of the story; returns the next step's number."""
    from marketplace.manifests.cli import apply_manifest, plan_manifest

    number = first_step
    step(number, "Acme's datasets carry their columns, a quality suite and a profile without rows")
    bearings = _settled(acme, _offering_id(acme, "bearing-faults"))
    current = _version(bearings, bearings["version"])
    say("bearing-faults declares its columns; the node checked them against the file:")
    for column in current["schema"]["columns"]:
        unit = f" [{column['unit']}]" if column.get("unit") else ""
        say(f"  {column['name']:14} {column['type']:8} {column['role']}{unit}")
    trainable = current["trainable"] or {}
    say(
        f"trainable: {trainable.get('ok')} (label {trainable.get('label')}, "
        f"features {', '.join(trainable.get('features') or [])}; ids dropped)"
    )
    say(
        f"version {current['version']}: {_outcome(current)}; "
        "the validation result is anchored as a child of the version"
    )
    vibration = _settled(acme, _offering_id(acme, "turbine-vibration"))
    profile = _version(vibration, vibration["version"])["profile"] or {}
    say(
        f"turbine-vibration's profile: {profile.get('rows')} rows; "
        f"a value is named only when at least {profile.get('min_count')} records hold it"
    )
    for column in profile.get("columns") or []:
        say("  " + _profiled(column))
    say(
        "untrainable offerings are flagged, not discovered by a failing job: "
        + ((_version(vibration, vibration["version"])["trainable"] or {}).get("reason") or "-")
    )

    number += 1
    step(number, "A new version fails its suite and is not offered; the next one passes")
    source = work / "data" / "bearings.csv"
    good = source.read_text()
    lines = good.splitlines()
    broken = [lines[0]] + [_overheated(line) if i % 50 == 7 else line for i, line in enumerate(lines[1:])]
    source.write_text("\n".join(broken) + "\n")
    plan = plan_manifest(acme, manifest)
    for change in plan["changes"]:
        say(f"$ agora plan   → {change['action']:11} {change['target']:16} {change['detail']}")
    apply_manifest(acme, manifest)
    failed = _settled(acme, bearings["id"])
    newest = failed["versions"][-1]
    say(f"version {newest['version']}: {_outcome(newest)}; published: {newest['published']}")
    say(f"the catalog and new agreements stay on version {failed['version']} (on_failure: reject)")
    source.write_text(good + "B300,1500,55.00,0.300,0\n")
    apply_manifest(acme, manifest)
    passed = _settled(acme, bearings["id"])
    newest = passed["versions"][-1]
    say(f"version {newest['version']}: {_outcome(newest)}; now the current version: {passed['version']}")
    for version in passed["versions"]:
        say(
            f"  v{version['version']}  {version['quality_status']:10} "
            f"published {str(version['published']).lower()}"
        )
    entry = _wait_peer_version(beta, bearings["id"], passed["version"])
    say(f"Beta's catalog: bearing-faults v{entry['version']}, quality {entry.get('quality_status') or '-'}")

    number += 1
    step(number, "A dataset kept in a DVC repository: a moved rev is a new version only when the data moved")
    repo = _dvc_repo(work / "sensors-repo", work / "dvc-remote")
    manifest.write_text(manifest.read_text().replace("peers:\n", DVC_OFFERING + "peers:\n", 1))
    applied = apply_manifest(acme, manifest)
    say(f"$ agora apply   (source dvc://sensors-repo/data/rotor.csv@main) → {applied['summary']}")
    rotor = acme.get(f"/api/v1/offerings/{_offering_id(acme, 'rotor-temperatures')}")
    _said_source(rotor["versions"][-1])
    (repo / "NOTES.md").write_text("Sensor calibration notes.\n")
    _git(repo, "add", "NOTES.md")
    _git(repo, "commit", "-q", "-m", "notes")
    plan = plan_manifest(acme, manifest)
    say(f"a commit that leaves the data alone → $ agora plan: {plan['summary']}")
    with (repo / "data" / "rotor.csv").open("a") as f:
        f.write("R005,61.2\nR006,59.8\n")
    _dvc(repo, "add", "-q", "data/rotor.csv")
    _git(repo, "add", "data/rotor.csv.dvc")
    _git(repo, "commit", "-q", "-m", "two more rotors")
    _dvc(repo, "push", "-q")
    plan = plan_manifest(acme, manifest)
    say(f"new rows, dvc add, commit, push → $ agora plan: {plan['summary']}")
    apply_manifest(acme, manifest)
    rotor = acme.get(f"/api/v1/offerings/{rotor['id']}")
    _said_source(rotor["versions"][-1])

    number += 1
    step(number, "Model versions with aliases: champion moves, and Beta negotiates for it by name")
    model_id = _offering_id(acme, "digits-logreg")
    retrained = _retrained_model(work)
    acme.upload(f"/api/v1/offerings/{model_id}/versions", retrained, {})
    aliases = f"/api/v1/offerings/{model_id}/aliases"
    acme.put_json(f"{aliases}/champion", {"version": 1})
    acme.put_json(f"{aliases}/candidate", {"version": 2})
    say("$ agora offerings alias digits-logreg 1 champion; $ agora offerings alias digits-logreg 2 candidate")
    moved = acme.put_json(f"{aliases}/champion", {"version": 2})
    say(
        f"$ agora offerings alias digits-logreg 2 champion   → moved from version {moved['from']}, "
        f"audited, notarized as alias asset {str(moved['anchor']['asset_id'])[:14]}… (parent: version 2)"
    )
    for name, version in acme.get(aliases)["aliases"].items():
        say(f"  {name:10} → version {version}")
    agreed = negotiate(beta, acme_url, {"offering_id": model_id}, "research", "download", alias="champion")
    terms = (agreed.get("agreement") or {}).get("terms") or {}
    say(
        f"$ agora negotiate {model_id[:8]}… --alias champion --mode download   → {agreed['state']}, "
        f"the agreement records version {terms.get('version')} ({terms.get('alias')})"
    )
    if agreed["state"] != "FINALIZED" or terms.get("version") != 2:
        raise AgoraError(f"the negotiation for champion ended {agreed['state']}: {agreed.get('reason')}")
    return number + 1


def _offering_id(client: NodeClient, name: str) -> str:
    for item in client.get("/api/v1/offerings", limit=200)["items"]:
        if item["name"] == name:
            return str(item["id"])
    raise AgoraError(f"no offering named {name}")


def _settled(client: NodeClient, offering_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """The offering once no version of it is still being validated or profiled."""
    deadline = time.monotonic() + timeout
    while True:
        detail = client.get(f"/api/v1/offerings/{offering_id}")
        busy = [
            v
            for v in detail["versions"]
            if v["quality_status"] == "validating" or (detail["kind"] == "dataset" and v["profile"] is None)
        ]
        if not busy:
            return dict(detail)
        if time.monotonic() > deadline:
            raise AgoraError(f"offering {offering_id}: version {busy[0]['version']} is still being validated")
        time.sleep(0.3)


def _version(detail: dict[str, Any], number: int) -> dict[str, Any]:
    return next(v for v in detail["versions"] if v["version"] == number)


def _outcome(version: dict[str, Any]) -> str:
    quality = version.get("quality") or {}
    if not quality:
        return str(version["quality_status"])
    text = f"{version['quality_status']}, {quality['passed']} of {quality['evaluated']} expectations met"
    failing = quality.get("failing_columns") or []
    return text + (f", failing columns: {', '.join(failing)}" if failing else "")


def _profiled(column: dict[str, Any]) -> str:
    text = f"{column['name']:8} {column['type']:8} nulls {column['null_share']:.0%}"
    if "mean" in column:
        return text + f"  min {column['min']:.3g} max {column['max']:.3g} mean {column['mean']:.3g}"
    if "distinct" in column:
        top = ", ".join(f"{t['value']} ({t['count']})" for t in column["top"][:3])
        return (
            text + f"  {column['distinct']} distinct; most frequent {top or '(none held by enough records)'}"
        )
    return text


def _overheated(line: str) -> str:
    """A bearing row with a temperature no sensor reads (999 °C): what the suite is there for."""
    cells = line.split(",")
    cells[2] = "999.00"
    return ",".join(cells)


def _wait_peer_version(
    beta: NodeClient, offering_id: str, version: int, timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for item in beta.get("/api/v1/catalog", q="bearing")["items"]:
            if item["offering_id"] == offering_id and item["version"] == version:
                return dict(item)
        if time.monotonic() > deadline:
            raise AgoraError(f"Beta's catalog did not reach version {version} of {offering_id}")
        time.sleep(0.3)


def _said_source(version: dict[str, Any]) -> None:
    source = version.get("source") or {}
    say(
        f"  version {version['version']}: sha256 {version['sha256'][7:19]}…, dvc commit "
        f"{str(source.get('commit'))[:10]}, path {source.get('path')}, md5 {str(source.get('md5'))[:10]}…"
    )


def _git(repo: Path, *args: str) -> None:
    _run(repo, "git", *args)


def _dvc(repo: Path, *args: str) -> None:
    _run(repo, str(Path(sys.executable).with_name("dvc")), *args)


def _run(cwd: Path, *args: str) -> None:
    done = subprocess.run(
        args, cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise AgoraError(f"{' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")


def _dvc_repo(repo: Path, remote: Path) -> Path:
    """A git repository whose data/rotor.csv DVC tracks, pushed to a local DVC remote."""
    (repo / "data").mkdir(parents=True)
    remote.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _dvc(repo, "remote", "add", "-d", "local", str(remote))
    rows = "".join(f"R{i:03d},{55 + i * 0.7:.1f}\n" for i in range(5))
    (repo / "data" / "rotor.csv").write_text("rotor,temperature_c\n" + rows)
    _dvc(repo, "add", "-q", "data/rotor.csv")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "rotor temperatures")
    _dvc(repo, "push", "-q")
    return repo


def _retrained_model(work: Path) -> Path:
    """Version 2 of the digits classifier: the same logistic regression, more regularised."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=2000, C=0.1).fit(x, y)
    path = work / "digits-logreg-v2.onnx"
    path.write_bytes(to_onnx(model, x[:1], target_opset=17, options={"zipmap": False}).SerializeToString())
    return path
