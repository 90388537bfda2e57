"""What a validation and a profile leak of the rows: counted in every answer about the offering.

A dataset with a column of secret strings (each held by one row), a category value held by
k-1 rows, and an id column of distinctive numbers is validated against a suite built to make
GX collect them (a failing ``in_set`` and ``not_match_regex`` on the secrets, a failing
``distinct_values_to_be_in_set`` and ``values_to_be_unique`` on the category, the max of the
id column) under ``publish-flagged``, so it reaches the catalog. Then every answer is read:
the offerings API (list, detail), the catalog API (browse and full-text search), the DSP
catalog a peer gets, the provenance documents of the version and its validation, the UI's
catalog and offering pages, and the validation result object in the store. The control: the
version's own bytes hold every secret, so the counter does find them where they are.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from node.ui.csrf import SESSION_COOKIE

K = 10
SECRETS = [f"SECRET-{i:03d}-kestrel" for i in range(60)]
RARE = "Falcon-Rare"  # held by K-1 rows: never to be named
IDS = [918273645000 + i for i in range(60)]
ID_PATTERN = re.compile(r"(?<![0-9A-Za-z])9182736450\d\d(?![0-9A-Za-z])")
SUITE = {
    "name": "leaky",
    "expectations": [
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "codename", "value_set": ["nobody"]},
        },
        {"type": "expect_column_values_to_not_match_regex", "kwargs": {"column": "codename", "regex": "kes"}},
        {
            "type": "expect_column_distinct_values_to_be_in_set",
            "kwargs": {"column": "team", "value_set": ["common"]},
        },
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "team"}},
        {
            "type": "expect_column_most_common_value_to_be_in_set",
            "kwargs": {"column": "codename", "value_set": ["x"]},
        },
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "badge", "max_value": 5}},
        {"type": "expect_column_value_lengths_to_equal", "kwargs": {"column": "codename", "value": 3}},
    ],
}


def dataset() -> bytes:
    lines = ["badge,codename,team,score"]
    for i, (badge, secret) in enumerate(zip(IDS, SECRETS, strict=True)):
        team = RARE if i < K - 1 else "common"
        lines.append(f"{badge},{secret},{team},{i % 5}")
    return ("\n".join(lines) + "\n").encode()


def leaks(text: str) -> dict[str, int]:
    lowered = text.lower()
    found = {s: lowered.count(s.lower()) for s in SECRETS if s.lower() in lowered}
    if RARE.lower() in lowered:
        found[RARE] = lowered.count(RARE.lower())
    for match in ID_PATTERN.findall(text):
        found[match] = found.get(match, 0) + 1
    return found


def test_no_answer_about_a_validated_offering_holds_a_row(client, auth, runtime) -> None:
    meta = {
        "name": "leaky",
        "title": "Field agents",
        "media_type": "text/csv",
        "access_modes": ["download"],
        "policy": {"template": "provide-access"},
        "schema": {
            "columns": [
                {"name": "badge", "type": "integer", "role": "id"},
                {"name": "codename", "type": "string"},
                {"name": "team", "type": "category"},
                {"name": "score", "type": "integer"},
            ]
        },
        "expectations": SUITE,
        "on_failure": "publish-flagged",
    }
    data = dataset()
    files = {"metadata": (None, json.dumps(meta)), "file": ("agents.csv", data, "text/csv")}
    created = client.post("/api/v1/offerings", files=files, headers=auth("offerings:write"))
    assert created.status_code == 201, created.text
    oid = created.json()["id"]
    headers = auth("catalog:read")

    deadline = time.monotonic() + 120
    while True:
        detail = client.get(f"/api/v1/offerings/{oid}", headers=headers).json()
        version = detail["versions"][0]
        if version["quality_status"] != "validating" and version["validation"] is not None:
            break
        assert time.monotonic() < deadline, f"not validated: {version['quality_status']}"
        time.sleep(0.5)
    assert version["quality_status"] == "failed", version["quality"]
    assert version["quality"]["failed"] == 7  # every expectation failed: GX saw the values
    team = next(c for c in version["profile"]["columns"] if c["name"] == "team")
    assert team["top"] == [] and team["distinct"] == 2  # "common": 51 of 60 would count the rare rows
    runtime.notary.run_once(force=True)

    answers: dict[str, str] = {}
    answers["offerings list"] = client.get("/api/v1/offerings", headers=headers).text
    answers["offering detail"] = client.get(f"/api/v1/offerings/{oid}", headers=headers).text
    answers["catalog"] = client.get("/api/v1/catalog", headers=headers).text
    answers["catalog search"] = client.get("/api/v1/catalog", params={"q": "agents"}, headers=headers).text
    peer = "0x" + "42" * 20
    answers["DSP catalog"] = json.dumps(runtime.catalog.dcat_catalog(peer)[0])
    version = json.loads(answers["offering detail"])["versions"][0]
    for name, key in (
        ("version", version["anchor"]["asset_id"]),
        ("validation", version["validation"]["asset_id"]),
    ):
        answers[f"provenance of the {name}"] = client.get(f"/api/v1/provenance/{key}", headers=headers).text
    client.cookies.set(SESSION_COOKIE, runtime.issuer.issue(["catalog:read"], 600))
    answers["UI catalog"] = client.get("/ui/catalog").text
    page = client.get(f"/ui/offerings/{runtime.address}/{oid}")
    assert page.status_code == 200, page.text[:500]
    answers["UI offering page"] = page.text
    result_sha = version["validation_sha256"].removeprefix("sha256:")
    answers["stored validation result"] = b"".join(runtime.store.read(result_sha)).decode()

    assert (
        "leaky" in answers["DSP catalog"] and "Field agents" in answers["UI offering page"]
    )  # the offering is there
    found = {where: leaks(text) for where, text in answers.items()}
    assert {where: n for where, n in found.items() if n} == {}, found
    control = leaks(data.decode())
    assert len(control) == len(SECRETS) + 1 + len(IDS)  # the counter finds every secret where it is


def test_revalidating_is_bounded_and_refused_where_it_makes_no_sense(client, auth) -> None:
    meta = {"title": "A model", "kind": "model", "media_type": "application/octet-stream"}
    files = {"metadata": (None, json.dumps(meta)), "file": ("m.bin", b"\x00weights")}
    model = client.post("/api/v1/offerings", files=files, headers=auth("offerings:write")).json()["id"]
    write = auth("offerings:write")
    answers = {
        "a model": client.post(f"/api/v1/offerings/{model}/versions/1/validate", headers=write),
        "no such offering": client.post("/api/v1/offerings/nope/versions/1/validate", headers=write),
        "version 0": client.post(f"/api/v1/offerings/{model}/versions/0/validate", headers=write),
        "a huge version": client.post(f"/api/v1/offerings/{model}/versions/{2**70}/validate", headers=write),
        "no token": client.post(f"/api/v1/offerings/{model}/versions/1/validate"),
        "a read token": client.post(
            f"/api/v1/offerings/{model}/versions/1/validate", headers=auth("catalog:read")
        ),
    }
    statuses: dict[str, Any] = {k: r.status_code for k, r in answers.items()}
    assert statuses == {
        "a model": 400,
        "no such offering": 404,
        "version 0": 404,
        "a huge version": 404,
        "no token": 401,
        "a read token": 403,
    }, {k: r.text for k, r in answers.items()}
