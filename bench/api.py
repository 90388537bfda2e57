"""Catalogue API under load: ``GET /api/v1/offerings?limit=50`` against ``GET /health``.

Starts a node as a real process on 127.0.0.1, seeds ``--offerings`` small offerings, waits
until the node's background work on them is done (a notarization backlog, if ``/health``
reports one), then drives each endpoint with ``--concurrency`` keep-alive connections for
``--seconds`` (after a warm-up) and prints req/s and latency percentiles. Baselines on the
same server in the same run: ``/health`` (no token; a worker thread, ``SELECT 1`` and whatever
else the node's health check reads) and ``/.well-known/jwks.json`` (no token, no database,
no thread: the bare framework). The table's last columns say how many cores the server, the
load generator and any other process on the machine used, so a busy machine is visible.

Seeding goes through the product's own service, in this process, while the node runs:
``build_runtime(Settings.load(home=…))`` then ``runtime.offerings.register`` with an object
staged by ``runtime.store.stage()`` (the same code path as an upload, minus HTTP). Only the
fsyncs are skipped in this process (``--durable-seed`` keeps them): durability of seed data
is not what is measured, and it halves the seeding time. The server is not affected.

Load generator: ``wrk`` when installed (``apt-get install -y wrk``; a Lua script adds the
bearer token and prints the percentiles), else a raw-asyncio HTTP/1.1 client in a separate
process. Either way it runs on the same 2 cores as the server, so the figures are a lower
bound of what the server alone would do.

    .venv/bin/python bench/api.py                                    # 10000 offerings, 16 conns, 10 s
    .venv/bin/python bench/api.py --offerings 200 --seconds 2 --warmup 1   # smoke run

Targets: list p99 < 20 ms and list >= 1000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _node import PASSPHRASE, Node, PySpy, TempDir, machine_busy, met, start_node

P99_TARGET_MS = 20.0
RPS_TARGET = 1000.0

WRK_SCRIPT = r"""
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
function done(summary, latency, requests)
  local s = summary
  local out = string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}',
    s.requests, s.duration, s.bytes, s.errors.status, s.errors.connect, s.errors.read,
    s.errors.write, s.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean)
  io.stderr:write("WRKJSON " .. out .. "\n")
end
"""


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    bytes_per_response: float
    server_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# Seeding -----------------------------------------------------------------------------------


def seed(node: Node, count: int, durable: bool) -> float:
    """Register ``count`` offerings through the product's service; returns seconds taken."""
    from marketplace.schemas import OfferingMetadata
    from node.runtime import build_runtime
    from node.settings import Settings

    settings = Settings.load(home=node.home, key_passphrase=PASSPHRASE, public_url=node.url)
    runtime = build_runtime(settings)
    real_fsync = os.fsync
    if not durable:
        os.fsync = lambda fd: None
    t0 = time.perf_counter()
    try:
        for i in range(count):
            metadata = OfferingMetadata(
                name=f"bench-{i:06d}",
                kind="model" if i % 5 == 0 else "dataset",
                title=f"Benchmark offering {i}",
                description=f"Seeded by bench/api.py; row {i} of {count}. " * 2,
                keywords=["bench", f"k{i % 17}", f"group-{i % 101}"],
                license="CC-BY-4.0",
                media_type="text/plain",
            )
            with runtime.store.stage() as staged:
                staged.write(f"offering {i} of {count}\n".encode())
                runtime.offerings.register(staged, metadata, "bench")
    finally:
        os.fsync = real_fsync
        runtime.close()
    return time.perf_counter() - t0


def what_if(node: Node, change: str) -> None:
    """A schema experiment on the running node's database (the default is to change nothing)."""
    import sqlite3

    statement = {
        "analyze": "ANALYZE",
        "index": "CREATE INDEX ix_bench_offering_status_created_id ON offering (status, created_at, id)",
    }[change]
    with contextlib.closing(sqlite3.connect(node.home / "agora.db", timeout=30)) as conn:
        conn.execute(statement)
        conn.commit()
    print(f"what-if (NOT the product as shipped): {statement}")


# Load generators ------------------------------------------------------------------------------


def run_wrk(
    url: str, token: str | None, concurrency: int, seconds: float, threads: int, script: Path
) -> dict:
    env = dict(os.environ, BENCH_TOKEN=token or "")
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    cmd += ["-s", str(script), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in out.stderr.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line.removeprefix("WRKJSON "))
    raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


