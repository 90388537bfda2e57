"""Compute-to-data between two organisations' nodes on one chain: a consumer's code trains on
the provider's data in the provider's bubblewrap sandbox; the provider verifies the model,
translates it to ONNX and notarizes the lineage; the consumer fetches and verifies it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.job_orgs import EXAMPLES, FINAL, job_orgs, poll, run_job, submit
from tests.job_orgs import bundle as hostile

BROKEN_CSV = "a,b,label\n1,x,0\n"  # not numbers: the provider's own dataset cannot be trained on


@pytest.fixture(scope="module")
def orgs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[services.Org, services.Org, dict[str, str]]]:
    """Acme (provider of the digits dataset, compute only) and Beta with compute agreements."""
    root = tmp_path_factory.mktemp("jobs")
    broken = root / "broken.csv"
    broken.write_text(BROKEN_CSV)
    compute = {"access_modes": ["compute"]}
    once = {"template": "n-times-usage", "params": {"count": 1}}
    offerings = {
        # the hostile jobs' tests read the job's own output: this offering releases it all
        "digits": {**compute, "policy": {"template": "provide-access"}, "job_logs": "full"},
        "digits-limited": {**compute, "policy": once},
        "digits-open": {
            "access_modes": ["compute", "download"],
            "policy": {"template": "provide-access"},
            "allow_native_release": True,
        },
        "digits-closed": {"access_modes": ["compute", "download"], "policy": {"template": "provide-access"}},
        "broken": {**compute, "policy": once},
    }
    agreements = {name: (name, "compute") for name in offerings}
    agreements["download"] = ("digits-open", "download")
    with job_orgs(root, offerings, agreements, files={"broken": broken}, worker_process=2) as world:
        world.acme.node.worker_pid = world.worker_pid  # type: ignore[attr-defined]
        yield world.acme, world.beta, world.agreements


def test_sklearn_job_end_to_end(
    orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path
) -> None:
    acme, beta, agreements = orgs
    spec_text = (EXAMPLES / "digits-sklearn" / "job.yaml").read_text()
    job = run_job(beta, acme, agreements["digits"], EXAMPLES / "digits-sklearn", spec_text)
    assert job["state"] == "COMPLETED", job
    assert [h["state"] for h in job["history"]] == [
        "QUEUED",
        "PROVISIONING",
        "RUNNING",
        "VERIFYING",
        "TRANSLATING",
        "COMPLETED",
    ]
    metrics = job["result"]["metrics"]
    assert metrics["holdout_rows"] == 359  # 20 % of 1,797 rows, kept back by the provider's node
    assert metrics["onnx_accuracy"] > 0.9 and "native_accuracy" not in metrics
    assert metrics["max_abs_diff"] <= 1e-4 and metrics["probe_inputs"] == 64
    reported = job["result"]["job_metrics"]
    assert list(reported) == ["train_loss", "train_accuracy", "n_train", "n_features", "seed", "seconds"]
    assert reported["n_train"] == 1438 and reported["train_accuracy"] > 0.9
    assert (
        job["result"]["onnx_check"]["rewritten_by_node"]
        and job["result"]["onnx_check"]["memorized_rows"] == 0
    )

    # the provider's log holds the job's own output and the node's steps
    lines = beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]
    assert any(line["stage"] == "node" and "held back by the node" in line["line"] for line in lines)

    # the ONNX model, checked against the signed sha256 and the chain by Beta's node, is the node's
    onnx_bytes = beta.api("GET", f"/jobs/{job['id']}/result")
    assert onnx_bytes.status_code == 200, onnx_bytes.text
    artifact = job["result"]["artifacts"]["onnx"]
    assert hashlib.sha256(onnx_bytes.content).hexdigest() == artifact["sha256"]
    import onnx

    released = onnx.load_model_from_string(onnx_bytes.content)
    assert released.producer_name == "agora" and [o.name for o in released.graph.output] == [
        "label",
        "probabilities",
    ]
    # the native model stays with the provider unless the job asked and the policy allows download
    native = beta.api("GET", f"/jobs/{job['id']}/result", params={"artifact": "native"})
    assert native.status_code == 403 and "stays with the provider" in native.json()["detail"]

    # agora jobs fetch + agora verify: the whole lineage, VERIFIED
    out = tmp_path / "model.onnx"
    beta.node.cli("jobs", "fetch", job["id"], "-o", str(out), "--url", beta.node.url, "--token", beta.token)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == artifact["sha256"]
    poll(lambda: _anchor_state(acme, artifact["asset_id"]), ("ATTESTED",), timeout=60)
    beta.node.cli("jobs", "fetch", job["id"], "-o", str(out), "--url", beta.node.url, "--token", beta.token)
    verdict = beta.node.cli("verify", str(out), "--json")
    report = json.loads(verdict.stdout)
    assert report["verified"], report
    root = report["asset"]
    assert root["kind"] == "onnx-model" and root["result"]["onnx_accuracy"] > 0.9
    (model,) = root["parents"]
    assert model["kind"] == "model" and model["result_hash"]
    assert sorted(p["kind"] for p in model["parents"]) == ["agreement", "dataset", "job-result"]

    # both nodes' web UI show the job, its progress and the provider's verdict
    for org in (acme, beta):
        cookies = {"agora_ui_token": org.token}
        listing = httpx.get(f"{org.node.url}/ui/jobs", cookies=cookies)
        assert listing.status_code == 200 and "digits-sklearn" in listing.text and "COMPLETED" in listing.text
        page = httpx.get(f"{org.node.url}/ui/jobs/{_own_id(org, job)}", cookies=cookies)
        assert page.status_code == 200 and "ONNX Runtime accuracy" in page.text and "[node]" in page.text

    # one flipped bit in the file: not verified
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 1
    out.write_bytes(bytes(data))
    assert beta.node.cli("verify", str(out), check=False).returncode == 1


def _own_id(org: services.Org, job: dict[str, Any]) -> str:
    """The job's id on ``org``'s node (each side has its own id for it)."""
    rows = org.api("GET", "/jobs").json()
    return str(next(r["id"] for r in rows if job["id"] in (r["id"], r["peer_pid"])))


def _anchor_state(acme: services.Org, asset_id: str) -> dict[str, Any]:
    doc = acme.api("GET", f"/provenance/{asset_id}").json()
    attestation = doc.get("attestation") or {}
    return {"state": attestation.get("status") or doc["anchor"]["status"]}


@pytest.mark.slow
def test_cnn_job_with_rerun_and_native_release(
    orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path
) -> None:
    acme, beta, agreements = orgs
    spec_text = (EXAMPLES / "digits-cnn" / "job.yaml").read_text()
    spec_text = spec_text.replace("rerun: false", "rerun: true").replace("epochs: 8", "epochs: 3")
    spec_text = spec_text.replace(
        "  metrics: metrics.json", "  metrics: metrics.json\n  release_native: true"
    )
    # the offering's compute terms allow native models, and its policy permits a download
    job = run_job(beta, acme, agreements["digits-open"], EXAMPLES / "digits-cnn", spec_text)
    assert job["state"] == "COMPLETED", job
    assert job["result"]["metrics"]["onnx_accuracy"] > 0.8
    lines = [line["line"] for line in beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]]
    assert any("the re-run produced the same model" in line for line in lines)
    native = beta.api("GET", f"/jobs/{job['id']}/result", params={"artifact": "native"})
    assert native.status_code == 200 and len(native.content) == job["result"]["artifacts"]["native"]["size"]


def test_a_native_model_is_released_only_when_the_offering_allows_it(
    orgs: tuple[services.Org, services.Org, dict[str, str]],
) -> None:
    acme, beta, agreements = orgs
    spec_text = (
        (EXAMPLES / "digits-sklearn" / "job.yaml").read_text().replace("max_iter: 1000", "max_iter: 100")
    )
    spec_text = spec_text.replace(
        "  metrics: metrics.json", "  metrics: metrics.json\n  release_native: true"
    )
    # the policy would permit a download, but the compute terms do not allow native models
    r = submit(beta, acme, agreements["digits-closed"], EXAMPLES / "digits-sklearn", spec_text)
    assert r.status_code == 201, r.text
    job = poll(lambda: beta.api("GET", f"/jobs/{r.json()['id']}").json(), FINAL)
    assert job["state"] == "REJECTED", "refused at submission, before any code runs"
    assert "allow_native_release" in job["reason"]
    native = beta.api("GET", f"/jobs/{job['id']}/result", params={"artifact": "native"})
    assert native.status_code in (403, 409) and native.status_code != 200


def test_refusals(orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path) -> None:
    acme, beta, agreements = orgs
    bundle, spec = hostile(tmp_path, "tiny", "print('hi')\n")
    # a download agreement does not run code
    r = submit(beta, acme, agreements["download"], bundle, spec)
    assert r.status_code == 400 and "not compute" in r.json()["detail"]
    # resources beyond what the provider allows: recorded as REJECTED with the reason
    _, greedy = hostile(tmp_path, "greedy", "print('hi')\n", resources={"wall_time": "30h"})
    r = submit(beta, acme, agreements["digits"], bundle, greedy)
    assert r.status_code == 400 or r.json()["state"] == "REJECTED", r.text
    # an OCI image cannot run in this provider's bubblewrap sandbox
    image_spec = json.loads(spec)
    image_spec["code"] = {
        "image": "registry.example/train@sha256:" + "a" * 64,
        "command": ["python", "/app/t.py"],
    }
    image_spec["agreement"] = agreements["digits"]
    r = beta.api("POST", "/jobs", json={"spec": image_spec})
    assert r.status_code == 201 and r.json()["state"] == "REJECTED", r.text
    assert "runs Python bundles, not OCI images" in r.json()["reason"]
    # a malformed spec changes nothing
    before = len(beta.api("GET", "/jobs").json())
    r = beta.api("POST", "/jobs", json={"spec": {"name": "BAD NAME"}, "bundle": ""})
    assert r.status_code == 400 and "name" in r.text
    assert len(beta.api("GET", "/jobs").json()) == before
    # the one use of the limited agreement is taken by the first job; the second is rejected
    first = run_job(beta, acme, agreements["digits-limited"], bundle, spec)
    assert first["state"] == "FAILED" and "model.joblib" in first["reason"]  # it wrote no model
    second = submit(beta, acme, agreements["digits-limited"], bundle, spec)
    assert second.status_code == 201 and second.json()["state"] == "REJECTED"
    assert "use count (1) is not less than 1" in second.json()["reason"]


def test_a_failure_on_the_providers_side_gives_the_use_back(
    orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path
) -> None:
    """A one-use agreement on a dataset the provider's node cannot read: the first job fails
    on the provider's side and the use is given back, so a second job still runs."""
    acme, beta, agreements = orgs
    bundle, spec = hostile(tmp_path, "fine", "print('never runs')\n")
    agreement = agreements["broken"]
    jobs = [run_job(beta, acme, agreement, bundle, spec) for _ in range(2)]
    for job in jobs:
        assert job["state"] == "FAILED", job  # the second one ran: it was not REJECTED
        assert job["reason"] == "the provider's dataset cannot be read as a training set"
        assert "could not convert" not in json.dumps(job)  # the detail stays in the provider's log
        lines = [line["line"] for line in beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]]
        assert any("the agreement's use was given back" in line for line in lines), lines
    usage = acme.api("GET", f"/agreements/{agreement}").json()["usage"]
    assert [u["granted"] for u in usage] == [True, False, True, False], usage
    assert all("use given back, 0 now taken" in u["reason"] for u in usage if not u["granted"])
    assert acme.api("GET", f"/agreements/{agreement}").json()["uses"] == 0


