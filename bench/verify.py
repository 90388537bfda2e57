"""`agora verify` on a large file against `sha256sum` of it, and the CLI's start-up time.

Starts a node (embedded chain) as a real process, registers a file of ``--size-mib`` MiB,
waits until its notarization is anchored, writes the provenance sidecar next to it (as
`agora offerings download` does), then times, in one run:

* `sha256sum FILE` (the baseline: reading and hashing every byte),
* `agora verify FILE` (hashing, the sidecar, the registry's checks over JSON-RPC),
* `agora verify --help` (start-up: heavy libraries must stay out of the CLI's import path).

    .venv/bin/python bench/verify.py                # 1 GiB
    .venv/bin/python bench/verify.py --size-mib 64  # smoke run

Targets: verify at most 1.3x the time of sha256sum; `agora verify --help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _node import AGORA, TempDir, start_node
from upload import sha256sum, write_file

RATIO_TARGET = 1.3
STARTUP_TARGET = 0.5


def wait_anchored(url: str, token: str, offering_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        offering = httpx.get(f"{url}/api/v1/offerings/{offering_id}", headers=headers, timeout=30).json()
        anchor = offering["anchor"]
        if anchor["status"] == "ANCHORED":
            return dict(anchor)
        time.sleep(0.2)
    raise TimeoutError(f"offering {offering_id} not anchored within {timeout}s")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed command (median)")
    args = parser.parse_args()

    with TempDir("agora-bench-verify-") as tmp:
        node = start_node(tmp / "node")
        try:
            path = tmp / "data.bin"
            write_file(path, args.size_mib * 1024 * 1024)
            token = node.token("admin")
            with path.open("rb") as f:
                response = httpx.post(
                    f"{node.url}/api/v1/offerings",
                    headers={"Authorization": f"Bearer {token}"},
                    data={
                        "metadata": json.dumps({"title": "bench", "media_type": "application/octet-stream"})
                    },
                    files={"file": ("data.bin", f, "application/octet-stream")},
                    timeout=600,
                )
            response.raise_for_status()
            anchor = wait_anchored(node.url, token, response.json()["id"])
            doc = httpx.get(
                f"{node.url}/api/v1/provenance/{anchor['asset_id']}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()
            path.with_name(path.name + ".provenance.json").write_text(json.dumps(doc))

            env = {k: v for k, v in node.env.items() if not k.startswith("AGORA_")}
            env["AGORA_HOME"] = str(tmp / "verifier")  # a bystander: no node, no key, only the chain
            sums, verifies, helps = [], [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                sha256sum(path)
                sums.append(time.perf_counter() - t0)
                seconds, result = timed([AGORA, "verify", str(path)], env)
                if result.returncode != 0 or "VERIFIED" not in result.stdout:
                    sys.exit(f"agora verify failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
                verifies.append(seconds)
                seconds, _ = timed([AGORA, "verify", "--help"], env)
                helps.append(seconds)
        finally:
            node.stop()

    s, v, h = statistics.median(sums), statistics.median(verifies), statistics.median(helps)
    mib = args.size_mib
    print(f"verify a {mib} MiB file against the node's chain, median of {args.repeat} runs\n")
    print(f"{'command':28} {'seconds':>9} {'MiB/s':>9}")
    print(f"{'sha256sum FILE':28} {s:9.3f} {mib / s:9.0f}")
    print(f"{'agora verify FILE':28} {v:9.3f} {mib / v:9.0f}")
    print(f"{'agora verify --help':28} {h:9.3f}")
    print(f"\nratio verify / sha256sum: {v / s:.2f}")
    print(
        f"targets: verify <= {RATIO_TARGET}x sha256sum: {'met' if v / s <= RATIO_TARGET else 'NOT met'}; "
        f"`agora verify --help` < {STARTUP_TARGET}s: {'met' if h < STARTUP_TARGET else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
