"""Catalog search at 100,000 offerings, on SQLite and PostgreSQL, and a federated crawl.

Part 1, search: a node (a real process) whose catalog holds ``--offerings`` entries,
inserted straight into its database (the FTS5 / tsvector index is kept by the database's
own triggers, as for every write). ``wrk`` then drives ``GET /api/v1/catalog`` with a
full-text query, with filters, and plain browsing, each for ``--seconds``; baseline in the
same run: ``/.well-known/jwks.json`` (no database). Once on SQLite, once on PostgreSQL
(a server started for the run, as the tests do).

Part 2, federation: ``--peers`` provider nodes with ``--per-peer`` offerings each, and a
consumer that crawls them all: the first (full) crawl, then an incremental one with nothing
changed, then an incremental one after each peer changed 100 offerings.

    .venv/bin/python bench/catalog.py                                   # 100,000 offerings; 5 x 10,000
    .venv/bin/python bench/catalog.py --offerings 5000 --per-peer 500 --seconds 3   # smoke run

Targets: search p99 < 50 ms and >= 500 req/s (2 cores, wrk on the same cores); incremental crawl < 2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _node import PASSPHRASE, TempDir, start_node  # noqa: E402
from api import WRK_SCRIPT, run_wrk  # noqa: E402

WORDS = (  # noqa: SIM905 - reads better as one phrase
    "vibration turbine bearing gearbox blade pitch yaw tower nacelle rotor sensor temperature pressure "
    "humidity wind solar grid inverter battery forecast anomaly fault maintenance label"
).split()
P99_TARGET_MS, RPS_TARGET, CRAWL_TARGET_S = 50.0, 500.0, 2.0


def seed_catalog(database_url: str, provider: str, count: int, *, local: bool) -> float:
    """Insert catalog entries in bulk (what registrations or a crawler would have written)."""
    from sqlalchemy import insert

    from kernel.db import make_engine, utcnow
    from marketplace.catalog import _entry_fields
    from marketplace.models import CatalogEntry

    engine = make_engine(database_url)
    rng = __import__("random").Random(42)
    now = utcnow()
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for i in range(count):
            words = rng.sample(WORDS, 4)
            fields = _entry_fields(
                name=f"offering-{i}",
                kind="model" if i % 5 == 0 else "dataset",
                title=f"{words[0].title()} {words[1]} data {i}",
                description=" ".join(rng.sample(WORDS, 8)),
                keywords=words[2:],
                license=rng.choice(["CC-BY-4.0", "MIT", "proprietary"]),
                media_type="text/csv",
                access_modes=rng.choice([["compute"], ["download"], ["compute", "download"]]),
                version=1,
                sha256=os.urandom(32).hex(),
                policy={"template": "provide-access"},
                anchor_status="ANCHORED",
            )
            batch.append(
                {
                    **fields,
                    "provider": provider,
                    "offering_id": str(uuid.uuid4()),
                    "local": local,
                    "modified_at": now - timedelta(seconds=count - i),
                    "fetched_at": now,
                    "document": {},
                }
            )
            if len(batch) == 5000:
                conn.execute(insert(CatalogEntry), batch)
                batch.clear()
        if batch:
            conn.execute(insert(CatalogEntry), batch)
    engine.dispose()
    return time.perf_counter() - started


def search_bench(
    label: str, url: str, token: str, seconds: float, script: Path
) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for name, path in (
        ("jwks (no database)", "/.well-known/jwks.json"),
        ("full text q=vibration", "/api/v1/catalog?q=vibration&limit=20"),
        ("text + filters", "/api/v1/catalog?q=turb&kind=dataset&access_mode=compute&limit=20"),
        ("browse, no query", "/api/v1/catalog?limit=20"),
    ):
        run_wrk(url + path, token, 16, 1, 2, script)  # warm-up
        rows.append((f"{label}: {name}", run_wrk(url + path, token, 16, seconds, 2, script)))
    return rows


def part_search(args: argparse.Namespace, tmp: Path, script: Path) -> list[tuple[str, dict[str, Any]]]:
    import httpx

    results = []
    backends: list[tuple[str, dict[str, str]]] = [("SQLite", {})]
    pg = None
    if not args.skip_postgres:
        from tests.services import start_postgres

        pg = start_postgres()
        backends.append(("PostgreSQL", {"AGORA_DATABASE_URL": pg.new_database()}))
    try:
        for label, env in backends:
            node = start_node(tmp / label.lower(), extra_env=env)
            try:
                address = httpx.get(f"{node.url}/health").json()["participant"]
                url = env.get("AGORA_DATABASE_URL") or f"sqlite:///{tmp / label.lower() / 'agora.db'}"
                took = seed_catalog(url, address, args.offerings, local=True)
                print(f"{label}: seeded {args.offerings} catalog entries in {took:.1f} s", flush=True)
                results += search_bench(label, node.url, node.token("catalog:read"), args.seconds, script)
            finally:
                node.stop()
    finally:
        if pg is not None:
            pg.stop()
    return results


def part_crawl(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float]]:
    import httpx

    from node.runtime import build_runtime
    from node.settings import Settings

    consumer = start_node(tmp / "consumer", name="Consumer")
    peers = []
    try:
        consumer_address = httpx.get(f"{consumer.url}/health").json()["participant"]
        for i in range(args.peers):
            peer = start_node(tmp / f"peer{i}", name=f"Peer {i}")
            peers.append(peer)
            address = httpx.get(f"{peer.url}/health").json()["participant"]
            seed_catalog(f"sqlite:///{tmp / f'peer{i}' / 'agora.db'}", address, args.per_peer, local=True)
            for a, b in ((peer, consumer), (consumer, peer)):  # both sides know each other
                httpx.post(
                    f"{a.url}/api/v1/participants",
                    json={"url": b.url},
                    headers={"Authorization": f"Bearer {a.token('admin')}"},
                    timeout=30,
                ).raise_for_status()
        consumer.stop()  # the bench process crawls with the consumer's own runtime, timing each pass
        runtime = build_runtime(Settings.load(home=tmp / "consumer", key_passphrase=PASSPHRASE))
        timings = []
        for label in ("first crawl (full)", "incremental, nothing changed"):
            started = time.perf_counter()
            outcome = runtime.crawler.crawl_all(full=label.startswith("first"))  # type: ignore[union-attr]
            timings.append((label, time.perf_counter() - started))
            failed = [o for o in outcome.values() if not o.startswith("ok")]
            if failed:
                sys.exit(f"crawl failed: {failed}")
        for i in range(len(peers)):
            _touch(tmp / f"peer{i}" / "agora.db", 100)
        started = time.perf_counter()
        runtime.crawler.crawl_all(full=False)  # type: ignore[union-attr]
        timings.append(("incremental, 100 changed per peer", time.perf_counter() - started))
        entries = runtime.catalog.search(
            __import__("marketplace.catalog", fromlist=["CatalogFilters"]).CatalogFilters(), limit=1
        )
        assert entries["items"], "the consumer's catalog is empty after the crawl"
        runtime.close()
        print(f"crawled {args.peers} peers x {args.per_peer} offerings as {consumer_address}", flush=True)
        return timings
    finally:
        for peer in peers:
            peer.stop()
        consumer.stop()


def _touch(database: Path, count: int) -> None:
    """Change ``count`` offerings of a peer (a retitle), as an apply would."""
    import sqlite3

    conn = sqlite3.connect(database)
    with conn:
        conn.execute(
            "UPDATE catalog_entry SET title = title || ' (v2)', modified_at = datetime('now') "
            "WHERE id IN (SELECT id FROM catalog_entry ORDER BY id LIMIT ?)",
            (count,),
        )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offerings", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--per-peer", type=int, default=10_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    with TempDir("agora-bench-catalog-") as tmp:
        script = tmp / "wrk.lua"
        script.write_text(WRK_SCRIPT)
        searches = part_search(args, tmp, script)
        crawls = part_crawl(args, tmp)

    print(f"\ncatalog search, {args.offerings} offerings, 16 connections, wrk on the same 2 cores")
    print(f"{'endpoint':48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    ok = True
    for name, r in searches:
        rps = r["requests"] / (r["duration_us"] / 1e6)
        p50, p99 = r["p50_us"] / 1000, r["p99_us"] / 1000
        print(f"{name:48} {rps:8.0f} {p50:8.1f} {p99:8.1f}")
        if "jwks" not in name:
            ok = ok and p99 < P99_TARGET_MS and rps >= RPS_TARGET
    print(f"\nfederated crawl, {args.peers} peers x {args.per_peer} offerings")
    for label, seconds in crawls:
        print(f"{label:40} {seconds:8.2f} s")
    incremental = crawls[1][1]
    print(
        f"\ntargets: search p99 < {P99_TARGET_MS:.0f} ms and >= {RPS_TARGET:.0f} req/s: "
        f"{'met' if ok else 'NOT met'}; "
        f"incremental crawl < {CRAWL_TARGET_S:.0f} s: {'met' if incremental < CRAWL_TARGET_S else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