HOSTILE = {
    "network-loopback": (
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n",
        "ConnectionRefusedError",
    ),
    "network-other": (
        "import socket\nsocket.create_connection(('10.255.255.1', 80), timeout=3)\n",
        "status 1",
    ),
    "dns": ("import socket\nsocket.getaddrinfo('example.com', 80)\n", "gaierror"),
    "keystore": ("print(open('{home}/keystore.json').read())\n", "No such file or directory"),
    "database": ("print(open('{home}/agora.db', 'rb').read(10))\n", "No such file or directory"),
    "write-outside": ("open('/job/evil.py', 'w').write('x')\n", "Read-only file system"),
    "fork-bomb": ("import os\nwhile True:\n    os.fork()\n", "process limit"),
    "memory-bomb": ("x = []\nwhile True:\n    x.append(bytearray(64 * 1024 * 1024))\n", "memory"),
    "disk-fill": (
        "import os\nfor i in range(100000):\n    open(f'/out/f{{i}}', 'wb').write(os.urandom(1 << 16))\n",
        "output",
    ),
    "wall-time": ("import time\ntime.sleep(60)\n", "wall time"),
    # one file over the cap: the file-size limit stops the write itself
    "output-over-cap": ("open('/out/model.joblib', 'wb').write(b'x' * (2 << 20))\n", "File too large"),
    "output-symlink": ("import os\nos.symlink('/etc/passwd', '/out/model.joblib')\n", "symlink"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_jobs_fail_and_the_node_keeps_serving(
    orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path, attack: str
) -> None:
    acme, beta, agreements = orgs
    code, expected = HOSTILE[attack]
    with services.listening() as port:
        bundle, spec = hostile(
            tmp_path, attack, code.format(port=port, home=acme.node.home), resources={"wall_time": "6s"}
        )
        job = run_job(beta, acme, agreements["digits"], bundle, spec)
    log = [line["line"] for line in beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]]
    assert job["state"] == "FAILED", (job, log)
    assert expected in job["reason"] or expected in "\n".join(log), (job["reason"], log[-8:])
    assert httpx.get(f"{acme.node.url}/health", timeout=5).status_code == 200
    assert not (acme.node.home / "evil.py").exists()


def test_cancel_a_running_job(
    orgs: tuple[services.Org, services.Org, dict[str, str]], tmp_path: Path
) -> None:
    acme, beta, agreements = orgs
    bundle, spec = hostile(
        tmp_path,
        "sleeper",
        "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n",
        resources={"wall_time": "5m"},
    )
    r = submit(beta, acme, agreements["digits"], bundle, spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    poll(lambda: beta.api("GET", f"/jobs/{job_id}").json(), ("RUNNING",), timeout=60)
    assert beta.api("POST", f"/jobs/{job_id}/cancel").status_code == 200
    job = poll(lambda: beta.api("GET", f"/jobs/{job_id}").json(), FINAL, timeout=30)
    assert job["state"] == "CANCELLED", job  # not the five minutes the job would have slept
    log = [line["line"] for line in beta.api("GET", f"/jobs/{job_id}/logs").json()["lines"]]
    assert any("cancelled" in line for line in log), log


def test_serve_pool_and_agora_worker_share_the_queue(
    orgs: tuple[services.Org, services.Org, dict[str, str]],
) -> None:
    acme, beta, agreements = orgs
    spec_text = (
        (EXAMPLES / "digits-sklearn" / "job.yaml").read_text().replace("max_iter: 1000", "max_iter: 200")
    )
    submitted = [
        submit(beta, acme, agreements["digits"], EXAMPLES / "digits-sklearn", spec_text) for _ in range(3)
    ]
    assert all(r.status_code == 201 for r in submitted)
    jobs = [poll(lambda r=r: beta.api("GET", f"/jobs/{r.json()['id']}").json(), FINAL) for r in submitted]
    assert [j["state"] for j in jobs] == ["COMPLETED"] * 3, [j["reason"] for j in jobs]
    takers = []
    for job in jobs:
        taken = [h["reason"] for h in job["history"] if h["state"] == "PROVISIONING"]
        assert len(taken) == 1, job["history"]  # each job run once, by one worker
        takers.append(taken[0])
    worker_pid = acme.node.worker_pid  # type: ignore[attr-defined]
    assert any(f":{worker_pid}/" in t for t in takers), takers
