"""Negotiations per second and their latency, two nodes on loopback sharing one chain.

A provider node with one offering (provide-access, automatic approval) and a consumer node,
both real processes, sharing one chain: anvil (the default; a native EVM node from npm) or
``agora devchain`` (py-evm, served from this process, ``--chain devchain``). Each negotiation
runs REQUESTED → AGREED → VERIFIED → FINALIZED: four signed
protocol messages and the agreement recorded on chain with both signatures. Timed from the
consumer's ``POST /api/v1/negotiations`` until it reports FINALIZED, first one at a time, then
with ``--concurrency`` negotiations in flight (one consumer node, many clients).

Then the added case: a plain DSP consumer with no chain (``node/plain_peer.py``: DSP 2025-1 and
DCP only, its own P-256 did:web) against the same provider, timed from its
``ContractRequestMessage`` until the FINALIZED event arrives (it verifies the agreement in
between): the agreement is valid under DSP and held by the provider, with no chain record.

    .venv/bin/python bench/negotiate.py                   # 500 negotiations, then 500 with 10 in flight
    .venv/bin/python bench/negotiate.py --count 40        # smoke run

Targets: p50 under 150 ms, at least 20 negotiations/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _node import TempDir, free_port, start_node

P50_TARGET_MS, RATE_TARGET = 150.0, 20.0


def one(client: httpx.Client, consumer: str, provider_url: str, offering_id: str) -> float:
    started = time.perf_counter()
    r = client.post(
        f"{consumer}/api/v1/negotiations",
        json={
            "offering_id": offering_id,
            "provider": provider_url,
            "purpose": "benchmark",
            "access_mode": "download",
        },
    )
    r.raise_for_status()
    negotiation_id = r.json()["id"]
    while True:
        state = client.get(f"{consumer}/api/v1/negotiations/{negotiation_id}").json()
        if state["state"] == "FINALIZED":
            return time.perf_counter() - started
        if state["state"] == "TERMINATED" or time.perf_counter() - started > 60:
            raise RuntimeError(f"negotiation ended {state['state']}: {state['reason']}")
        time.sleep(0.02)  # poll gently: the load generator shares the 2 cores with both nodes


def plain_one(peer: Any, provider: dict[str, str], dataset: dict[str, Any]) -> float:
    started = time.perf_counter()
    peer.negotiate(provider, dataset)
    return time.perf_counter() - started


def plain_run(
    count: int, concurrency: int, peer: Any, provider: dict[str, str], dataset: dict[str, Any]
) -> list[float]:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda _i: plain_one(peer, provider, dataset), range(count)))


def run(
    count: int, concurrency: int, consumer: str, token: str, provider_url: str, offering_id: str
) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        clients = [httpx.Client(headers=headers, timeout=60) for _ in range(concurrency)]
        futures = [
            pool.submit(one, clients[i % concurrency], consumer, provider_url, offering_id)
            for i in range(count)
        ]
        results = [f.result() for f in futures]
        for c in clients:
            c.close()
    return results


class AnvilChain:
    """anvil with the registry deployed, shaped like DevChainServer (url, registry, stop)."""

    def __init__(self, tmp: Path) -> None:
        from eth_account import Account

        from contracts.chain import RpcChain
        from tests.services import start_anvil

        self.anvil = start_anvil()
        self.url = self.anvil.url
        deployer = Account.create()
        chain = RpcChain(self.url, deployer, registry=None)
        chain.fund(deployer.address)
        self.registry, _ = chain.deploy("AgoraRegistry", False)

    def stop(self) -> None:
        self.anvil.stop()


def start_chain(kind: str, tmp: Path) -> Any:
    if kind == "anvil":
        return AnvilChain(tmp)
    from contracts.devchain import DevChainServer

    server = DevChainServer(tmp / "chain", port=free_port())
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--chain",
        choices=("anvil", "devchain"),
        default="anvil",
        help="the shared chain: anvil (npm, a native EVM node) or agora devchain (py-evm)",
    )
    args = parser.parse_args()

    with TempDir("agora-bench-negotiate-") as tmp:
        chain = start_chain(args.chain, tmp)
        env = {"AGORA_CHAIN_URL": chain.url, "AGORA_CHAIN_REGISTRY": chain.registry}
        provider = start_node(tmp / "provider", name="Provider", extra_env=env)
        consumer = start_node(tmp / "consumer", name="Consumer", extra_env=env)
        try:
            p_token, c_token = provider.token("admin"), consumer.token("admin")
            source = tmp / "data.csv"
            source.write_text("a,b\n1,2\n")
            with source.open("rb") as f:
                offering = httpx.post(
                    f"{provider.url}/api/v1/offerings",
                    headers={"Authorization": f"Bearer {p_token}"},
                    data={
                        "metadata": json.dumps({"title": "bench", "policy": {"template": "provide-access"}})
                    },
                    files={"file": ("data.csv", f, "text/csv")},
                    timeout=60,
                ).json()
            for a, b, token in ((provider, consumer, p_token), (consumer, provider, c_token)):
                httpx.post(
                    f"{a.url}/api/v1/participants",
                    json={"url": b.url},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                ).raise_for_status()
            run(5, 1, consumer.url, c_token, provider.url, offering["id"])  # warm-up
            rows = []
            retried: list[str] = []
            for concurrency in (1, args.concurrency):
                t0 = time.perf_counter()
                latencies = run(args.count, concurrency, consumer.url, c_token, provider.url, offering["id"])
                wall = time.perf_counter() - t0
                rows.append(("Agora", concurrency, latencies, wall))
            from node.plain_peer import PlainPeer

            with PlainPeer("Plain consumer") as peer:
                httpx.post(
                    f"{provider.url}/api/v1/participants",
                    json={"url": peer.url, "did": peer.did, "name": peer.name},
                    headers={"Authorization": f"Bearer {p_token}"},
                    timeout=30,
                ).raise_for_status()
                far = peer.discover(provider.url)
                dataset = next(d for d in peer.catalog(far)["dataset"] if offering["id"] in d["@id"])
                plain_run(5, 1, peer, far, dataset)  # warm-up
                for concurrency in (1, args.concurrency):
                    t0 = time.perf_counter()
                    latencies = plain_run(args.count, concurrency, peer, far, dataset)
                    rows.append(("plain DSP", concurrency, latencies, time.perf_counter() - t0))
                retried = list(peer.retried)
        finally:
            consumer.stop()
            provider.stop()
            chain.stop()

    print(
        f"negotiations to FINALIZED (agreement recorded on chain), {args.count} per row, "
        f"two nodes + {args.chain}"
    )
    print(f"{'consumer':>10} {'in flight':>9} {'p50 ms':>8} {'p99 ms':>8} {'negotiations/s':>15}")
    ok = True
    for kind, concurrency, latencies, wall in rows:
        q = statistics.quantiles(latencies, n=100)
        p50, p99, rate = statistics.median(latencies) * 1000, q[98] * 1000, len(latencies) / wall
        print(f"{kind:>10} {concurrency:9d} {p50:8.1f} {p99:8.1f} {rate:15.1f}")
        ok = ok and (kind != "Agora" or concurrency != 1 or p50 < P50_TARGET_MS)
    print("(plain DSP: a consumer with no chain; its agreement is not recorded on chain)")
    print(f"plain DSP messages the provider answered 503 and the consumer sent again: {len(retried)}")
    for why in sorted(set(retried))[:5]:
        print(f"  {why}")
    best_rate = max(len(lat) / wall for kind, _, lat, wall in rows if kind == "Agora")
    print(
        f"\ntargets: p50 < {P50_TARGET_MS:.0f} ms (one at a time): {'met' if ok else 'NOT met'}; "
        f">= {RATE_TARGET:.0f} negotiations/s: {'met' if best_rate >= RATE_TARGET else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
