"""Kubernetes: each run is a ``batch/v1`` Job with a deny-all NetworkPolicy.

**Storage contract.** A node cannot bind-mount its own paths into a cluster's pods, so the
node's job directory tree must live on a volume the cluster can mount too:

* ``volume_claim`` names a PersistentVolumeClaim (in ``namespace``) holding that volume,
  ``ReadWriteMany`` when the node and the pods are on different machines;
* ``volume_root`` is where the node itself sees the root of that volume;
* every :class:`Mount` source and the run's ``output_dir`` must lie under ``volume_root``;
  each becomes a ``volumeMount`` of the claim with ``subPath`` = its path relative to
  ``volume_root``, read-only for mounts, writable only for ``/out``.

A mount outside ``volume_root`` is a node configuration error, raised before anything is
created.

**What each guarantee rests on.** Pod: ``runAsNonRoot``, uid/gid 65534, seccomp
``RuntimeDefault``, no service-account token, no host namespaces, ``restartPolicy: Never``.
Container: ``allowPrivilegeEscalation: false``, ``readOnlyRootFilesystem: true``, all
capabilities dropped, limits (and equal requests) for cpu, memory and ephemeral storage,
``/tmp`` an ``emptyDir`` with ``sizeLimit``. Job: ``backoffLimit: 0``,
``activeDeadlineSeconds`` = wall time, ``ttlSecondsAfterFinished``. Network: a
NetworkPolicy selecting ``agora.job=<name>`` with both policy types and no rules denies
all ingress and egress (the cluster's network plugin must enforce NetworkPolicies).

**Not enforceable from the API**: a per-pod process limit (set the kubelet's
``podPidsLimit``) and a CPU-seconds budget (the CPU *rate* is limited, and wall time caps
the total). The total of ``/out`` is polled on the shared volume like the other sandboxes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kernel.errors import ConfigurationError

from .base import (
    OUTPUT_POLL_SECONDS,
    LogStreamer,
    OutputCallback,
    Sandbox,
    SandboxOutcome,
    SandboxRun,
    SandboxUnavailable,
    exit_reason,
    fmt_bytes,
    fmt_seconds,
    ignore_output,
    output_usage,
    refuse_channel,
    require_digest,
    sanitize_name,
)

SANDBOX_UID = 65534
LABEL = "agora.job"
CONTAINER = "job"
VOLUME = "job-volume"
JOB_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
EPHEMERAL_HEADROOM = 64 * 1024 * 1024  # container logs and writable layer bookkeeping


class KubernetesSandbox(Sandbox):
    """Runs jobs as Kubernetes Jobs (see the module docstring for the storage contract).

    Connection: ``host`` (an API server URL, e.g. a test server; ``token`` optional), else
    in-cluster configuration, else ``kubeconfig`` (default ``~/.kube/config``).
    """

    kind = "kubernetes"

    def __init__(
        self,
        *,
        volume_claim: str,
        volume_root: Path | str,
        namespace: str = "default",
        host: str | None = None,
        token: str | None = None,
        kubeconfig: str | None = None,
        cpus: float = 1.0,
        ttl_seconds_after_finished: int = 600,
        poll_seconds: float = 1.0,
        schedule_grace_seconds: float = 60.0,
    ) -> None:
        self.volume_claim = volume_claim
        self.volume_root = Path(os.path.realpath(volume_root))
        self.namespace = namespace
        self.host = host
        self.token = token
        self.kubeconfig = kubeconfig
        self.cpus = cpus
        self.ttl = ttl_seconds_after_finished
        self.poll_seconds = poll_seconds
        self.schedule_grace = schedule_grace_seconds
        self._api: Any = None
        self._checked = False

    # -- connection -----------------------------------------------------------------------

    def _client(self) -> Any:
        if self._api is not None:
            return self._api
        client, config = _k8s()
        cfg = client.Configuration()
        if self.host:
            cfg.host = self.host
            if self.token:
                cfg.api_key = {"authorization": self.token}
                cfg.api_key_prefix = {"authorization": "Bearer"}
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                try:
                    config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
                except (config.ConfigException, OSError) as exc:
                    raise SandboxUnavailable(f"kubernetes: no cluster configuration: {exc}") from None
        self._api = client.ApiClient(cfg)
        return self._api

    def check(self) -> None:
        """The API server answers ``/version``; cached."""
        if self._checked:
            return
        client, _ = _k8s()
        try:
            _json(client.VersionApi(self._client()).get_code(_request_timeout=10, _preload_content=False))
        except SandboxUnavailable:
            raise
        except Exception as exc:  # any transport or API error means "not usable"
            raise SandboxUnavailable(f"kubernetes: the API server does not answer: {exc}") from None
        self._checked = True

    # -- manifests ------------------------------------------------------------------------

    def _sub_path(self, path: Path, what: str) -> str:
        real = Path(os.path.realpath(path))
        try:
            rel = real.relative_to(self.volume_root)
        except ValueError:
            raise ConfigurationError(
                f"{what} {str(path)!r} is not on the shared job volume {str(self.volume_root)!r}"
            ) from None
        if rel == Path("."):
            raise ConfigurationError(f"{what} {str(path)!r} is the whole job volume, not a job's directory")
        return rel.as_posix()

    def manifests(self, run: SandboxRun, *, name: str | None = None) -> list[dict[str, Any]]:
        """[NetworkPolicy, Job] for ``run``, as the API server receives them (create in that order)."""
        image = require_digest(run.image)
        name = name or sanitize_name(run.name, 52)
        lim = run.limits
        labels = {LABEL: name}
        mounts: list[dict[str, Any]] = [
            {
                "name": VOLUME,
                "mountPath": m.target,
                "subPath": self._sub_path(m.source, "mount"),
                "readOnly": True,
            }
            for m in run.mounts
        ]
        out = self._sub_path(run.output_dir, "output directory")
        mounts.append({"name": VOLUME, "mountPath": "/out", "subPath": out, "readOnly": False})
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
        env = {**JOB_ENV, **run.env}
        resources = {
            "cpu": f"{self.cpus:g}",
            "memory": str(lim.memory_bytes),
            "ephemeral-storage": str(lim.tmp_bytes + EPHEMERAL_HEADROOM),
        }
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"{name}-deny-all", "namespace": self.namespace, "labels": labels},
            "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress", "Egress"]},
        }
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": max(1, math.ceil(lim.wall_seconds)),
                "ttlSecondsAfterFinished": self.ttl,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "hostNetwork": False,
                        "hostPID": False,
                        "hostIPC": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": SANDBOX_UID,
                            "runAsGroup": SANDBOX_UID,
                            "fsGroup": SANDBOX_UID,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": CONTAINER,
                                "image": image,
                                "command": list(run.command),
                                "workingDir": run.workdir,
                                "env": [{"name": k, "value": v} for k, v in env.items()],
                                "resources": {"limits": resources, "requests": dict(resources)},
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "privileged": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": [
                            {"name": VOLUME, "persistentVolumeClaim": {"claimName": self.volume_claim}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": str(lim.tmp_bytes)}},
                        ],
                    },
                },
            },
        }
        return [policy, job]

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        run: SandboxRun,
        *,
        on_output: OutputCallback = ignore_output,
        cancel: threading.Event | None = None,
    ) -> SandboxOutcome:
        """Create the policy and the Job, follow it to its end, and delete both; see :meth:`Sandbox.run`.
        No channel runs."""
        refuse_channel(self.kind, run)
        client, _ = _k8s()
        self.check()
        name = f"{sanitize_name(run.name, 40)}-{uuid.uuid4().hex[:10]}"
        policy, job = self.manifests(run, name=name)
        api = self._client()
        batch, net, core = client.BatchV1Api(api), client.NetworkingV1Api(api), client.CoreV1Api(api)
        started = time.monotonic()
        logs = _LogFollower(core, self.namespace, name, on_output)
        net.create_namespaced_network_policy(self.namespace, policy)
        try:
            batch.create_namespaced_job(self.namespace, job)
            logs.start()
            killed_by: str | None = "node"
            try:
                killed_by, reason, exit_code = self._follow(batch, core, run, name, started, cancel)
            finally:
                logs.stop()
                if killed_by is None:  # ended by itself: the log is complete, read it before deleting
                    logs.join(timeout=10)
        finally:
            with contextlib.suppress(client.ApiException):
                batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
            with contextlib.suppress(client.ApiException):
                net.delete_namespaced_network_policy(policy["metadata"]["name"], self.namespace)
        logs.join(timeout=5)
        return SandboxOutcome(
            ok=exit_code == 0 and killed_by is None,
            exit_code=exit_code,
            reason=reason,
            wall_seconds=time.monotonic() - started,
            killed_by=killed_by,
            log_truncated=logs.truncated,
        )

    def _follow(
        self,
        batch: Any,
        core: Any,
        run: SandboxRun,
        name: str,
        started: float,
        cancel: threading.Event | None,
    ) -> tuple[str | None, str, int | None]:
        """Poll the Job until it ends or we end it: (killed_by, reason, exit code)."""
        lim = run.limits
        deadline = started + lim.wall_seconds + self.schedule_grace
        wall_reason = f"killed: wall time of {fmt_seconds(lim.wall_seconds)} exceeded"
        next_output_check = started
        while True:
            job = _json(batch.read_namespaced_job_status(name, self.namespace, _preload_content=False))
            status = job.get("status") or {}
            conditions = {
                c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"
            }
            if status.get("succeeded") or "Complete" in conditions:
                return None, exit_reason(0), 0
            failed = conditions.get("Failed")
            if failed and failed.get("reason") == "DeadlineExceeded":
                return "wall", wall_reason, None
            if failed or status.get("failed"):
                return self._failure(core, name, failed or {}, lim.memory_bytes)
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                return "cancelled", "cancelled", None
            if now >= deadline:
                return "wall", wall_reason, None
            if now >= next_output_check:
                next_output_check = now + max(OUTPUT_POLL_SECONDS, self.poll_seconds)
                size, entries = output_usage(run.output_dir)
                if size > lim.max_output_bytes or entries > lim.max_output_files:
                    return "output", f"killed: output exceeded {fmt_bytes(lim.max_output_bytes)}", None
            if cancel is not None:
                cancel.wait(self.poll_seconds)
            else:
                time.sleep(self.poll_seconds)

    def _failure(
        self, core: Any, name: str, condition: dict[str, Any], memory: int
    ) -> tuple[str | None, str, int | None]:
        """Why a failed Job failed, from its pod's container state when the pod is still there."""
        selector = f"{LABEL}={name}"
        pods = _json(
            core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False)
        )
        for pod in pods.get("items") or []:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if not term:
                    continue
                code = term.get("exitCode")
                if term.get("reason") == "OOMKilled":
                    return "memory", f"killed: memory limit of {fmt_bytes(memory)} exceeded", None
                return None, exit_reason(code if isinstance(code, int) else None), code
        why = condition.get("message") or condition.get("reason") or "the Job failed"
        return None, f"failed: {why}", None


