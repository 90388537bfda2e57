"""Agora's side of bench/fl.py: a coordinator and N provider nodes as real processes on loopback.

Set up as ``tests/fl_orgs.py`` sets up the federation tests (one devchain; each provider
registers its digits partitions as offerings for federated learning; the coordinator and the
providers add each other as peers and negotiate a federate agreement per partition), with one
difference: each node's public URL is a port of the counting proxy (:mod:`_wire`, HTTP mode)
that forwards to the node, so every protocol message between the nodes crosses it and is
counted as it was on the socket. The bench's own API calls go to the nodes directly.

A federation is then created, started and followed with the test helpers of ``tests.fl_orgs``
(``create`` and ``follow``), and :class:`AgoraRun` keeps what the coordinator recorded (its
rounds with ``started_at``, ``ended_at`` and each contribution's ``train_seconds``) and what
the proxy counted while the federation ran.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _node import PySpy
from _wire import Exchange, Tap

from tests import fl_orgs, services
from tests.job_orgs import poll, register

NAMES = ("Beta Analytics", *fl_orgs.NAMES)


@dataclass
class AgoraNet:
    coordinator: services.Org
    providers: list[services.Org]
    public: dict[str, str]  # node address -> its public URL (the proxy)
    agreements: dict[str, list[str]]  # partitioning -> one agreement per provider
    tap: Tap
    chain: Any
    root: Path

    def orgs(self, partitioning: str) -> fl_orgs.FlOrgs:
        """The set-up as ``tests.fl_orgs`` hands it to its helpers."""
        return fl_orgs.FlOrgs(
            self.coordinator, self.providers, self.agreements[partitioning], [], self.chain, self.root
        )


@dataclass
class AgoraRun:
    federation: dict[str, Any]  # the coordinator's record, with rounds_detail
    started: float  # time.time() just before POST /federations/{id}/start
    finished: float  # when the bench saw it COMPLETED (after the final model's ONNX checks)
    exchanges: list[Exchange]


def say(text: str) -> None:
    """Progress, on stderr: the figures come at the end, on stdout."""
    print(text, file=sys.stderr, flush=True)


def when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _agree(provider: services.Org, coordinator: services.Org, offering: str, url: str) -> str:
    r = coordinator.api(
        "POST",
        "/negotiations",
        json={"offering_id": offering, "provider": url, "purpose": "research", "access_mode": "federate"},
    )
    if r.status_code != 201:
        raise RuntimeError(f"the negotiation was refused: {r.text}")
    done = poll(
        lambda: coordinator.api("GET", f"/negotiations/{r.json()['id']}").json(), ("FINALIZED", "TERMINATED")
    )
    if done["state"] != "FINALIZED":
        raise RuntimeError(f"the negotiation ended {done['state']}: {done.get('reason')}")
    return str(done["agreement_id"])


@contextmanager
def agora_net(root: Path, partitions: dict[str, list[Path]]) -> Iterator[AgoraNet]:
    """The nodes behind the proxy, with one federate agreement per provider and partitioning."""
    from contracts.devchain import DevChainServer

    count = len(next(iter(partitions.values())))
    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
        "AGORA_JOBS_WORKERS": "0",
    }
    ports = [(services.free_port(), services.free_port()) for _ in range(count + 1)]  # (public, node)
    tap = Tap({NAMES[i]: pair for i, pair in enumerate(ports)}, mode="http").start()
    nodes: list[services.LiveNode] = []
    try:
        for index, (public, port) in enumerate(ports):
            home = root / ("coordinator" if index == 0 else f"provider-{index}")
            url = f"http://127.0.0.1:{public}"
            nodes.append(services.start_node(home, name=NAMES[index], port=port, AGORA_PUBLIC_URL=url, **env))
        orgs = [services.Org(node) for node in nodes]
        public = {org.address: f"http://127.0.0.1:{p}" for org, (p, _) in zip(orgs, ports, strict=True)}
        coordinator, providers = orgs[0], orgs[1:]
        for org in providers:
            for a, b in ((coordinator, org), (org, coordinator)):
                r = a.api("POST", "/participants", json={"url": public[b.address]})
                if r.status_code != 201:
                    raise RuntimeError(f"adding the peer {public[b.address]} failed: {r.text}")
        agreements: dict[str, list[str]] = {}
        for name, paths in partitions.items():
            agreements[name] = []
            for index, (org, path) in enumerate(zip(providers, paths, strict=True)):
                extra = {"access_modes": ["federate"], "policy": {"template": "provide-access"}}
                offering = register(org, f"digits-{name}-{index + 1}", path, extra)
                agreements[name].append(_agree(org, coordinator, offering, public[org.address]))
        say(f"Agora: {len(nodes)} nodes serving, {sum(map(len, agreements.values()))} federate agreements")
        yield AgoraNet(coordinator, providers, public, agreements, tap, chain, root)
    finally:
        for node in nodes:
            node.stop()
        tap.stop()
        chain.stop()


def run_agora(net: AgoraNet, partitioning: str, profile: Path | None = None, **spec: Any) -> AgoraRun:
    """One federation from the example spec with ``spec`` overrides, followed to its end
    (with ``profile``, py-spy records the coordinator and the first provider meanwhile)."""
    orgs = net.orgs(partitioning)
    document = fl_orgs.spec(orgs, **spec)
    fed = fl_orgs.create(orgs, document)
    if fed["state"] != "READY":
        raise RuntimeError(f"the federation is {fed['state']}: {fed.get('reason')}")
    net.tap.take()  # what crossed before (negotiations, invitations) is not the rounds'
    started = time.time()
    r = net.coordinator.api("POST", f"/federations/{fed['id']}/start")
    if r.status_code != 200:
        raise RuntimeError(f"start refused: {r.text}")
    with contextlib.ExitStack() as spies:
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            for name, org in (("coordinator", net.coordinator), ("provider-1", net.providers[0])):
                spies.enter_context(PySpy(org.node.proc.pid, profile / f"{name}.txt", gil=True))
        done = fl_orgs.follow(orgs, fed["id"], timeout=1800)
    if done["state"] != "COMPLETED":
        raise RuntimeError(f"the federation ended {done['state']}: {done['reason']}")
    finished = time.time()
    exchanges, _ = net.tap.take()
    _name_parties(net, exchanges)
    done["detail"] = net.coordinator.api("GET", f"/federations/{fed['id']}").json()
    say(
        f"Agora {partitioning}: {fed['id']} {done['state']} in {finished - started:.1f} s, "
        f"{len(exchanges)} protocol messages counted"
    )
    return AgoraRun(federation=done, started=started, finished=finished, exchanges=exchanges)


def _name_parties(net: AgoraNet, exchanges: list[Exchange]) -> None:
    """The tap names a message's sender and recipient by the DIDs of its token (``iss``,
    ``aud``); the coordinator's records name providers by address: the DIDs become addresses."""
    from connector.dsp.identity import did_for_url

    addresses = {did_for_url(url): address for address, url in net.public.items()}
    for exchange in exchanges:
        for party in ("sender", "recipient"):
            did = exchange.message.get(party)
            if isinstance(did, str) and did in addresses:
                exchange.message[party] = addresses[did]


