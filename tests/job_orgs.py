"""Two organisations for compute-to-data tests: Acme offers datasets for compute, Beta trains on them.

One devchain, two real node processes (and, when asked, a separate ``agora worker`` process
sharing Acme's queue), the offerings registered through Acme's API, each side adding the other
as a peer, and the agreements negotiated through Beta's API. Everything a job test needs to
submit a job and follow it to its end, and to collect everything the consumer can read of it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests import services
from training_jobs import bundle as bundles
from training_jobs.datasets import digits_npz
from training_jobs.spec import load_spec

EXAMPLES = services.REPO / "examples" / "jobs"
FINAL = ("COMPLETED", "FAILED", "REJECTED", "CANCELLED")


@dataclass
class JobOrgs:
    acme: services.Org  # the provider
    beta: services.Org  # the consumer
    offerings: dict[str, str]  # name → offering id on Acme
    agreements: dict[str, str]  # name → agreement id
    digits: Path  # the digits dataset Acme offers
    worker_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def job_orgs(
    root: Path,
    offerings: dict[str, dict[str, Any]],
    agreements: dict[str, tuple[str, str]],
    *,
    files: dict[str, Path] | None = None,
    workers: int = 1,
    worker_process: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[JobOrgs]:
    """Acme offering ``offerings`` (name → extra metadata; the digits dataset unless ``files``
    names another file), Beta holding ``agreements`` (name → (offering name, access mode)).

    ``workers`` job threads run in Acme's ``agora serve``; ``worker_process`` > 0 starts an
    ``agora worker --concurrency N`` beside it.
    """
    from contracts.devchain import DevChainServer

    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    node_env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
        **(env or {}),
    }
    provider = services.start_node(
        root / "acme", name="Acme Wind", AGORA_JOBS_WORKERS=str(workers), **node_env
    )
    consumer = services.start_node(root / "beta", name="Beta Analytics", **node_env)
    worker: subprocess.Popen[bytes] | None = None
    worker_log = (root / "worker.log").open("wb")
    if worker_process:
        worker = subprocess.Popen(
            [services.AGORA, "worker", "--concurrency", str(worker_process)],
            env=provider.env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    try:
        acme, beta = services.Org(provider), services.Org(consumer)
        digits = digits_npz(root / "digits.npz")
        ids = {
            name: register(acme, name, (files or {}).get(name, digits), extra)
            for name, extra in offerings.items()
        }
        assert acme.api("POST", "/participants", json={"url": consumer.url}).status_code == 201
        assert beta.api("POST", "/participants", json={"url": provider.url}).status_code == 201
        agreed = {key: agree(acme, beta, ids[name], mode) for key, (name, mode) in agreements.items()}
        yield JobOrgs(acme, beta, ids, agreed, digits, worker.pid if worker else None)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        worker_log.close()
        provider.stop()
        consumer.stop()
        chain.stop()


def register(acme: services.Org, name: str, path: Path, extra: dict[str, Any]) -> str:
    media = "application/x-npz" if path.suffix == ".npz" else "text/csv"
    metadata = {"name": name, "title": f"Digits {name}", "media_type": media, **extra}
    with path.open("rb") as f:
        r = acme.api(
            "POST",
            "/offerings",
            data={"metadata": json.dumps(metadata)},
            files={"file": (path.name, f, "application/octet-stream")},
        )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def agree(acme: services.Org, beta: services.Org, offering_id: str, mode: str, provider_url: str = "") -> str:
    """Beta negotiates ``mode`` on Acme's offering; ``provider_url``: Acme's public URL when it
    is not the node's own port (a node behind a recording proxy)."""
    r = beta.api(
        "POST",
        "/negotiations",
        json={
            "offering_id": offering_id,
            "provider": provider_url or acme.node.url,
            "purpose": "research",
            "access_mode": mode,
        },
    )
    assert r.status_code == 201, r.text
    negotiation = poll(
        lambda: beta.api("GET", f"/negotiations/{r.json()['id']}").json(), ("FINALIZED", "TERMINATED")
    )
    assert negotiation["state"] == "FINALIZED", negotiation
    return str(negotiation["agreement_id"])


def poll(read: Callable[[], dict[str, Any]], done: tuple[str, ...], timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value["state"] in done:
            return value
        assert time.monotonic() < deadline, f"still {value['state']}: {value.get('reason')}"
        time.sleep(0.3)


def submit(
    beta: services.Org, acme: services.Org, agreement: str, bundle_dir: Path, spec_text: str
) -> httpx.Response:
    spec = load_spec(spec_text, "job.yaml")
    spec.agreement, spec.provider = agreement, acme.node.url
    packed = bundles.pack(bundle_dir)
    spec.code.digest = bundles.digest(packed)
    body = {
        "spec": spec.model_dump(mode="json", exclude_none=True, exclude={"code": {"bundle"}}),
        "bundle": base64.b64encode(packed).decode(),
    }
    return beta.api("POST", "/jobs", json=body)


def run_job(
    beta: services.Org,
    acme: services.Org,
    agreement: str,
    bundle_dir: Path,
    spec_text: str,
    timeout: float = 240,
) -> dict[str, Any]:
    r = submit(beta, acme, agreement, bundle_dir, spec_text)
    assert r.status_code == 201, r.text
    return poll(lambda: beta.api("GET", f"/jobs/{r.json()['id']}").json(), FINAL, timeout)


def bundle(
    tmp_path: Path, name: str, code: str, files: dict[str, str] | None = None, **spec: Any
) -> tuple[Path, str]:
    """A bundle whose train.py is ``code`` (plus ``files``), and its job spec (small limits)."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "train.py").write_text(code)
    for file_name, text in (files or {}).items():
        (directory / file_name).write_text(text)
    resources = {
        "cpu_seconds": 60,
        "memory": "512MiB",
        "wall_time": "20s",
        "max_output": "1MiB",
        **spec.pop("resources", {}),
    }
    doc = {
        "name": name,
        "code": {"bundle": ".", "entrypoint": "train.py"},
        "resources": resources,
        "output": {"format": "sklearn", "path": "model.joblib"},
        "onnx": {"input_shape": [1, 64]},
        **spec,
    }
    return directory, json.dumps(doc)


@dataclass(frozen=True)
class Received:
    """Everything the consumer's side can read of one job through its node's API."""

    status: dict[str, Any]
    log_lines: list[dict[str, Any]]
    artifacts: dict[str, bytes]  # "onnx" / "native" → bytes, when the consumer may fetch them
    provenance: dict[str, Any]


def received(beta: services.Org, job_id: str) -> Received:
    status = beta.api("GET", f"/jobs/{job_id}").json()
    lines = beta.api("GET", f"/jobs/{job_id}/logs", params={"limit": 5000}).json().get("lines", [])
    artifacts, provenance = {}, {}
    for artifact in ("onnx", "native"):
        r = beta.api("GET", f"/jobs/{job_id}/result", params={"artifact": artifact})
        if r.status_code == 200:
            artifacts[artifact] = r.content
            doc = beta.api("GET", f"/jobs/{job_id}/result/provenance", params={"artifact": artifact})
            provenance[artifact] = doc.json() if doc.status_code == 200 else {"status": doc.status_code}
    return Received(status, lines, artifacts, provenance)
