"""The digits CNN as a whole compute-to-data job, timed end to end (used by bench/onnx.py).

Two real nodes on loopback share ``agora devchain``; the provider holds the digits as a
compute-only offering, the consumer has a compute agreement. Timed: the consumer's
``POST /api/v1/jobs`` until its node reports COMPLETED, and each stage from the job's history.
Baseline, in the same command: the bundle's ``train.py`` run as a bare subprocess on the same
training split (no node, no sandbox, no verification, no ONNX).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _node import TempDir, free_port, start_node

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "examples" / "jobs" / "digits-cnn"


def bare_training_seconds(data: Path, runs: int) -> float:
    """Median seconds of ``python train.py`` on the training split, outside any sandbox."""
    from training_jobs import holdout

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        features, labels = holdout.read_dataset(data.read_bytes())
        split = holdout.split(features, labels, fraction=0.2, seed_hex="00" * 32)
        (work / "data").mkdir()
        (work / "out").mkdir()
        split.write(work / "data" / "train.npz", work / "holdout.npz")
        (work / "data" / "params.json").write_text(json.dumps({"epochs": 8, "lr": 0.01, "batch_size": 64}))
        env = {
            **os.environ,
            "AGORA_DATA": str(work / "data"),
            "AGORA_OUTPUT": str(work / "out"),
            "AGORA_PARAMS_FILE": str(work / "data" / "params.json"),
            "AGORA_SEED": "1",
            "OMP_NUM_THREADS": "1",
        }
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "train.py"], cwd=BUNDLE, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def end_to_end(runs: int) -> None:
    from contracts.devchain import DevChainServer
    from training_jobs import bundle as bundles
    from training_jobs.datasets import digits_npz
    from training_jobs.spec import load_spec

    with TempDir("agora-bench-job-") as tmp:
        chain = DevChainServer(tmp / "chain", port=free_port())
        chain.start()
        env = {
            "AGORA_CHAIN_URL": chain.url,
            "AGORA_CHAIN_REGISTRY": chain.registry,
            "AGORA_ANCHOR_MAX_DELAY": "0.2",
        }
        provider = start_node(tmp / "provider", name="Provider", extra_env=env)
        consumer = start_node(tmp / "consumer", name="Consumer", extra_env=env)
        try:
            data = digits_npz(tmp / "digits.npz")
            p = httpx.Client(
                base_url=provider.url, headers={"Authorization": f"Bearer {provider.token()}"}, timeout=120
            )
            c = httpx.Client(
                base_url=consumer.url, headers={"Authorization": f"Bearer {consumer.token()}"}, timeout=120
            )
            with data.open("rb") as f:
                offering = p.post(
                    "/api/v1/offerings",
                    data={
                        "metadata": json.dumps(
                            {
                                "name": "digits",
                                "title": "Digits",
                                "media_type": "application/x-npz",
                                "access_modes": ["compute"],
                                "policy": {"template": "provide-access"},
                            }
                        )
                    },
                    files={"file": ("digits.npz", f)},
                ).json()
            c.post("/api/v1/participants", json={"url": provider.url}).raise_for_status()
            p.post("/api/v1/participants", json={"url": consumer.url}).raise_for_status()
            started = c.post(
                "/api/v1/negotiations",
                json={
                    "offering_id": offering["id"],
                    "provider": provider.url,
                    "purpose": "bench",
                    "access_mode": "compute",
                },
            ).json()
            while (n := c.get(f"/api/v1/negotiations/{started['id']}").json())["state"] not in (
                "FINALIZED",
                "TERMINATED",
            ):
                time.sleep(0.1)
            if n["state"] != "FINALIZED":
                raise RuntimeError(f"the compute negotiation ended {n['state']}: {n['reason']}")
            spec = load_spec((BUNDLE / "job.yaml").read_text())
            spec.agreement, spec.provider = n["agreement_id"], provider.url
            packed = bundles.pack(BUNDLE)
            spec.code.digest = bundles.digest(packed)
            body = {
                "spec": spec.model_dump(mode="json", exclude_none=True, exclude={"code": {"bundle"}}),
                "bundle": base64.b64encode(packed).decode(),
            }
            totals, stages = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                response = c.post("/api/v1/jobs", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"submit refused: {response.text}")
                job = response.json()
                while job["state"] not in ("COMPLETED", "FAILED", "REJECTED", "CANCELLED"):
                    time.sleep(0.1)
                    job = c.get(f"/api/v1/jobs/{job['id']}").json()
                if job["state"] != "COMPLETED":
                    raise RuntimeError(f"the job ended {job['state']}: {job['reason']}")
                totals.append(time.perf_counter() - t0)
                stages.append(_stage_seconds(job["history"]))
            metrics = job["result"]["metrics"]
            bare = bare_training_seconds(data, runs)
        finally:
            provider.stop()
            consumer.stop()
            chain.stop()
    total = sorted(totals)[len(totals) // 2]
    print(f"\nend-to-end digits CNN job ({runs} run(s), two nodes + devchain, bubblewrap sandbox):")
    print(f"  submit → COMPLETED       {total:6.1f} s (median)")
    for name in ("QUEUED", "PROVISIONING", "RUNNING", "VERIFYING", "TRANSLATING"):
        values = sorted(s.get(name, 0.0) for s in stages)
        print(f"    {name:12}           {values[len(values) // 2]:6.1f} s")
    print(f"  bare `python train.py`   {bare:6.1f} s (no node, no sandbox, no verification)")
    print(f"  ratio job / bare training {total / bare:5.2f}x")
    print(
        f"  ONNX accuracy {metrics['onnx_accuracy']:.3f} on {metrics['holdout_rows']} held-out rows, "
        f"max |ONNX - native| {metrics['max_abs_diff']:.1e} on {metrics['probe_inputs']} probe inputs"
    )


def _stage_seconds(history: list[dict[str, Any]]) -> dict[str, float]:
    times = [(h["state"], datetime.fromisoformat(h["at"])) for h in history]
    return {state: (times[i + 1][1] - at).total_seconds() for i, (state, at) in enumerate(times[:-1])}
