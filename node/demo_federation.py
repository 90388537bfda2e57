"""The demo's federated-learning chapter: Beta trains one CNN across three organisations'
digit scans — Acme's, Gamma's and Delta's, each holding a very different mix of digits — and
no scan leaves its owner: each provider's node trains in its own sandbox and sends back only a
checked model update. Every round is anchored on Beta's chain, and `agora verify` shows how
the global model came to be."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from kernel.client import NodeClient
from kernel.errors import AgoraError
from node.demo_kit import agora_command, negotiate, node_token, say, served_node, step, verify, wait_catalog
from training_jobs.datasets import digits_partitions

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "federation" / "digits-cnn"
ROUNDS = 20


def federated_learning(
    root: Path, work: Path, beta: NodeClient, beta_url: str, beta_env: dict[str, str], beta_token: str,
    acme: NodeClient, acme_url: str,
) -> None:  # fmt: skip
    """Steps 13-15: three providers, one federation, the global model verified."""
    step(
        13,
        "Gamma Grid and Delta Rail join; Acme, Gamma and Delta each offer a share of digit scans "
        "for federated learning",
    )
    shares = digits_partitions(work / "shares", 3, iid=False, seed=1)
    with ExitStack() as stack:
        providers: list[tuple[str, NodeClient, str]] = [("Acme Wind", acme, acme_url)]
        for name, home in (("Gamma Grid", "gamma"), ("Delta Rail", "delta")):
            url, _ = stack.enter_context(served_node(root / home, name))
            token = node_token(root / home, url, ["admin"], f"{home}-data-steward")
            providers.append((name, stack.enter_context(NodeClient(url, token)), url))
        agreements = []
        for (name, client, url), share in zip(providers, shares, strict=True):
            offering = _offer(client, share, name)
            beta.post_json("/api/v1/participants", {"url": url})
            client.post_json("/api/v1/participants", {"url": beta_url})
            item = _catalog_item(beta, client, offering["id"])
            agreed = negotiate(beta, url, item, "research", "federate")
            if agreed["state"] != "FINALIZED":
                raise AgoraError(
                    f"the federate negotiation with {name} ended {agreed['state']}: {agreed['reason']}"
                )
            agreements.append(agreed["agreement_id"])
            counts = ", ".join(f"{d}:{n}" for d, n in enumerate(offering["counts"]))
            say(
                f"  {name:11} {offering['rows']:4} scans (digit:count {counts}) "
                f"→ agreement {agreed['agreement_id'][:14]}…"
            )
        _train(root, work, beta_env, beta_url, beta_token, agreements)


def _offer(client: NodeClient, share: Path, name: str) -> dict[str, Any]:
    import numpy as np

    with np.load(share) as data:
        labels = data["y"]
    metadata = {
        "name": "digit-scans-share",
        "title": f"Digit scans held by {name}",
        "media_type": "application/x-npz",
        "access_modes": ["federate"],
        "policy": {"template": "provide-access"},
    }
    created = client.upload("/api/v1/offerings", share, {"metadata": json.dumps(metadata)})
    return {"id": created["id"], "rows": len(labels), "counts": np.bincount(labels, minlength=10).tolist()}


def _catalog_item(beta: NodeClient, provider: NodeClient, offering_id: str) -> dict[str, Any]:
    address = provider.get("/health")["participant"]
    deadline = time.monotonic() + 30
    while True:
        items = [i for i in wait_catalog(beta, address, 1) if i["offering_id"] == offering_id]
        if items:
            return items[0]
        if time.monotonic() > deadline:
            raise AgoraError("the provider's federate offering did not reach Beta's catalog")
        time.sleep(0.2)


def _train(
    root: Path, work: Path, beta_env: dict[str, str], beta_url: str, beta_token: str, agreements: list[str]
) -> None:
    step(
        14,
        f"Beta's node coordinates {ROUNDS} rounds; each provider trains in its own sandbox and "
        "sends only a checked update",
    )
    spec = yaml.safe_load((EXAMPLE / "federation.yaml").read_text())
    spec.update(
        providers=[{"agreement": a} for a in agreements],
        rounds=ROUNDS,
        min_participants=3,
        round_deadline="2m",
    )
    spec["model"]["bundle"] = str(EXAMPLE)
    path = work / "federation.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**beta_env, "AGORA_URL": beta_url, "AGORA_TOKEN": beta_token}
    created = _agora(env, "fl", "create", "-f", str(path), "--json")
    fed = json.loads(created)
    say(f"$ agora fl create -f federation.yaml   → {fed['id']} {fed['state']}: {fed['reason']}")
    started = time.monotonic()
    _agora(env, "fl", "start", fed["id"])
    say(f"$ agora fl start {fed['id'][:17]}…")
    with NodeClient(beta_url, beta_token) as beta:
        shown = 0
        while True:
            fed = beta.get(f"/api/v1/federations/{fed['id']}")
            rounds = beta.get(f"/api/v1/federations/{fed['id']}/rounds")
            for rnd in rounds:
                if rnd["round"] > shown and rnd["state"] == "DONE" and rnd["round"] > 1:
                    shown = rnd["round"]
                    per = rnd["metrics"].get("providers", {})
                    each = "  ".join(f"{m['accuracy']:.3f}" for m in per.values())
                    label = f"{ROUNDS} (final)" if rnd["round"] > ROUNDS else f"{rnd['round'] - 1}"
                    say(
                        f"  global model after round {label}: held-out accuracy "
                        f"{rnd['metrics']['accuracy']:.3f} (per provider {each})"
                    )
            if fed["state"] in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            if time.monotonic() - started > 600:
                raise AgoraError("the federation did not end within 10 minutes")
            time.sleep(0.3)
    if fed["state"] != "COMPLETED":
        raise AgoraError(f"the federation ended {fed['state']}: {fed['reason']}")
    final = fed["result"].get("final_evaluation", {})
    say(
        f"  {fed['reason']} in {time.monotonic() - started:.0f} s; final held-out accuracy "
        f"{final.get('accuracy', 0):.3f} on {final.get('num_examples')} rows the providers kept back"
    )
    if float(final.get("accuracy", 0)) < 0.90:
        raise AgoraError(f"the federated model reached only {final.get('accuracy')} held-out accuracy")

    step(15, "Beta fetches the global model; anyone checks its rounds on chain")
    artifact = (
        ["-o", str(work / "global.onnx")]
        if fed["result"].get("onnx_sha256")
        else ["--weights", "-o", str(work / "global.safetensors")]
    )
    _agora(env, "fl", "fetch", fed["id"], *artifact)
    out = Path(artifact[-1])
    say(
        f"$ agora fl fetch {fed['id'][:17]}… {' '.join([*artifact[:-1], out.name])}"
        f"   → {out.stat().st_size} bytes + provenance sidecar"
    )
    _wait_anchored(beta_url, beta_token, fed["id"])
    _agora(env, "fl", "fetch", fed["id"], *artifact)  # the sidecar now holds every anchor
    verify(out, root)


def _wait_anchored(url: str, token: str, federation_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with NodeClient(url, token) as beta:
        while time.monotonic() < deadline:
            rounds = beta.get(f"/api/v1/federations/{federation_id}/rounds")
            docs = [beta.get(f"/api/v1/provenance/{r['asset_id']}") for r in rounds if r.get("asset_id")]
            if docs and all(d["anchor"]["status"] == "ANCHORED" for d in docs):
                return
            time.sleep(0.3)


def _agora(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*agora_command(), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        said = result.stderr.strip().splitlines() or [f"agora {args[0]} exited {result.returncode}"]
        raise AgoraError(f"agora {' '.join(args[:2])} failed: {said[-1].removeprefix('error: ')}")
    return result.stdout
