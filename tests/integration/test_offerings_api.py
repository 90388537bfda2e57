"""The offerings API through Litestar's test client around the real app."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from kernel.audit import AuditEntry
from marketplace.models import Asset, Offering, OfferingVersion

META = {
    "title": "Turbine vibration",
    "kind": "dataset",
    "media_type": "text/csv",
    "keywords": ["vibration", "wind"],
    "license": "CC-BY-4.0",
    "access_modes": ["compute", "download"],
    "on_untrainable": "register-flagged",  # the files here are not training sets; that is not tested here
}


def upload(client, headers, data: bytes = b"a,b\n1,2\n", meta: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
    files = {
        "metadata": (None, json.dumps(META if meta is None else meta), "application/json"),
        "file": ("data.csv", data, "text/csv"),
    }
    return client.post("/api/v1/offerings", files=files, headers=headers, **kw)


def counts(runtime) -> tuple[int, int, int, int, int]:  # type: ignore[no-untyped-def]
    with Session(runtime.engine) as s:
        rows = tuple(
            s.exec(select(func.count()).select_from(m)).one()
            for m in (Offering, OfferingVersion, Asset, AuditEntry)
        )
    return (*rows, len(list(runtime.store.digests())))  # type: ignore[return-value]


def test_register_list_show_download(client, auth, runtime) -> None:
    data = b"t,x\n" + b"0,1\n" * 1000
    r = upload(client, auth("offerings:write"), data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["anchor"]["status"] == "PENDING"
    assert body["provider"] == runtime.address
    assert body["keywords"] == ["vibration", "wind"]

    listed = client.get("/api/v1/offerings", headers=auth("catalog:read")).json()
    assert [o["id"] for o in listed["items"]] == [body["id"]]

    shown = client.get(f"/api/v1/offerings/{body['id']}", headers=auth("catalog:read")).json()
    assert [v["version"] for v in shown["versions"]] == [1]

    got = client.get(f"/api/v1/offerings/{body['id']}/download", headers=auth("catalog:read"))
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["accept-ranges"] == "bytes"


def test_range_download_resumes(client, auth) -> None:
    data = bytes(range(256)) * 100
    oid = upload(client, auth(), data).json()["id"]
    part = client.get(f"/api/v1/offerings/{oid}/download", headers={**auth(), "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get(f"/api/v1/offerings/{oid}/download", headers={**auth(), "Range": "bytes=25000-"})
    assert tail.content == data[25000:]
    bad = client.get(f"/api/v1/offerings/{oid}/download", headers={**auth(), "Range": "bytes=999999-"})
    assert bad.status_code == 416
    assert bad.headers["content-type"] == "application/problem+json"


def test_same_bytes_stored_once(client, auth, runtime) -> None:
    a = upload(client, auth(), b"identical").json()
    b = upload(client, auth(), b"identical", meta={**META, "title": "Copy"}).json()
    assert a["sha256"] == b["sha256"] and a["id"] != b["id"]
    assert a["created"] is True and b["created"] is False
    offerings, versions, assets, _audits, objects = counts(runtime)
    assert (offerings, versions, assets, objects) == (2, 2, 1, 1)


def test_new_version(client, auth) -> None:
    oid = upload(client, auth(), b"v1").json()["id"]
    files = {"file": ("data.csv", b"v2 bytes", "text/csv")}
    r = client.post(f"/api/v1/offerings/{oid}/versions", files=files, headers=auth())
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    shown = client.get(f"/api/v1/offerings/{oid}", headers=auth()).json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    v1 = client.get(f"/api/v1/offerings/{oid}/download?version=1", headers=auth())
    assert v1.content == b"v1"
    same = client.post(
        f"/api/v1/offerings/{oid}/versions", files={"file": ("d", b"v2 bytes")}, headers=auth()
    )
    assert same.status_code == 400


def test_audit_log_records_changes(client, auth, runtime) -> None:
    oid = upload(client, auth(), b"audited").json()["id"]
    with Session(runtime.engine) as s:
        entries = s.exec(select(AuditEntry).where(AuditEntry.subject_id == oid)).all()
    assert [e.action for e in entries] == ["offering.create"]
    assert entries[0].actor == "operator"
    assert entries[0].details["size"] == len(b"audited")


@pytest.mark.parametrize(
    ("meta", "path", "status"),
    [
        ({**META, "colour": "blue"}, "metadata.colour", 400),
        ({k: v for k, v in META.items() if k != "title"}, "metadata.title", 400),
        ({**META, "title": ""}, "metadata.title", 400),
        ({**META, "kind": "spreadsheet"}, "metadata.kind", 400),
        ({**META, "media_type": "not a media type"}, "metadata.media_type", 400),
        ({**META, "access_modes": ["steal"]}, "metadata.access_modes.0", 400),
        ({**META, "access_modes": []}, "metadata.access_modes", 400),
        ({**META, "name": "Bad Name!"}, "metadata.name", 400),
    ],
)
def test_bad_metadata_is_refused_and_changes_nothing(client, auth, runtime, meta, path, status) -> None:
    before = counts(runtime)
    r = upload(client, auth(), b"some bytes", meta=meta)
    assert r.status_code == status, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/invalid-input")
    assert path in [e["path"] for e in problem["errors"]]
    assert counts(runtime) == before
    assert list(runtime.store.staging_dir.glob("*.part")) == []


def test_metadata_not_json(client, auth, runtime) -> None:
    before = counts(runtime)
    files = {"metadata": (None, "{not json"), "file": ("d.csv", b"x")}
    r = client.post("/api/v1/offerings", files=files, headers=auth())
    assert r.status_code == 400
    assert counts(runtime) == before


def test_empty_file(client, auth, runtime) -> None:
    before = counts(runtime)
    r = upload(client, auth(), b"")
    assert r.status_code == 400
    assert r.json()["errors"][0]["path"] == "file"
    assert counts(runtime) == before


def test_missing_parts(client, auth, runtime) -> None:
    before = counts(runtime)
    no_file = client.post("/api/v1/offerings", files={"metadata": (None, json.dumps(META))}, headers=auth())
    assert no_file.status_code == 400 and no_file.json()["errors"][0]["path"] == "file"
    no_meta = client.post("/api/v1/offerings", files={"file": ("d", b"x")}, headers=auth())
    assert no_meta.status_code == 400 and no_meta.json()["errors"][0]["path"] == "metadata"
    assert counts(runtime) == before


def test_wrong_content_type(client, auth) -> None:
    r = client.post("/api/v1/offerings", content=b"raw", headers={**auth(), "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["type"].endswith("/unsupported-media-type")


def test_duplicate_name_conflicts(client, auth, runtime) -> None:
    assert upload(client, auth(), b"one", meta={**META, "name": "vibration"}).status_code == 201
    before = counts(runtime)
    r = upload(client, auth(), b"two", meta={**META, "name": "vibration"})
    assert r.status_code == 409
    assert counts(runtime) == before, "the second object must not be left behind"


def test_upload_over_limit_is_413(settings_factory) -> None:
    from litestar.testing import TestClient

    from node import db
    from node.app import create_app
    from node.runtime import build_runtime

    settings = settings_factory(max_upload_bytes=1000)
    db.upgrade(settings.effective_database_url)
    runtime = build_runtime(settings)
    with TestClient(app=create_app(runtime)) as client:
        headers = {"Authorization": f"Bearer {runtime.issuer.issue(['admin'], 60)}"}
        before = counts(runtime)
        r = upload(client, headers, b"x" * 5000)
        assert r.status_code == 413
        assert r.json()["type"].endswith("/payload-too-large")
        assert counts(runtime) == before
        assert list(runtime.store.staging_dir.glob("*.part")) == []
    runtime.close()


def test_import_server_side_path(settings_factory, tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from node import db
    from node.app import create_app
    from node.runtime import build_runtime

    allowed = tmp_path / "exports"
    allowed.mkdir()
    (allowed / "data.csv").write_text("a\n1\n")
    (tmp_path / "secret.txt").write_text("not yours")
    (allowed / "link").symlink_to(tmp_path / "secret.txt")
    settings = settings_factory(import_dirs=[allowed])
    db.upgrade(settings.effective_database_url)
    runtime = build_runtime(settings)
    with TestClient(app=create_app(runtime)) as client:
        h = {"Authorization": f"Bearer {runtime.issuer.issue(['offerings:write'], 60)}"}
        ok = client.post(
            "/api/v1/offerings", json={"metadata": META, "path": str(allowed / "data.csv")}, headers=h
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["size"] == 4
        before = counts(runtime)
        for bad, status in [
            (str(allowed / ".." / "secret.txt"), 403),
            (str(allowed / "link"), 403),
            ("/etc/passwd", 403),
            ("relative/data.csv", 400),
            (str(allowed / "missing.csv"), 400),
            (str(allowed), 400),
        ]:
            r = client.post("/api/v1/offerings", json={"metadata": META, "path": bad}, headers=h)
            assert r.status_code == status, (bad, r.text)
            assert r.json()["errors"][0]["path"] == "path"
        extra = client.post(
            "/api/v1/offerings", json={"metadata": META, "path": "/x", "sneaky": 1}, headers=h
        )
        assert extra.status_code == 400
        assert counts(runtime) == before
    runtime.close()


def test_import_disabled_without_dirs(client, auth) -> None:
    r = client.post("/api/v1/offerings", json={"metadata": META, "path": "/etc/passwd"}, headers=auth())
    assert r.status_code == 403
    assert "AGORA_IMPORT_DIRS" in r.json()["detail"]


def test_pagination_is_stable(client, auth) -> None:
    ids = [
        upload(client, auth(), f"row {i}".encode(), meta={**META, "title": f"o{i}"}).json()["id"]
        for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/offerings", params=params, headers=auth()).json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    bad = client.get("/api/v1/offerings", params={"cursor": "garbage!"}, headers=auth())
    assert bad.status_code == 400
    too_many = client.get("/api/v1/offerings", params={"limit": 100000}, headers=auth())
    assert too_many.status_code == 400


def test_filter_by_kind(client, auth) -> None:
    upload(client, auth(), b"data")
    upload(client, auth(), b"model", meta={**META, "kind": "model", "media_type": "application/onnx"})
    models = client.get("/api/v1/offerings", params={"kind": "model"}, headers=auth()).json()["items"]
    assert [o["kind"] for o in models] == ["model"]


def test_unknown_offering_is_404_problem(client, auth) -> None:
    r = client.get("/api/v1/offerings/nope", headers=auth())
    assert r.status_code == 404
    assert r.json()["type"].endswith("/not-found")
    assert client.get("/api/v1/nothing-here", headers=auth()).status_code == 404


def test_participants_lists_self(client, auth, runtime) -> None:
    rows = client.get("/api/v1/participants", headers=auth("catalog:read")).json()
    assert rows[0]["address"] == runtime.address and rows[0]["is_self"] is True


def test_the_dashboard_counts_every_own_offering(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        assert upload(client, auth(), data=f"a\n{i}\n".encode()).status_code == 201
    assert upload(client, auth(), data=b"model", meta={**META, "kind": "model"}).status_code == 201
    assert runtime.catalog.counts(runtime.address) == {
        "offerings": 4,
        "datasets": 3,
        "models": 1,
        "anchored": 0,
    }
    client.cookies.set("agora_ui_token", runtime.issuer.issue(["catalog:read"], 600))
    page = client.get("/ui/").text
    assert "<dt>Datasets</dt><dd>3</dd>" in page and "<dt>Models</dt><dd>1</dd>" in page
