"""The demo's compute-to-data chapter: Beta trains on Acme's digit scans without the data
leaving Acme's node, receives only the verified ONNX model, and a job built to carry the rows
out is refused by Acme's node."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from kernel.client import NodeClient
from kernel.errors import AgoraError
from kernel.hashing import sha256_file
from node.demo_kit import agora_command, negotiate, say, step, verify


def compute_to_data(
    root: Path,
    work: Path,
    beta: NodeClient,
    acme_url: str,
    beta_url: str,
    beta_env: dict[str, str],
    beta_token: str,
    digits: dict[str, Any],
) -> None:
    """Steps 9-12: Beta trains a CNN on Acme's digits without the data leaving Acme's node,
    then tries a model that is the data itself."""
    step(9, "Acme's manifest offers its digit scans for compute only; Beta agrees to train on them")
    say(
        f"  {digits['title']}: access {', '.join(digits['access_modes'])} "
        f"({digits['sha256'][:23]}…; never downloadable)"
    )
    agreed = negotiate(beta, acme_url, digits, "research", "compute")
    if agreed["state"] != "FINALIZED":
        raise AgoraError(f"the compute negotiation ended {agreed['state']}: {agreed['reason']}")
    agreement_id = agreed["agreement_id"]
    say(
        f"$ agora negotiate {digits['offering_id'][:8]}… --purpose research --mode compute --wait "
        f"→ {agreement_id[:18]}…"
    )

    step(10, "Beta's CNN trains in Acme's sandbox; Acme's node verifies it and translates it to ONNX")
    examples = Path(__file__).resolve().parent.parent / "examples" / "jobs" / "digits-cnn"
    env = {**beta_env, "AGORA_URL": beta_url, "AGORA_TOKEN": beta_token}
    started = time.monotonic()
    submitted = subprocess.run(
        [
            *agora_command(),
            "jobs",
            "submit",
            "-f",
            str(examples / "job.yaml"),
            "--agreement",
            agreement_id,
            "--provider",
            acme_url,
            "--wait",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if submitted.returncode != 0:
        said = submitted.stderr.strip().splitlines() or [f"agora jobs submit exited {submitted.returncode}"]
        raise AgoraError(f"the training job did not complete: {said[-1].removeprefix('error: ')}")
    job = json.loads(submitted.stdout)
    say(
        "$ agora jobs submit -f examples/jobs/digits-cnn/job.yaml --agreement … --provider … --wait"
        f"   ({time.monotonic() - started:.0f} s)"
    )
    for event in job["history"]:
        say(f"  {event['state']:12} {event['reason']}")
    page = beta.get(f"/api/v1/jobs/{job['id']}/logs")
    for line in page["lines"]:
        if line["stage"] == "node" or "epoch" in line["line"]:
            say(f"  [{line['stage']}] {line['line'][:100]}")
    metrics = job["result"]["metrics"]
    say(
        f"  Acme's node, on {metrics['holdout_rows']} rows it kept back: ONNX Runtime accuracy "
        f"{metrics['onnx_accuracy']:.3f}; max |ONNX - native| {metrics['max_abs_diff']:.1e} "
        f"on {metrics['probe_inputs']} probe inputs"
    )

    step(11, "Beta receives only the model, and anyone can check its whole lineage on chain")
    out = work / "digits-cnn.onnx"
    fetched = subprocess.run(
        [*agora_command(), "jobs", "fetch", job["id"], "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        said = fetched.stderr.strip().splitlines() or [f"exit {fetched.returncode}"]
        raise AgoraError(f"agora jobs fetch failed: {said[-1].removeprefix('error: ')}")
    say(
        f"$ agora jobs fetch {job['id'][:17]}… -o {out.name}   → {out.stat().st_size} bytes "
        "+ provenance sidecar"
    )
    held = [sha256_file(p)[0] for p in (root / "beta" / "objects").rglob("*") if p.is_file()]
    leaked = digits["sha256"].removeprefix("sha256:") in held
    say(f"  the dataset's bytes on Beta's node: {'PRESENT' if leaked else 'none'} — only the model crossed")
    if leaked:
        raise AgoraError("the dataset reached the consumer's node")
    verify(out, root)
    _stored_rows_refused(work, beta, env, agreement_id, acme_url)


KNN_JOB = """\
import json, os
from pathlib import Path

import joblib
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

with np.load(Path(os.environ["AGORA_DATA"]) / "train.npz") as data:
    X, y = data["X"].reshape(len(data["X"]), -1), data["y"]
# a nearest-neighbour model keeps every training row: released, it would be the dataset itself
joblib.dump(KNeighborsClassifier(n_neighbors=1).fit(X, y), Path(os.environ["AGORA_OUTPUT"]) / "model.joblib")
print("row 0 of the training data:", X[0].tolist())
"""


def _stored_rows_refused(
    work: Path, beta: NodeClient, env: dict[str, str], agreement_id: str, acme_url: str
) -> None:
    """Step 12: a job whose model would carry the training rows out is refused by Acme's node."""
    step(12, "Beta tries a model that is the data itself; Acme's node refuses to release it")
    bundle = work / "knn-job"
    bundle.mkdir()
    (bundle / "train.py").write_text(KNN_JOB)
    (bundle / "job.yaml").write_text(
        "name: digits-knn\n"
        "code: {bundle: ., entrypoint: train.py}\n"
        "resources: {cpu_seconds: 120, memory: 1GiB, wall_time: 2m, max_output: 20MiB}\n"
        "output: {format: sklearn, path: model.joblib}\n"
        "onnx: {input_shape: [1, 64]}\n"
    )
    submitted = subprocess.run(
        [
            *agora_command(),
            "jobs",
            "submit",
            "-f",
            str(bundle / "job.yaml"),
            "--agreement",
            agreement_id,
            "--provider",
            acme_url,
            "--wait",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    said = (submitted.stderr.strip().splitlines() or [""])[-1]
    say("$ agora jobs submit -f knn-job/job.yaml --agreement … --provider … --wait   (KNeighborsClassifier)")
    say(f"  exit {submitted.returncode}: {said}")
    if submitted.returncode == 0 or "FAILED" not in said:
        raise AgoraError("a model holding the training rows was not refused")
    job_id = submitted.stdout.strip().splitlines()[-1]
    logs = beta.get(f"/api/v1/jobs/{job_id}/logs")
    printed = [line for line in logs["lines"] if "row 0 of the training data" in line["line"]]
    say(
        f"  the job also printed a training row: Acme's terms (job_logs: tail) let Beta read the end of "
        f"a job's own output, so {len(printed)} line(s) show it; with job_logs: none (the default) "
        "Beta would read the node's lines only"
    )
