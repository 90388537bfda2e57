"""Expectation suites on real nodes: a version is validated beside the notary (registration
does not wait), its result anchored as a child of the version on the chain, and published,
withheld or flagged as the offering's ``on_failure`` says; a version whose suite cannot run is
``error`` with the reason and can be validated again."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.job_orgs import agree

SUITE = {
    "name": "turbines",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "temp"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "temp", "min_value": -40, "max_value": 60},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "site", "value_set": ["north", "south"]},
        },
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10}},
    ],
}


def csv_bytes(rows: int, *, hot: int = 0, west: int = 0, salt: str = "") -> bytes:
    out = io.StringIO()
    out.write("reading,temp,site\n")
    for i in range(rows):
        temp = 95.0 if i < hot else 10.0 + (i % 7)
        site = "west" if i < west else ("north" if i % 2 else "south")
        out.write(f"r{salt}{i},{temp},{site}\n")
    return out.getvalue().encode()


GOOD = csv_bytes(60)
BAD = csv_bytes(60, hot=5, west=3, salt="b")


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Org, services.Org, Any]]:
    from contracts.devchain import DevChainServer

    root = tmp_path_factory.mktemp("quality")
    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
    }
    acme = services.start_node(root / "acme", name="Acme Wind", **env)
    beta = services.start_node(root / "beta", name="Beta Analytics", **env)
    try:
        a, b = services.Org(acme), services.Org(beta)
        assert a.api("POST", "/participants", json={"url": beta.url}).status_code == 201
        assert b.api("POST", "/participants", json={"url": acme.url}).status_code == 201
        yield a, b, chain
    finally:
        acme.stop()
        beta.stop()
        chain.stop()


def register(org: services.Org, name: str, data: bytes, **quality: Any) -> dict[str, Any]:
    meta = {
        "name": name,
        "title": f"Turbine readings {name}",
        "media_type": "text/csv",
        "access_modes": ["download"],
        "policy": {"template": "provide-access"},
        "schema": {
            "columns": [
                {"name": "reading", "type": "string", "role": "id"},
                {"name": "temp", "type": "float", "unit": "degC"},
                {"name": "site", "type": "category"},
            ]
        },
        "expectations": SUITE,
        **quality,
    }
    r = org.api("POST", "/offerings", files={"metadata": (None, json.dumps(meta)), "file": ("d.csv", data)})
    assert r.status_code == 201, r.text
    return dict(r.json())


def add_version(org: services.Org, offering_id: str, data: bytes) -> dict[str, Any]:
    r = org.api("POST", f"/offerings/{offering_id}/versions", files={"file": ("d.csv", data)})
    assert r.status_code == 201, r.text
    return dict(r.json())


def version_of(org: services.Org, offering_id: str, number: int) -> dict[str, Any]:
    detail = org.api("GET", f"/offerings/{offering_id}").json()
    return dict(next(v for v in detail["versions"] if v["version"] == number))


def settled(org: services.Org, offering_id: str, number: int, timeout: float = 120) -> dict[str, Any]:
    return dict(
        services.wait_until(
            lambda: (v := version_of(org, offering_id, number))["quality_status"] != "validating" and v,
            f"version {number} of {offering_id} to be validated",
            timeout=timeout,
        )
    )


def catalog_entry(org: services.Org, offering_id: str) -> dict[str, Any] | None:
    items = org.api("GET", "/catalog", params={"limit": 200}).json()["items"]
    return next((i for i in items if i["offering_id"] == offering_id), None)


def test_passing_then_failing_version_under_reject(orgs: tuple[services.Org, services.Org, Any]) -> None:
    acme, beta, chain = orgs
    created = register(acme, "reject", GOOD)
    assert created["quality_status"] == "validating"  # registration did not wait for the suite
    oid = created["id"]

    v1 = settled(acme, oid, 1)
    assert v1["quality_status"] == "passed" and v1["published"] is True
    assert v1["quality"]["failed"] == 0 and v1["quality"]["passed"] == 4
    assert v1["quality"]["failing_columns"] == []
    assert v1["profile"]["rows"] == 60
    assert v1["validation_sha256"].startswith("sha256:")
    entry = services.wait_until(lambda: catalog_entry(acme, oid), "the passed version in the catalog")
    assert entry["version"] == 1

    # the result is anchored as a child of the version, on the chain itself
    anchored = services.wait_until(
        lambda: (v := version_of(acme, oid, 1))["validation"]["status"] == "ANCHORED" and v,
        "the validation's anchor",
    )
    validation_id, dataset_id = anchored["validation"]["asset_id"], anchored["anchor"]["asset_id"]
    doc = acme.api("GET", f"/provenance/{validation_id}").json()
    assert doc["asset"]["kind"] == "validation"
    assert doc["asset"]["sha256"] == anchored["validation_sha256"].removeprefix("sha256:")
    assert [p["asset"]["id"] for p in doc["parents"]] == [dataset_id]
    assert doc["asset"]["metadata"]["success"] is True and doc["asset"]["metadata"]["version"] == 1
    from contracts.chain import open_chain
    from contracts.registry import Registry

    onchain = Registry(
        open_chain(chain.url, data_dir=acme.node.home / "verify", account=None, registry=chain.registry)
    )
    record = onchain.get_anchor(bytes.fromhex(validation_id[2:]))
    assert record is not None and [p.hex() for p in record.parents] == [dataset_id[2:]]

    # a failing version 2 is never offered: version 1 stays current everywhere
    added = add_version(acme, oid, BAD)
    assert added["quality_status"] == "validating" and added["version"] == 2
    v2 = settled(acme, oid, 2)
    assert v2["quality_status"] == "failed" and v2["published"] is False
    assert v2["quality"]["failing_columns"] == ["temp", "site"]
    assert (v2["quality"]["passed"], v2["quality"]["failed"]) == (2, 2)
    detail = acme.api("GET", f"/offerings/{oid}").json()
    assert detail["version"] == 1 and detail["sha256"] == v1["sha256"]
    assert catalog_entry(acme, oid)["version"] == 1  # type: ignore[index]
    agreement_id = agree(acme, beta, oid, "download")
    agreement = beta.api("GET", f"/agreements/{agreement_id}").json()
    assert v1["sha256"].removeprefix("sha256:") in json.dumps(agreement)
    assert v2["sha256"].removeprefix("sha256:") not in json.dumps(agreement)
    shown = acme.node.cli("offerings", "show", oid, "--url", acme.node.url, "--token", acme.token).stdout
    assert (
        "quality: failed, suite turbines: 2 passed, 2 failed of 4; failing columns: temp, site (not published)"
        in shown
    )
    assert "quality: passed, suite turbines: 4 passed, 0 failed of 4 (published)" in shown


def test_a_first_version_failing_under_reject_is_never_listed(
    orgs: tuple[services.Org, services.Org, Any],
) -> None:
    acme, _, _ = orgs
    oid = register(acme, "reject-first", BAD)["id"]
    v1 = settled(acme, oid, 1)
    assert v1["quality_status"] == "failed" and v1["published"] is False
    assert catalog_entry(acme, oid) is None
    listed = acme.api("GET", "/offerings", params={"limit": 500}).json()["items"]
    assert next(o for o in listed if o["id"] == oid)["quality_status"] == "failed"


def test_publish_flagged_publishes_a_failing_version_with_its_failing_columns(
    orgs: tuple[services.Org, services.Org, Any],
) -> None:
    acme, _, _ = orgs
    oid = register(acme, "flagged", BAD, on_failure="publish-flagged")["id"]
    v1 = settled(acme, oid, 1)
    assert v1["quality_status"] == "failed" and v1["published"] is True
    assert v1["quality"]["failing_columns"] == ["temp", "site"]
    failing = {r["type"]: r for r in v1["quality"]["results"] if not r["success"]}
    assert failing["expect_column_values_to_be_between"]["unexpected_count"] == 5
    assert failing["expect_column_values_to_be_in_set"]["unexpected_count"] == 3
    assert catalog_entry(acme, oid)["version"] == 1  # type: ignore[index]
    shown = acme.node.cli("offerings", "show", oid, "--url", acme.node.url, "--token", acme.token).stdout
    assert "failing columns: temp, site (published)" in shown


def test_a_suite_that_cannot_run_is_error_and_can_be_validated_again(
    orgs: tuple[services.Org, services.Org, Any], tmp_path: Path
) -> None:
    acme, _, _ = orgs
    broken = {
        "name": "broken",
        "expectations": [
            {"type": "expect_column_max_to_be_between", "kwargs": {"column": "temp", "min_value": "cold"}}
        ],
    }
    oid = register(acme, "broken", GOOD, expectations=broken)["id"]
    v1 = settled(acme, oid, 1)
    assert v1["quality_status"] == "error" and v1["published"] is False
    assert "expectation 1 (expect_column_max_to_be_between): min_value" in v1["quality"]["error"]
    assert "cold" not in v1["quality"]["error"]

    again = acme.node.cli("offerings", "validate", oid, "--url", acme.node.url, "--token", acme.token).stdout
    assert f"version 1 of {oid} is validating" in again
    assert settled(acme, oid, 1)["quality_status"] == "error"

    passed = register(acme, "passed-once", csv_bytes(30, salt="p"))["id"]
    assert settled(acme, passed, 1)["quality_status"] == "passed"
    profiled_again = acme.api("POST", f"/offerings/{passed}/versions/1/validate")  # its profile only
    assert profiled_again.status_code == 202, profiled_again.text
    assert profiled_again.json()["quality_status"] == "passed" and profiled_again.json()["published"] is True
    assert acme.api("POST", f"/offerings/{passed}/versions/99999999999/validate").status_code == 404
    writer = acme.node.token("catalog:read")
    denied = httpx.post(
        f"{acme.node.url}/api/v1/offerings/{oid}/versions/1/validate",
        headers={"Authorization": f"Bearer {writer}"},
    )
    assert denied.status_code == 403


def test_a_node_killed_during_a_validation_takes_the_version_again(tmp_path: Path) -> None:
    import psutil

    node = services.start_node(tmp_path / "crash", AGORA_ANCHOR_MAX_DELAY="0.2")
    try:
        org = services.Org(node)
        oid = register(org, "crash", csv_bytes(400_000, salt="c"))["id"]

        def running_child() -> list[psutil.Process]:
            children = psutil.Process(node.proc.pid).children(recursive=True)
            return [c for c in children if "quality.run" in " ".join(c.cmdline())]

        (child,) = services.wait_until(running_child, "the validation process", timeout=60, interval=0.05)
        node.proc.kill()  # no shutdown: the transaction that records the outcome never ran
        node.proc.wait()
        assert version_of_offline(node, oid) == "validating"
        child.wait(10)  # the run notices its parent is gone and ends
        restarted = services.start_node(node.home, port=node.port, AGORA_ANCHOR_MAX_DELAY="0.2")
        node = restarted
        org = services.Org(node)
        v1 = settled(org, oid, 1)
        assert v1["quality_status"] == "passed" and v1["published"] is True
        assert v1["profile"]["rows"] == 400_000
    finally:
        node.stop()


def version_of_offline(node: services.LiveNode, offering_id: str) -> str:
    """The version's status read from the stopped node's database."""
    import sqlite3

    with sqlite3.connect(node.home / "agora.db") as db:
        (status,) = db.execute(
            "SELECT quality_status FROM offering_version WHERE offering_id = ? AND version = 1",
            (offering_id,),
        ).fetchone()
    return str(status)


# In process: the worker's order, versions without a stored schema, a profile made again -------


PEOPLE_SCHEMA = {
    "columns": [
        {"name": "patient_id", "type": "integer"},
        {"name": "salary", "type": "integer"},
    ]
}


def people_csv(rows: int, salt: int = 0) -> bytes:
    lines = ["patient_id,salary"] + [f"{770000 + salt * 1000 + i},{40000 + 7 * i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def in_process(client: Any, auth: dict[str, str], name: str, data: bytes, **quality: Any) -> str:
    meta = {
        "name": name,
        "title": f"People {name}",
        "media_type": "text/csv",
        "access_modes": ["download"],
        "policy": {"template": "provide-access"},
        **quality,
    }
    files = {"metadata": (None, json.dumps(meta)), "file": ("p.csv", data, "text/csv")}
    r = client.post("/api/v1/offerings", files=files, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def stored(runtime: Any, offering_id: str, number: int) -> Any:
    from sqlmodel import Session, select

    from marketplace.models import OfferingVersion

    with Session(runtime.engine) as session:
        return session.exec(
            select(OfferingVersion).where(
                OfferingVersion.offering_id == offering_id, OfferingVersion.version == number
            )
        ).one()


def profiled(runtime: Any, offering_id: str, number: int, name: str) -> dict[str, Any]:
    profile = stored(runtime, offering_id, number).profile
    assert profile and "columns" in profile, profile
    return dict(next(c for c in profile["columns"] if c["name"] == name))


def test_the_worker_takes_versions_round_robin_across_offerings(
    settings_factory: Any, tmp_path: Path
) -> None:
    from tests.integration.test_notarization import in_process_node

    with in_process_node(settings_factory, quality_worker=False, anchor_max_delay=0) as (rt, client, auth):
        busy = in_process(client, auth, "busy", people_csv(12))
        for n in (2, 3):
            path = tmp_path / f"v{n}.csv"
            path.write_bytes(people_csv(12, salt=n))
            with rt.store.stage_file(path) as staged:
                rt.offerings.add_version(busy, staged, "test")
        other = in_process(client, auth, "other", people_csv(12, salt=9))
        ids = {(o, n): stored(rt, o, n).id for o, n in ((busy, 1), (busy, 2), (busy, 3), (other, 1))}
        assert rt.validations.waiting(10) == [ids[busy, 1], ids[other, 1], ids[busy, 2], ids[busy, 3]]
        assert rt.validations.run_once() == 1  # the oldest: busy's first version
        assert stored(rt, busy, 1).profile["rows"] == 12
        late = in_process(client, auth, "late", people_csv(12, salt=5))
        third = stored(rt, late, 1).id
        # busy was served last: the others' versions come first, even the one registered after busy's
        assert rt.validations.waiting(10) == [ids[other, 1], third, ids[busy, 2], ids[busy, 3]]


def test_a_version_stored_without_a_schema_is_profiled_with_the_inferred_roles(settings_factory: Any) -> None:
    from kernel.db import transaction
    from tests.integration.test_notarization import in_process_node

    with in_process_node(settings_factory, quality_worker=False, anchor_max_delay=0) as (rt, client, auth):
        oid = in_process(client, auth, "old", people_csv(30))
        with transaction(rt.engine) as session:  # as a version registered before schemas were kept
            version = stored(rt, oid, 1)
            version.schema_doc, version.profile = None, None
            session.add(version)
        assert rt.validations.run_once() == 1
        doc = stored(rt, oid, 1).schema_doc
        assert doc["source"] == "inferred"
        assert {c["name"]: c["role"] for c in doc["columns"]} == {"patient_id": "id", "salary": "feature"}
        patient = profiled(rt, oid, 1, "patient_id")
        assert patient["role"] == "id" and "min" not in patient and "mean" not in patient
        assert profiled(rt, oid, 1, "salary")["max"] == 40000 + 7 * 29


def test_declaring_an_id_makes_every_profile_again(settings_factory: Any) -> None:
    from tests.integration.test_notarization import in_process_node

    suite = {"name": "s", "expectations": [SUITE["expectations"][3]]}  # at least 10 rows
    with in_process_node(settings_factory, quality_worker=False, anchor_max_delay=0) as (rt, client, auth):
        oid = in_process(client, auth, "ids", people_csv(30), schema=PEOPLE_SCHEMA, expectations=suite)
        while rt.validations.run_once():
            pass
        assert stored(rt, oid, 1).quality_status == "passed"
        assert profiled(rt, oid, 1, "patient_id")["min"] == 770000  # declared a feature: its figures show

        columns = [{**PEOPLE_SCHEMA["columns"][0], "role": "id"}, PEOPLE_SCHEMA["columns"][1]]
        rt.offerings.update(
            oid, {"quality_declared": {"schema": {"columns": columns}, "expectations": suite}}, "t"
        )
        version = stored(rt, oid, 1)
        assert version.profile is None and version.schema_doc["source"] == "declared"
        assert rt.validations.run_once() == 1
        patient = profiled(rt, oid, 1, "patient_id")
        assert patient["role"] == "id" and "min" not in patient
        version = stored(rt, oid, 1)
        assert version.quality_status == "passed" and version.published is True

        # a passed version's profile made again on request: its status and publication stay
        again = client.post(f"/api/v1/offerings/{oid}/versions/1/validate", headers=auth)
        assert again.status_code == 202, again.text
        assert again.json()["quality_status"] == "passed" and again.json()["published"] is True
        assert stored(rt, oid, 1).profile is None
        assert rt.validations.run_once() == 1
        assert profiled(rt, oid, 1, "salary")["min"] == 40000
        assert stored(rt, oid, 1).quality_status == "passed"


def test_a_profile_made_with_roles_changed_during_its_run_is_not_kept(settings_factory: Any) -> None:
    from tests.integration.test_notarization import in_process_node

    with in_process_node(settings_factory, quality_worker=False, anchor_max_delay=0) as (rt, client, auth):
        oid = in_process(client, auth, "race", people_csv(30), schema=PEOPLE_SCHEMA)
        columns = [{**PEOPLE_SCHEMA["columns"][0], "role": "id"}, PEOPLE_SCHEMA["columns"][1]]
        run = rt.validations._run

        def declared_during_the_run(*args: Any) -> dict[str, Any]:
            output = dict(run(*args))  # profiled with patient_id a feature
            rt.offerings.update(oid, {"quality_declared": {"schema": {"columns": columns}}}, "t")
            return output

        rt.validations._run = declared_during_the_run
        assert rt.validations.run_once() == 1
        assert stored(rt, oid, 1).profile is None  # the stale profile was not recorded: it waits again
        rt.validations._run = run
        assert rt.validations.run_once() == 1
        patient = profiled(rt, oid, 1, "patient_id")
        assert patient["role"] == "id" and "min" not in patient