def wire(run: AgoraRun, numbers: set[int], members: int) -> dict[str, Any]:
    """What crossed the proxy in the training rounds ``numbers``: bytes and messages a round
    (mean), the safetensors bytes among them, bytes a round by message type, the HTTP statuses,
    and each round whose messages were not one round start and one update per provider (a
    repeated message is counted in the bytes)."""
    protocol = [e for e in run.exchanges if e.path.startswith("/dsp/federations/")]
    per_round = {n: [e for e in protocol if e.message.get("round") == n] for n in numbers}
    kinds = sorted({str(e.message.get("type")) for e in protocol})
    repeats = []
    if not any(k.startswith("SecAgg") for k in kinds):
        for n in sorted(numbers):
            sent = [str(e.message.get("type")) for e in per_round[n]]
            for kind in ("RoundStart", "RoundUpdate"):
                if sent.count(kind) != members:
                    times = [e.ended - e.started for e in per_round[n] if e.message.get("type") == kind]
                    slow = max(times, default=0.0)
                    repeats.append(f"round {n}: {sent.count(kind)} {kind} messages (slowest {slow:.2f} s)")
    return {
        "bytes": statistics.mean(sum(e.total for e in per_round[n]) for n in numbers),
        "blob_bytes": statistics.mean(
            sum(int(e.message.get("blob_bytes", 0)) for e in per_round[n]) for n in numbers
        ),
        "messages": statistics.mean(len(per_round[n]) for n in numbers),
        "by_type": {
            kind: sum(e.total for n in numbers for e in per_round[n] if e.message.get("type") == kind)
            / len(numbers)
            for kind in kinds
        },
        "statuses": sorted({e.status for e in protocol}),
        "repeats": repeats,
    }


PHASES = (
    ("coordinator opens the round", "open"),
    ("round start delivered (request to reply)", "start"),
    ("provider: evaluate, checks, ledger, sign", "provider"),
    ("update delivered (request to reply)", "update"),
    ("coordinator: aggregate, anchor, record", "close"),
)


def phases(rounds: list[dict[str, Any]], exchanges: list[Exchange]) -> dict[str, list[float]]:
    """Where a round's time goes besides training, from the coordinator's records and the
    proxy's timestamps (one clock: every process is on this machine). Per round: the
    coordinator's time to its first round start on the wire; the slowest round start from
    request to signed reply; per provider, from its round start's reply to its update on the
    wire less its training (the slowest provider's); the slowest update from request to reply;
    and from the last update's reply to the round's end."""
    out: dict[str, list[float]] = {key: [] for _, key in PHASES}
    for r in rounds:
        mine = [e for e in exchanges if e.message.get("round") == r["round"]]
        starts = {e.message.get("recipient"): e for e in mine if e.message.get("type") == "RoundStart"}
        updates = {e.message.get("sender"): e for e in mine if e.message.get("type") == "RoundUpdate"}
        trained = {c["provider"]: float(c["train_seconds"]) for c in r["contributions"]}
        both = [p for p in trained if p in starts and p in updates]
        if not both:
            continue
        out["open"].append(min(e.started for e in starts.values()) - when(r["started_at"]))
        out["start"].append(max(starts[p].ended - starts[p].started for p in both))
        out["provider"].append(max(updates[p].started - starts[p].ended - trained[p] for p in both))
        out["update"].append(max(updates[p].ended - updates[p].started for p in both))
        out["close"].append(when(r["ended_at"]) - max(updates[p].ended for p in both))
    return out
