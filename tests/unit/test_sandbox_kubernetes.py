"""Kubernetes sandbox: the manifests' guarantees, and ``run()`` against a fake API server on loopback.

The fake server records what the client POSTs and DELETEs and answers the Job's status, the
pod list and the pod log as a scenario dictates, so the whole create → follow → delete cycle
runs through the real ``kubernetes`` client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from kernel.errors import ConfigurationError
from training_jobs.sandbox import ImageRejected, Limits, Mount, SandboxRun
from training_jobs.sandbox.kubernetes import KubernetesSandbox

IMAGE = "registry.example/trainer@sha256:" + "cd" * 32
NS = "agora-jobs"


@dataclass
class FakeApi:
    """State of the fake API server: what was created and deleted, and how the Job ends."""

    job_status: dict[str, Any] = field(default_factory=lambda: {"succeeded": 1})
    container_state: dict[str, Any] = field(default_factory=dict)
    log: str = "epoch 1\nepoch 2\n"
    polls_before_end: int = 2
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    delete_params: list[str] = field(default_factory=list)
    polls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with api.lock:
                api.created.append(body)
            self.reply(201, body)

        def do_DELETE(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            params = self.rfile.read(length).decode() if length else ""
            with api.lock:
                api.deleted.append(url.path)
                api.delete_params.append(url.query + params)
            self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/version/":
                self.reply(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
            elif path.startswith(f"/apis/batch/v1/namespaces/{NS}/jobs/") and path.endswith("/status"):
                name = path.split("/")[-2]
                with api.lock:
                    api.polls += 1
                    ended = api.polls > api.polls_before_end
                status = api.job_status if ended else {"active": 1}
                self.reply(200, {"kind": "Job", "metadata": {"name": name}, "status": status})
            elif path == f"/api/v1/namespaces/{NS}/pods":
                state = api.container_state or {"running": {}}
                pod = {
                    "metadata": {"name": "job-pod-1"},
                    "status": {"containerStatuses": [{"name": "job", "state": state}]},
                }
                self.reply(200, {"kind": "PodList", "items": [pod]})
            elif path == f"/api/v1/namespaces/{NS}/pods/job-pod-1/log":
                self.reply(200, api.log, "text/plain")
            else:
                self.reply(404, {"kind": "Status", "status": "Failure", "code": 404})

    return Handler


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def server(api: FakeApi) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    job = tmp_path / "jobs" / "j1"
    for sub in ("data", "code", "out"):
        (job / sub).mkdir(parents=True)
    return tmp_path


def make_run(volume: Path, **overrides: Any) -> SandboxRun:
    job = volume / "jobs" / "j1"
    fields: dict[str, Any] = {
        "command": ["python", "/job/train.py"],
        "mounts": [Mount(job / "data", "/data"), Mount(job / "code", "/job")],
        "output_dir": job / "out",
        "env": {"SEED": "1"},
        "limits": Limits(memory_bytes=1024**3, wall_seconds=120.5, tmp_bytes=128 * 1024**2),
        "image": IMAGE,
        "name": "Train Job 7",
    }
    fields.update(overrides)
    return SandboxRun(**fields)


def sandbox(volume: Path, host: str = "http://127.0.0.1:9") -> KubernetesSandbox:
    return KubernetesSandbox(
        volume_claim="agora-jobs-pvc", volume_root=volume, namespace=NS, host=host, poll_seconds=0.05, cpus=2
    )


# -- manifests --------------------------------------------------------------------------------


def test_job_manifest_guarantees(volume: Path) -> None:
    _, job = sandbox(volume).manifests(make_run(volume))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == "train-job-7"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 121
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == {"agora.job": "train-job-7"}
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert not pod["hostNetwork"] and not pod["hostPID"] and not pod["hostIPC"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65534
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "/job/train.py"]
    assert {"name": "SEED", "value": "1"} in container["env"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    limits = container["resources"]["limits"]
    assert limits["memory"] == str(1024**3)
    assert limits["cpu"] == "2"
    assert int(limits["ephemeral-storage"]) >= 128 * 1024**2
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"] == {
        "name": "job-volume",
        "mountPath": "/data",
        "subPath": "jobs/j1/data",
        "readOnly": True,
    }
    assert mounts["/job"]["readOnly"] is True and mounts["/job"]["subPath"] == "jobs/j1/code"
    assert mounts["/out"]["readOnly"] is False and mounts["/out"]["subPath"] == "jobs/j1/out"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["job-volume"]["persistentVolumeClaim"] == {"claimName": "agora-jobs-pvc"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": str(128 * 1024**2)}


def test_network_policy_denies_everything(volume: Path) -> None:
    policy, job = sandbox(volume).manifests(make_run(volume))
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"] == {"matchLabels": job["spec"]["template"]["metadata"]["labels"]}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]


def test_unpinned_image_and_paths_off_the_volume_are_refused(volume: Path, tmp_path_factory: Any) -> None:
    with pytest.raises(ImageRejected):
        sandbox(volume).manifests(make_run(volume, image="trainer:latest"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ConfigurationError, match="not on the shared job volume"):
        sandbox(volume).manifests(make_run(volume, mounts=[Mount(elsewhere, "/data")]))
    with pytest.raises(ConfigurationError, match="whole job volume"):
        sandbox(volume).manifests(make_run(volume, mounts=[Mount(volume, "/data")]))


# -- run() against the fake API server --------------------------------------------------------------


def created_kinds(api: FakeApi) -> list[str]:
    return [obj["kind"] for obj in api.created]


def assert_cleaned_up(api: FakeApi) -> None:
    job = next(o for o in api.created if o["kind"] == "Job")
    policy = next(o for o in api.created if o["kind"] == "NetworkPolicy")
    assert f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}" in api.deleted
    assert (
        f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{policy['metadata']['name']}"
        in api.deleted
    )
    assert any("Background" in p for p in api.delete_params)


def test_run_succeeds_streams_logs_and_cleans_up(api: FakeApi, server: str, volume: Path) -> None:
    lines: list[str] = []
    outcome = sandbox(volume, server).run(make_run(volume), on_output=lines.append)
    assert outcome.ok and outcome.exit_code == 0
    assert outcome.reason == "exited with status 0"
    assert created_kinds(api) == ["NetworkPolicy", "Job"]  # the policy exists before the pod can
    assert lines == ["epoch 1", "epoch 2"]
    assert_cleaned_up(api)


def test_run_reports_a_failed_container(api: FakeApi, server: str, volume: Path) -> None:
    api.job_status = {
        "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    api.container_state = {"terminated": {"exitCode": 3, "reason": "Error"}}
    outcome = sandbox(volume, server).run(make_run(volume))
    assert not outcome.ok
    assert outcome.exit_code == 3
    assert outcome.reason == "exited with status 3"
    assert_cleaned_up(api)


def test_run_reports_an_oom_kill(api: FakeApi, server: str, volume: Path) -> None:
    api.job_status = {"failed": 1}
    api.container_state = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    outcome = sandbox(volume, server).run(make_run(volume))
    assert not outcome.ok and outcome.killed_by == "memory"
    assert outcome.reason == "killed: memory limit of 1 GiB exceeded"


def test_run_reports_the_deadline(api: FakeApi, server: str, volume: Path) -> None:
    api.job_status = {
        "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}],
    }
    outcome = sandbox(volume, server).run(make_run(volume))
    assert not outcome.ok and outcome.killed_by == "wall"
    assert outcome.reason == "killed: wall time of 120.5 s exceeded"
    assert_cleaned_up(api)


def test_cancel_deletes_the_job(api: FakeApi, server: str, volume: Path) -> None:
    api.polls_before_end = 10_000
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    outcome = sandbox(volume, server).run(make_run(volume), cancel=cancel)
    timer.join()
    assert outcome.reason == "cancelled" and outcome.killed_by == "cancelled" and not outcome.ok
    assert_cleaned_up(api)


def test_output_over_the_cap_deletes_the_job(api: FakeApi, server: str, volume: Path) -> None:
    api.polls_before_end = 10_000
    (volume / "jobs" / "j1" / "out" / "big.bin").write_bytes(b"x" * 4096)
    outcome = sandbox(volume, server).run(make_run(volume, limits=Limits(max_output_bytes=1024)))
    assert outcome.killed_by == "output"
    assert outcome.reason == "killed: output exceeded 1 KiB"
    assert_cleaned_up(api)


def test_check_fails_without_an_api_server(volume: Path) -> None:
    from training_jobs.sandbox import SandboxUnavailable

    with pytest.raises(SandboxUnavailable, match="does not answer"):
        sandbox(volume, "http://127.0.0.1:9").check()