async def _loadgen(url: str, token: str | None, concurrency: int, seconds: float) -> dict:
    """Keep-alive HTTP/1.1 GETs from ``concurrency`` connections; raw asyncio, no HTTP library."""
    parts = urlparse(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    request = (head + "\r\n").encode()
    latencies: list[float] = []
    counts = {"non2xx": 0, "bytes": 0, "errors": 0}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length, received = 0, len(status_line)
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    received += len(line)
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "transfer-encoding":
                        raise RuntimeError("chunked responses are not supported by this load generator")
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                counts["bytes"] += received + 2 + len(body)
                if not status_line.split(b" ")[1].startswith(b"2"):
                    counts["non2xx"] += 1
        except (OSError, asyncio.IncompleteReadError, IndexError):
            counts["errors"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> int:
        return (
            int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6) if latencies else 0
        )

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "bytes": counts["bytes"],
        "non2xx": counts["non2xx"],
        "connect_errors": counts["errors"],
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": 0,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "max_us": int(latencies[-1] * 1e6) if latencies else 0,
        "mean_us": statistics.fmean(latencies) * 1e6 if latencies else 0.0,
    }


def run_python_loadgen(url: str, token: str | None, concurrency: int, seconds: float) -> dict:
    env = dict(os.environ, BENCH_TOKEN=token or "")
    cmd = [sys.executable, __file__, "--loadgen-url", url, "--concurrency", str(concurrency)]
    cmd += ["--seconds", str(seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# Measuring ------------------------------------------------------------------------------------


def measure(
    name: str, node: Node, url: str, token: str | None, args: argparse.Namespace, script: Path
) -> Result:
    import psutil

    def load(seconds: float) -> dict:
        if args.loadgen == "wrk":
            return run_wrk(url, token, args.concurrency, seconds, args.threads, script)
        return run_python_loadgen(url, token, args.concurrency, seconds)

    if args.warmup > 0:
        load(args.warmup)
    server = psutil.Process(node.proc.pid)
    cpu0 = sum(server.cpu_times()[:2])
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    machine0 = machine_busy()
    raw = load(args.seconds)
    machine = machine_busy() - machine0
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = sum(server.cpu_times()[:2]) - cpu0
    loadgen_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    errors = (
        raw["non2xx"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    )
    if node.proc.poll() is not None:
        raise RuntimeError(f"the node died under load:\n{node.log_tail()}")
    return Result(
        name=name,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=errors,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        bytes_per_response=raw["bytes"] / raw["requests"] if raw["requests"] else 0.0,
        server_cpu_s=server_cpu,
        loadgen_cpu_s=loadgen_cpu,
        other_cpu_s=max(0.0, machine - server_cpu - loadgen_cpu - own),
    )


def settle(node: Node, timeout: float) -> str:
    """Wait (bounded) until the node's background work on the seeded rows is done.

    A node that reports a notarization backlog in ``/health`` (``notary.backlog``) anchors
    new offerings in a background thread; measuring while it works would measure that too.
    Returns a line saying what was waited for.
    """
    import psutil

    server = psutil.Process(node.proc.pid)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    first = backlog = None
    while time.monotonic() < deadline:
        body = httpx.get(f"{node.url}/health", timeout=30).json()
        notary = body.get("notary") if isinstance(body, dict) else None
        if not isinstance(notary, dict) or "backlog" not in notary:
            break
        backlog = int(notary["backlog"])
        first = backlog if first is None else first
        if backlog == 0:
            break
        time.sleep(1.0)
    # then until the server is idle (under 5% of a core over half a second), at most 30 s more
    quiet_deadline = min(deadline, time.monotonic()) + 30
    while time.monotonic() < quiet_deadline:
        c0 = sum(server.cpu_times()[:2])
        time.sleep(0.5)
        if sum(server.cpu_times()[:2]) - c0 < 0.025:
            break
    waited = time.monotonic() - t0
    if first is None:
        return f"server idle after {waited:.1f} s (no notary backlog reported)"
    state = "drained" if backlog == 0 else f"still {backlog} (timeout)"
    return f"notary backlog {first} -> {state} after {waited:.1f} s; measuring with the server idle"


def check_endpoints(node: Node, token: str, limit: int, offerings: int) -> int:
    """One request of each kind, verified, before any load: returns the list's item count."""
    httpx.get(f"{node.url}/health", timeout=30).raise_for_status()
    resp = httpx.get(
        f"{node.url}/api/v1/offerings",
        params={"limit": limit},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    resp.raise_for_status()
    page = resp.json()
    expected = min(limit, offerings)
    if len(page["items"]) != expected:
        raise RuntimeError(f"expected {expected} items, got {len(page['items'])}")
    return len(page["items"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--offerings", type=int, default=10000, help="offerings to seed (default 10000)")
    parser.add_argument(
        "--seconds", type=float, default=10, help="measured seconds per endpoint (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per endpoint (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--limit", type=int, default=50, help="page size of the list (default 50)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--durable-seed", action="store_true", help="keep fsyncs while seeding")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=600,
        help="longest wait for the node's background work on the seeded rows (default 600 s)",
    )
    parser.add_argument(
        "--what-if",
        choices=["none", "analyze", "index"],
        default="none",
        help="experiment, not the product as shipped: after seeding run ANALYZE, or create an index "
        "on offering(status, created_at, id), in the node's SQLite database (default: none)",
    )
    parser.add_argument("--py-spy", type=Path, metavar="OUT", help="profile the server during the list run")
    parser.add_argument("--py-spy-gil", action="store_true", help="py-spy: only the thread holding the GIL")
    parser.add_argument("--loadgen-url", dest="loadgen_url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen_url:  # the child process of the Python load generator
        token = os.environ.get("BENCH_TOKEN") or None
        print(json.dumps(asyncio.run(_loadgen(args.loadgen_url, token, args.concurrency, args.seconds))))
        return 0
    if args.offerings < 1 or args.concurrency < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--offerings, --concurrency and --seconds must be positive, --warmup >= 0")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk), use --loadgen python")

    with TempDir("agora-bench-api-") as tmp:
        home = tmp / "home"
        home.mkdir()
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT)
        node = start_node(home)
        try:
            seed_s = seed(node, args.offerings, args.durable_seed)
            fsync = "with fsync" if args.durable_seed else "fsync skipped"
            print(
                f"seeded {args.offerings} offerings via OfferingService.register in {seed_s:.1f} s "
                f"({args.offerings / seed_s:.0f}/s, {fsync})"
            )
            if args.what_if != "none":
                what_if(node, args.what_if)
            print(settle(node, args.settle_timeout))
            token = node.token("admin")
            items = check_endpoints(node, token, args.limit, args.offerings)
            list_url = f"{node.url}/api/v1/offerings?limit={args.limit}"
            jwks = measure(
                "GET /.well-known/jwks.json", node, f"{node.url}/.well-known/jwks.json", None, args, script
            )
            health = measure("GET /health", node, f"{node.url}/health", None, args, script)
            with PySpy(node.proc.pid, args.py_spy, gil=args.py_spy_gil):
                listing = measure(
                    f"GET /api/v1/offerings?limit={args.limit}", node, list_url, token, args, script
                )
        finally:
            node.stop()

    loadgen = f"wrk -t{args.threads}" if args.loadgen == "wrk" else "python asyncio (separate process)"
    print()
    print(
        f"load generator: {loadgen}, {args.concurrency} connections, {args.warmup:g} s warm-up + "
        f"{args.seconds:g} s per endpoint; it shares the {os.cpu_count()} cores with the server"
    )
    print(f"list returns {items} items per page from {args.offerings} offerings")
    header = (
        f"{'endpoint':<34}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}{'B/resp':>8}{'srv CPU':>9}{'gen CPU':>9}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in (jwks, health, listing):
        print(
            f"{r.name:<34}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.1f}"
            f"{r.errors:>8}{r.bytes_per_response:>8.0f}{r.server_cpu_s / r.seconds:>9.2f}"
            f"{r.loadgen_cpu_s / r.seconds:>9.2f}{r.other_cpu_s / r.seconds:>7.2f}"
        )
    print("(B/resp: bytes per response with headers; srv CPU / gen CPU / other: cores busy in the server /")
    print(" the load generator / any other process on the machine, CPU seconds per wall second)")
    ratio = listing.rps / health.rps if health.rps else 0.0
    bare = listing.rps / jwks.rps if jwks.rps else 0.0
    print(f"list / health throughput ratio: {ratio:.3f}; list / jwks (no DB, no thread): {bare:.3f}")
    ok_p99 = listing.p99_ms < P99_TARGET_MS
    ok_rps = listing.rps >= RPS_TARGET
    no_errors = listing.errors == 0 and health.errors == 0 and jwks.errors == 0
    print(
        f"targets: list p99 < {P99_TARGET_MS:g} ms: {met(ok_p99)} ({listing.p99_ms:.2f} ms); "
        f"list >= {RPS_TARGET:g} req/s: {met(ok_rps)} ({listing.rps:.0f} req/s); "
        f"no errors: {met(no_errors)}"
    )
    return 0 if no_errors else 1


if __name__ == "__main__":
    sys.exit(main())
