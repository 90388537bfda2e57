"""Upload throughput and memory: a large multipart upload against ``sha256sum`` of the same file.

Starts a node as a real process on 127.0.0.1, writes a file of ``--size-mib`` MiB, times
``sha256sum FILE`` as the baseline (the least any upload must do: read and hash every byte),
then registers the same file with ``POST /api/v1/offerings`` (multipart, streamed from disk
by httpx) and prints both throughputs, their ratio, and the peak RSS of the server (with its
children) and of this client, sampled every 20 ms.

    .venv/bin/python bench/upload.py               # 1 GiB
    .venv/bin/python bench/upload.py --size-mib 64 # smoke run

Targets: upload / sha256sum >= 0.7; server peak RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _node import PySpy, RssSampler, TempDir, machine_busy, met, own_cpu, start_node

BLOCK = 16 * 1024 * 1024
RATIO_TARGET = 0.7
RSS_TARGET_MB = 250


def write_file(path: Path, size: int) -> float:
    """Random-looking bytes: one 16 MiB random block, each copy with a different prefix."""
    t0 = time.perf_counter()
    block = bytearray(os.urandom(BLOCK))
    with path.open("wb", buffering=0) as f:
        written, n = 0, 0
        while written < size:
            block[:16] = n.to_bytes(8, "little") + os.urandom(8)
            take = min(BLOCK, size - written)
            f.write(memoryview(block)[:take])
            written += take
            n += 1
    del block
    return time.perf_counter() - t0


def sha256sum(path: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True, timeout=600)
    return out.stdout.split()[0], time.perf_counter() - t0


def upload(url: str, token: str, path: Path, timeout: float) -> tuple[dict[str, object], float]:
    metadata = {"title": "bench", "kind": "dataset", "media_type": "application/octet-stream"}
    with httpx.Client(timeout=timeout) as client, path.open("rb") as f:
        t0 = time.perf_counter()
        resp = client.post(
            f"{url}/api/v1/offerings",
            headers={"Authorization": f"Bearer {token}"},
            files={
                "metadata": (None, json.dumps(metadata), "application/json"),
                "file": (path.name, f, "application/octet-stream"),
            },
        )
        elapsed = time.perf_counter() - t0
    if resp.status_code != 201:
        raise RuntimeError(f"upload failed: HTTP {resp.status_code}: {resp.text[:2000]}")
    return resp.json(), elapsed


def vary(path: Path, run: int) -> None:
    """New leading bytes, so each run uploads content the store has not seen (no dedup)."""
    with path.open("r+b", buffering=0) as f:
        f.write(b"run" + run.to_bytes(5, "little") + os.urandom(8))


@dataclass
class Run:
    base_s: float
    up_s: float
    verified: bool
    server_cores: float
    client_cores: float
    other_cores: float


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="sha256sum + upload pairs (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="upload timeout in seconds")
    parser.add_argument("--py-spy", type=Path, metavar="OUT", help="profile the server into OUT (raw stacks)")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    if size <= 0 or args.runs < 1:
        parser.error("--size-mib and --runs must be positive")

    import psutil

    runs: list[Run] = []
    with TempDir("agora-bench-upload-") as tmp:
        data = tmp / "bench.bin"
        write_s = write_file(data, size)
        sha256sum(data)  # page cache warm for both sides alike
        os.sync()  # no writeback of the input file during the measurements
        print(f"wrote {args.size_mib} MiB to {data} in {write_s:.2f} s")

        home = tmp / "home"
        home.mkdir()
        node = start_node(home)
        try:
            token = node.token("admin")
            server = psutil.Process(node.proc.pid)
            idle_rss = server.memory_info().rss
            client_idle_rss = psutil.Process().memory_info().rss
            pids = {"server": node.proc.pid, "client": os.getpid()}
            with PySpy(node.proc.pid, args.py_spy), RssSampler(pids, children=("server",)) as sampler:
                for i in range(args.runs):
                    vary(data, i)
                    expected, base_s = sha256sum(data)
                    cpu0 = (machine_busy(), sum(server.cpu_times()[:2]), own_cpu())
                    body, up_s = upload(node.url, token, data, args.timeout)
                    machine_s = machine_busy() - cpu0[0]
                    server_s = sum(server.cpu_times()[:2]) - cpu0[1]
                    client_s = own_cpu() - cpu0[2]
                    other_s = max(0.0, machine_s - server_s - client_s)
                    got = str(body.get("sha256", "")).removeprefix("sha256:")
                    verified = got == expected and body.get("size") == size
                    runs.append(Run(base_s, up_s, verified, server_s / up_s, client_s / up_s, other_s / up_s))
                    if node.proc.poll() is not None:
                        raise RuntimeError(f"the node died during the upload:\n{node.log_tail()}")
        finally:
            node.stop()

    size_mib = args.size_mib
    print()
    print("client (httpx, sync, streamed from disk) and server share this machine's cores")
    print(
        f"{'run':<6}{'sha256sum s':>12}{'MiB/s':>9}{'upload s':>10}{'MiB/s':>9}{'ratio':>8}{'sha256 ok':>11}"
        f"{'srv CPU':>9}{'cli CPU':>9}{'other':>7}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:<6}{r.base_s:>12.3f}{size_mib / r.base_s:>9.1f}{r.up_s:>10.3f}{size_mib / r.up_s:>9.1f}"
            f"{r.base_s / r.up_s:>8.3f}{r.verified!s:>11}{r.server_cores:>9.2f}{r.client_cores:>9.2f}"
            f"{r.other_cores:>7.2f}"
        )
    base_med = statistics.median(r.base_s for r in runs)
    up_med = statistics.median(r.up_s for r in runs)
    base_best = min(r.base_s for r in runs)
    up_best = min(r.up_s for r in runs)
    ratio = base_med / up_med
    print(
        f"{'median':<6}{base_med:>12.3f}{size_mib / base_med:>9.1f}{up_med:>10.3f}{size_mib / up_med:>9.1f}"
        f"{ratio:>8.3f}"
    )
    print(
        f"{'best':<6}{base_best:>12.3f}{size_mib / base_best:>9.1f}{up_best:>10.3f}"
        f"{size_mib / up_best:>9.1f}{base_best / up_best:>8.3f}"
    )
    server_mb = sampler.peak["server"] / 1e6
    client_mb = sampler.peak["client"] / 1e6
    verified = all(r.verified for r in runs)
    print()
    print(f"file size {size_mib} MiB; ratio = upload throughput / sha256sum throughput")
    print("srv / cli / other CPU: cores busy during the upload in the server, this client, other processes")
    print(f"server RSS (agora serve + children): idle {idle_rss / 1e6:.1f} MB, peak {server_mb:.1f} MB")
    print(f"client RSS (this process): idle {client_idle_rss / 1e6:.1f} MB, peak {client_mb:.1f} MB")
    print(f"RSS sampled every 20 ms: {sampler.samples} samples; MiB = 2^20 bytes, MB = 10^6 bytes")
    print(
        f"targets: median ratio >= {RATIO_TARGET}: {met(ratio >= RATIO_TARGET)} ({ratio:.3f}); "
        f"server peak RSS < {RSS_TARGET_MB} MB: {met(server_mb < RSS_TARGET_MB)} ({server_mb:.1f} MB); "
        f"sha256 verified: {met(verified)}"
    )
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