def _k8s() -> tuple[Any, Any]:
    """The ``kubernetes`` client and config modules, imported on first use (they are heavy).

    Typed as ``Any``: manifests are plain dicts, which the client serialises as they are.
    """
    from kubernetes import client, config

    return client, config


def _json(response: Any) -> dict[str, Any]:
    data = response.data
    result = json.loads(data.decode() if isinstance(data, bytes) else data)
    return result if isinstance(result, dict) else {}


class _LogFollower:
    """Streams the job pod's log to ``on_output`` (capped like every sandbox's log)."""

    def __init__(self, core: Any, namespace: str, name: str, on_output: OutputCallback) -> None:
        self._core, self._namespace, self._name, self._on_output = core, namespace, name, on_output
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="k8s-log", daemon=True)
        self.truncated = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _follow(self) -> None:
        client, _ = _k8s()
        while True:  # one more attempt after stop(): a short job may end before its log is read
            try:
                pods = _json(
                    self._core.list_namespaced_pod(
                        self._namespace, label_selector=f"{LABEL}={self._name}", _preload_content=False
                    )
                )
                items = pods.get("items") or []
                if items:
                    pod = items[0]["metadata"]["name"]
                    response = self._core.read_namespaced_pod_log(
                        pod, self._namespace, container=CONTAINER, follow=True, _preload_content=False
                    )
                    streamer = LogStreamer(response, self._on_output)
                    streamer.pump()
                    self.truncated = streamer.truncated
                    return
            except client.ApiException:
                pass  # the container has not started yet
            except Exception:  # a broken log stream must not fail the run
                return
            if self._stop.is_set():
                return
            self._stop.wait(0.5)
