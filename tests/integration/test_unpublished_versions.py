"""A version that is not published (its reject-on-failure suite is still running, or failed)
is offered to no one: not in the catalog, not in negotiation terms, and not downloadable."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.test_quality_roles import upload

DATA = b"machine,temperature,fault\n" + b"".join(f"m{i},{40 + i % 7},{i % 2}\n".encode() for i in range(40))
SUITE = [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "temperature"}}]


def test_an_unpublished_version_is_not_downloaded(client: Any, auth: Any) -> None:
    r = upload(client, auth, DATA, access_modes=["download"], expectations=SUITE, on_failure="reject")
    assert r.status_code == 201, r.text
    offering = r.json()
    assert offering["quality_status"] == "validating"
    r = client.get(f"/api/v1/offerings/{offering['id']}/download", headers=auth("catalog:read"))
    assert r.status_code == 404, r.text
    assert "is not published (being validated against its expectation suite)" in r.json()["detail"]
    r = client.get(f"/api/v1/offerings/{offering['id']}/download?version=1", headers=auth("catalog:read"))
    assert r.status_code == 404, r.text
    catalog = client.get("/api/v1/catalog", headers=auth("catalog:read")).json()["items"]
    assert offering["id"] not in json.dumps(catalog)
    # without a suite the same bytes are published at once and download
    r = upload(client, auth, DATA, name="plain", access_modes=["download"])
    assert r.status_code == 201, r.text
    r = client.get(f"/api/v1/offerings/{r.json()['id']}/download", headers=auth("catalog:read"))
    assert r.status_code == 200 and r.content == DATA
