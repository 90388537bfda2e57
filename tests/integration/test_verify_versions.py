"""Lineage across versions: a model trained on version 3 of a dataset, checked with
``agora verify``'s verifier against the embedded chain, names version 3, its DVC commit and its
validation result — each from metadata whose hash is on chain, so a record that claims another
version fails instead of printing it.

The dataset's versions are registered and validated by the node (its quality worker runs Great
Expectations); the job's lineage is queued by :class:`training_jobs.lineage.JobLineage`, as the
runner queues it when a job completes, and anchored by the node's notary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.cli import _print_report
from contracts.verify import AssetCheck, Verifier
from kernel.cli import console
from kernel.db import transaction
from kernel.hashing import sha256_bytes
from tests.integration.test_notarization import in_process_node
from training_jobs.lineage import JobLineage
from training_jobs.models import Job
from training_jobs.spec import JobSpec
from training_jobs.verification import AuditReport

SUITE = {
    "name": "turbines",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "rpm"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "rpm", "min_value": 0, "max_value": 40},
        },
        {"type": "expect_column_to_exist", "kwargs": {"column": "fault"}},
    ],
}
COMMIT = "abc1234def567890abc1234def567890abc12345"
MD5 = "0f343b0931126a20f133d67c2b018a3b"
AGREEMENT = "0x" + "ab" * 32
SPEC = {
    "name": "tiny",
    "agreement": AGREEMENT,
    "code": {"entrypoint": "train.py", "digest": "0" * 64},
    "output": {"format": "sklearn", "path": "model.joblib"},
    "onnx": {"input_shape": [1, 2]},
}
AUDIT = AuditReport(
    ok=True,
    reason="ok",
    tolerance=1e-4,
    onnx_accuracy=0.9,
    holdout_rows=20,
    probe_inputs=10,
    max_abs_diff=1e-6,
)


def _csv(rows: int, *, nulls: bool = False) -> bytes:
    lines = ["rpm,fault"] + [f"{'' if nulls and i % 5 == 0 else 10 + i % 7},{i % 2}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _offering(client: Any, auth: dict[str, str], name: str, on_failure: str, body: bytes) -> str:
    meta = {
        "title": name,
        "name": name,
        "kind": "dataset",
        "media_type": "text/csv",
        "access_modes": ["compute"],
        "schema": {
            "columns": [
                {"name": "rpm", "type": "float"},
                {"name": "fault", "type": "integer", "role": "label"},
            ]
        },
        "expectations": SUITE,
        "on_failure": on_failure,
    }
    r = client.post(
        "/api/v1/offerings",
        files={"metadata": (None, json.dumps(meta)), "file": ("d.csv", body)},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _version(rt: Any, tmp_path: Path, offering_id: str, body: bytes, source: dict[str, Any] | None) -> str:
    path = tmp_path / f"{sha256_bytes(body)}.csv"
    path.write_bytes(body)
    with rt.store.stage_file(path) as staged:
        rt.offerings.add_version(offering_id, staged, "test", source=source)
    return sha256_bytes(body)


def _train(rt: Any, offering_id: str, dataset_sha: str, tag: str) -> tuple[str, str]:
    """Queue a completed job's lineage on ``dataset_sha``; returns the model's asset id and sha256."""
    job = Job(
        id=f"urn:uuid:{tag}",
        role="provider",
        counterparty="0x" + "42" * 20,
        name="tiny",
        agreement_id=AGREEMENT,
        offering_id=offering_id,
        dataset_sha256=dataset_sha,
        code_digest="0" * 64,
        parameters_hash="1" * 64,
    )
    lineage = JobLineage(rt.address, job, JobSpec.model_validate(SPEC), "bubblewrap", "dataset")
    model_sha, onnx_sha = sha256_bytes(f"model {tag}".encode()), sha256_bytes(f"onnx {tag}".encode())
    with transaction(rt.engine) as session:
        lineage.queue(session, model_sha, onnx_sha, AUDIT)
    return lineage.ids(model_sha, onnx_sha)["model"], model_sha


def _anchor_all(rt: Any) -> None:
    while rt.notary.run_once(force=True):
        pass


def _by_kind(check: AssetCheck) -> dict[str, AssetCheck]:
    return {p.kind: p for p in check.parents}


def test_verify_names_the_dataset_version_its_dvc_commit_and_its_validation(
    settings_factory: Any, tmp_path: Path
) -> None:
    with in_process_node(settings_factory, anchor_max_delay=0) as (rt, client, auth):
        offering_id = _offering(client, auth, "turbines", "reject", _csv(30))
        _version(
            rt,
            tmp_path,
            offering_id,
            _csv(31),
            {
                "kind": "dvc",
                "repo": "/srv/r",
                "path": "data/t.csv",
                "rev": "main",
                "commit": "1" * 40,
                "md5": "2" * 32,
            },
        )
        source = {
            "kind": "dvc",
            "repo": "/srv/r",
            "path": "data/t.csv",
            "rev": "main",
            "commit": COMMIT,
            "md5": MD5,
        }
        v3 = _version(rt, tmp_path, offering_id, _csv(32), source)
        while rt.validations.run_once():
            pass
        model_id, model_sha = _train(rt, offering_id, v3, "11111111-1111-4111-8111-111111111111")
        _anchor_all(rt)

        doc = rt.provenance.document(model_id)
        report = Verifier(rt.chain()).verify(doc, "model", model_sha)
        assert report.verified, report.reason
        parents = _by_kind(report.root)
        assert set(parents) == {"dataset", "validation", "agreement", "job-result"}
        line = f"version 3 · dvc commit abc1234 (data/t.csv, md5 {MD5})"
        assert parents["dataset"].facts == [line]
        assert parents["validation"].facts == ["validation passed 3/3 expectations"]
        assert parents["job-result"].facts == [f"trained on {line}", "validation passed 3/3 expectations"]
        # the validation's own parent is the same dataset version
        assert [p.asset_id for p in parents["validation"].parents] == [parents["dataset"].asset_id]

        with console.capture() as captured:
            _print_report(report)
        printed = captured.get()
        assert f"lineage  {line}" in printed and "lineage  validation passed 3/3 expectations" in printed
        assert report.as_dict()["asset"]["parents"][0]["facts"] == parents[report.root.parents[0].kind].facts

        # a record claiming another version is refused, and prints nothing of it
        forged = json.loads(json.dumps(doc))
        dataset_doc = next(p for p in forged["parents"] if p["asset"]["kind"] == "dataset")
        dataset_doc["asset"]["metadata"]["version"] = 2
        lied = Verifier(rt.chain()).verify(forged, "model", model_sha)
        assert not lied.verified
        assert "does not match its anchored metadata hash" in (lied.reason or "")
        assert _by_kind(lied.root)["dataset"].facts == []


def test_a_model_on_a_flagged_version_names_its_failing_columns(
    settings_factory: Any, tmp_path: Path
) -> None:
    with in_process_node(settings_factory, anchor_max_delay=0) as (rt, client, auth):
        body = _csv(30, nulls=True)
        offering_id = _offering(client, auth, "flagged", "publish-flagged", body)
        while rt.validations.run_once():
            pass
        model_id, model_sha = _train(
            rt, offering_id, sha256_bytes(body), "22222222-2222-4222-8222-222222222222"
        )
        _anchor_all(rt)
        report = Verifier(rt.chain()).verify(rt.provenance.document(model_id), "model", model_sha)
        assert report.verified, report.reason
        parents = _by_kind(report.root)
        assert parents["dataset"].facts == ["version 1"]
        assert parents["validation"].facts == ["validation failed 2/3 expectations · failing columns rpm"]
        assert parents["job-result"].facts == [
            "trained on version 1",
            "validation failed 2/3 expectations · failing columns rpm",
        ]


def test_what_verify_prints_of_an_owners_metadata_is_one_bounded_line() -> None:
    """The owner chose these values (their hash is on chain): no terminal control sequence or
    second line gets through, and long values are cut."""
    from contracts.verify import lineage_facts

    metadata = {
        "version": "3\x1b[2J",
        "source": {"kind": "dvc", "commit": "abc1234\n", "path": "data/x.csv\x1b]0;owned\x07" + "p" * 500},
    }
    (line,) = lineage_facts("dataset", metadata)
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert line.startswith("version 3?[2J · dvc commit abc1234 (data/x.csv?]0;owned?")
    assert len(line) < 300
    (validation,) = lineage_facts("validation", {"success": False, "passed": 1, "evaluated": 3})
    assert validation == "validation failed 1/3 expectations"
    assert lineage_facts("model", {"version": 3}) == []
