"""Organisations for federated-learning tests: one coordinator and several providers, each a
real node process on loopback, all on one devchain.

Each provider registers its share of the digits (IID or non-IID) as an offering for
federated learning; the coordinator adds every provider as a peer (and they it) and
negotiates a federate agreement with each through its API. :func:`run` then creates and
starts a federation from a spec and follows it to its end.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests import services
from tests.job_orgs import agree, register
from training_jobs import bundle as bundles
from training_jobs.datasets import digits_partitions

EXAMPLE = services.REPO / "examples" / "federation" / "digits-cnn"
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
NAMES = ("Acme Wind", "Gamma Grid", "Delta Rail", "Epsilon Air", "Zeta Sea")


@dataclass
class FlOrgs:
    coordinator: services.Org
    providers: list[services.Org]
    agreements: list[str]
    partitions: list[Path]
    chain: Any
    root: Path
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def fl_orgs(
    root: Path,
    providers: int = 3,
    *,
    iid: bool = True,
    policies: dict[int, dict[str, Any]] | None = None,
    hostile: dict[int, str] | None = None,
    env: dict[str, str] | None = None,
    proxied: bool = False,
) -> Iterator[FlOrgs]:
    """``providers`` provider nodes (``hostile``: index → ``scale`` | ``flip``, a test-only node
    that poisons its updates, see tests/federation/hostile_node.py) and a coordinator.
    ``proxied``: each node behind a :class:`~tests.federation.wire.RecordingProxy`, its public URL
    (``extra["proxies"]``: address → proxy), so a test can count or hold what reaches it."""
    from contracts.devchain import DevChainServer
    from tests.federation.wire import RecordingProxy

    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    node_env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
        "AGORA_JOBS_WORKERS": "0",
        **(env or {}),
    }
    nodes: list[services.LiveNode] = []
    restarted: list[services.LiveNode] = []
    proxies: dict[str, RecordingProxy] = {}
    fronts: dict[Path, RecordingProxy] = {}

    def start(home: Path, name: str, **kw: Any) -> services.LiveNode:
        if not proxied:
            return services.start_node(home, name=name, **kw)
        port = services.free_port()
        fronts[home] = RecordingProxy(port)
        return services.start_node(home, name=name, port=port, AGORA_PUBLIC_URL=fronts[home].url, **kw)

    def url(org: services.Org) -> str:
        return fronts[org.node.home].url if proxied else org.node.url

    try:
        coordinator = services.Org(start(root / "coordinator", "Beta Analytics", **node_env))
        nodes.append(coordinator.node)
        orgs = []
        for index in range(providers):
            mode = (hostile or {}).get(index)
            serve = [sys.executable, "-m", "tests.federation.hostile_node"] if mode else None
            extra_env = {"HOSTILE_UPDATE": mode} if mode else {}
            node = start(root / f"provider-{index + 1}", NAMES[index], serve=serve, **node_env, **extra_env)
            nodes.append(node)
            orgs.append(services.Org(node))
        partitions = digits_partitions(root / "data", providers, iid=iid)
        agreements = []
        for index, (org, path) in enumerate(zip(orgs, partitions, strict=True)):
            extra: dict[str, Any] = {
                "access_modes": ["federate"],
                "policy": {"template": "provide-access"},
                **((policies or {}).get(index) or {}),
            }
            offering = register(org, f"digits-share-{index + 1}", path, extra)
            assert coordinator.api("POST", "/participants", json={"url": url(org)}).status_code == 201
            assert org.api("POST", "/participants", json={"url": url(coordinator)}).status_code == 201
            agreements.append(agree(org, coordinator, offering, "federate", url(org)))
        proxies.update({org.address: fronts[org.node.home] for org in [coordinator, *orgs] if proxied})
        yield FlOrgs(
            coordinator,
            orgs,
            agreements,
            partitions,
            chain,
            root,
            {"env": node_env, "restarted": restarted, "proxies": proxies},
        )
    finally:
        for node in [*nodes, *restarted]:  # restarted: nodes started again during the test
            node.stop()
        for proxy in fronts.values():
            proxy.stop()
        chain.stop()


def kill(org: services.Org) -> None:
    """SIGKILL: no shutdown, nothing flushed — a crash."""
    org.node.proc.kill()
    org.node.proc.wait(10)


def restart(orgs: FlOrgs, org: services.Org, name: str) -> None:
    """Start ``org``'s node again on its home and port (after :func:`kill`)."""
    front = orgs.extra["proxies"].get(org.address)
    public = {"AGORA_PUBLIC_URL": front.url} if front else {}
    node = services.start_node(org.node.home, name=name, port=org.node.port, **orgs.extra["env"], **public)
    org.node = node
    orgs.extra["restarted"].append(node)


def spec(orgs: FlOrgs, **overrides: Any) -> dict[str, Any]:
    """The example federation spec over ``orgs``' agreements, with ``overrides``."""
    document: dict[str, Any] = yaml.safe_load((EXAMPLE / "federation.yaml").read_text())
    document["providers"] = [{"agreement": a} for a in orgs.agreements]
    document.update(overrides)
    return document


def create(orgs: FlOrgs, document: dict[str, Any], bundle_dir: Path = EXAMPLE) -> dict[str, Any]:
    packed = bundles.pack(bundle_dir)
    document = {k: v for k, v in document.items()}
    document["model"] = {k: v for k, v in document["model"].items() if k not in ("bundle", "initial_weights")}
    r = orgs.coordinator.api(
        "POST", "/federations", json={"spec": document, "bundle": base64.b64encode(packed).decode()}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def run(orgs: FlOrgs, document: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Create, start and follow a federation; its record, with ``rounds``."""
    fed = create(orgs, document)
    assert fed["state"] == "READY", fed
    started = orgs.coordinator.api("POST", f"/federations/{fed['id']}/start")
    assert started.status_code == 200, started.text
    return follow(orgs, fed["id"], timeout)


def follow(orgs: FlOrgs, federation_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        fed = orgs.coordinator.api("GET", f"/federations/{federation_id}").json()
        if fed["state"] in FINAL:
            fed["rounds_detail"] = orgs.coordinator.api("GET", f"/federations/{federation_id}/rounds").json()
            return dict(fed)
        assert time.monotonic() < deadline, f"federation still {fed['state']}: {fed['reason']}"
        time.sleep(0.3)


def accuracy_curve(fed: dict[str, Any]) -> list[float]:
    """The example-weighted held-out accuracy of the global model after each round."""
    return [float(r["metrics"]["accuracy"]) for r in fed["rounds_detail"][1:] if "accuracy" in r["metrics"]]
