"""Notarization cost on a real EVM node (anvil), the three patterns side by side, one run.

(a) one contract deployed per asset, holding that asset's metadata (PerAssetRecord);
(b) one registry transaction per asset (AgoraRegistry.anchor);
(c) Merkle batches of 100 and of 1,000 assets (AgoraRegistry.anchorBatch), the way the
    node's notary anchors registered offerings.

For each: gas per asset and assets notarized per second (wall time from the first
transaction to the last receipt, tree building included), and the ratios against (a).

    .venv/bin/python bench/notarize.py                 # defaults below
    .venv/bin/python bench/notarize.py --per-asset 20 --direct 50 --batches 2   # smoke run

Targets: batched <= 1,000 gas per asset and >= 500 assets/s; >= 100x less gas per asset than (a).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from eth_account import Account  # noqa: E402

from contracts.chain import RpcChain  # noqa: E402
from contracts.merkle import MerkleTree, leaf  # noqa: E402
from contracts.registry import Registry, kind_code  # noqa: E402

ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_anvil() -> tuple[subprocess.Popen[bytes], str]:
    if not ANVIL.exists():
        sys.exit(f"anvil not found at {ANVIL}: run `npm ci` in the repository")
    port = free_port()
    proc = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("anvil did not start")


def per_asset_contracts(chain: RpcChain, n: int) -> tuple[int, float]:
    gas, t0 = 0, time.perf_counter()
    for i in range(n):
        _, result = chain.deploy(
            "PerAssetRecord", kind_code("dataset"), os.urandom(32), os.urandom(32), f"asset {i}"
        )
        gas += result.gas_used
    return gas, time.perf_counter() - t0


def direct_anchors(registry: Registry, n: int) -> tuple[int, float]:
    gas, t0 = 0, time.perf_counter()
    for _ in range(n):
        _, result = registry.anchor("dataset", os.urandom(32), os.urandom(32))
        gas += result.gas_used
    return gas, time.perf_counter() - t0


def batches(registry: Registry, owner: str, size: int, count: int) -> tuple[int, float]:
    gas, t0 = 0, time.perf_counter()
    for _ in range(count):
        leaves = [leaf(owner, 0, os.urandom(32), os.urandom(32)) for _ in range(size)]
        tree = MerkleTree.build(leaves)
        gas += registry.anchor_batch(tree.root, size).gas_used
    return gas, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-asset", type=int, default=100, help="assets for (a), one contract each")
    parser.add_argument("--direct", type=int, default=300, help="assets for (b), one transaction each")
    parser.add_argument("--batches", type=int, default=10, help="batches of each size for (c)")
    args = parser.parse_args()

    proc, url = start_anvil()
    try:
        account = Account.create()
        chain = RpcChain(url, account, registry=None)
        chain.fund(account.address)
        address, _ = chain.deploy("AgoraRegistry", False)
        chain.registry_address = address
        registry = Registry(chain)
        registry.register_participant("bench", "http://127.0.0.1")

        rows = []
        gas, secs = per_asset_contracts(chain, args.per_asset)
        rows.append(("(a) contract per asset", args.per_asset, gas, secs))
        gas, secs = direct_anchors(registry, args.direct)
        rows.append(("(b) registry tx per asset", args.direct, gas, secs))
        for size in (100, 1000):
            gas, secs = batches(registry, account.address, size, args.batches)
            rows.append((f"(c) Merkle batch of {size}", size * args.batches, gas, secs))
    finally:
        proc.terminate()
        proc.wait(10)

    base_gas = rows[0][2] / rows[0][1]
    print(f"notarization on anvil ({url}), one run; gas per asset and assets/s, ratios against (a)\n")
    print(f"{'pattern':28} {'assets':>7} {'gas/asset':>11} {'assets/s':>10} {'gas ratio':>10}")
    for name, n, gas, secs in rows:
        per = gas / n
        print(f"{name:28} {n:7d} {per:11,.0f} {n / secs:10,.0f} {base_gas / per:9,.0f}x")
    batch100, batch1000 = rows[2], rows[3]
    checks = [
        ("batched <= 1,000 gas/asset", batch100[2] / batch100[1] <= 1000),
        ("batched >= 500 assets/s", min(b[1] / b[3] for b in (batch100, batch1000)) >= 500),
        (">= 100x less gas than (a)", base_gas / (batch100[2] / batch100[1]) >= 100),
    ]
    print("\ntargets: " + "; ".join(f"{label}: {'met' if ok else 'NOT met'}" for label, ok in checks))


if __name__ == "__main__":
    main()
