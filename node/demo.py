"""``agora demo``: the end-to-end story on embedded defaults, told step by step.

Two organisations' nodes as real processes: Acme declares offerings in a manifest, its node
notarizes them; Beta browses Acme's catalog, negotiates, fetches data under an agreement and
verifies it; then Beta trains a CNN on Acme's digit scans without the data leaving Acme's
node (compute-to-data), receives only the ONNX model and verifies its whole lineage; a model
built to carry the rows out is refused; then Beta trains one model federated across three
organisations' data, verifies its rounds on chain; Acme's datasets carry schemas, quality
suites and profiles into the catalog, a version failing its suite is not offered, a dataset
kept in DVC gets a version when its data moves, and a model alias moves before Beta
negotiates for it by name; bad input is refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from kernel.cli import console
from kernel.client import NodeClient
from kernel.errors import AgoraError, ConfigurationError
from kernel.hashing import sha256_file
from kernel.sidecar import sidecar_of, write_sidecar
from node.demo_kit import (
    negotiate,
    node_token,
    say,
    served_node,
    step,
    verify,
    wait_anchored,
    wait_catalog,
)


def _make_model(directory: Path) -> tuple[Path, float]:
    """A small scikit-learn classifier on the digits, translated to ONNX."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    onnx_model = to_onnx(model, x_train[:1], target_opset=17, options={"zipmap": False})
    path = directory / "digits-logreg.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    return path, float(model.score(x_test, y_test))


def run_demo(keep: bool = False) -> None:
    console.print(
        "[bold]Agora demo[/]: two organisations' nodes on embedded defaults (SQLite, local object "
        "store, an in-process EVM chain each), as real processes on loopback."
    )
    _require_sandbox()
    root = Path(tempfile.mkdtemp(prefix="agora-demo-"))
    work = root / "work"
    work.mkdir()
    try:
        _story(root, work)
    finally:
        if keep:
            console.print(f"\nkept the demo's files in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _require_sandbox() -> None:
    """Stop at once, in one line, when Beta's training job would have no sandbox to run in, or
    Acme's DVC repository no git."""
    from training_jobs.sandbox import BubblewrapSandbox, SandboxUnavailable

    if shutil.which("git") is None:
        raise ConfigurationError(
            "the demo keeps a dataset in a DVC repository: install the Debian package git "
            "(apt-get install git; `make demo` does it when run as root)"
        )
    if shutil.which("bwrap") is None:
        raise ConfigurationError(
            "the demo trains a model in a bubblewrap sandbox: install the Debian package bubblewrap "
            "(apt-get install bubblewrap; `make demo` does it when run as root)"
        )
    try:
        BubblewrapSandbox().check()
    except SandboxUnavailable as exc:
        raise ConfigurationError(f"the demo's training step needs a working sandbox: {exc.detail}") from None


def _story(root: Path, work: Path) -> None:
    from marketplace.manifests.cli import apply_manifest, plan_manifest
    from node.demo_compute import compute_to_data
    from node.demo_dsp import plain_dsp_peer
    from node.demo_federation import federated_learning
    from node.demo_quality import data_quality

    step(1, "Acme Wind and Beta Analytics each set up a node")
    with (
        served_node(root / "acme", "Acme Wind") as (acme_url, _),
        served_node(root / "beta", "Beta Analytics", crawl_interval="0.5") as (beta_url, beta_env),
    ):
        acme_token = node_token(root / "acme", acme_url, ["admin"], "acme-data-steward")
        beta_token = node_token(root / "beta", beta_url, ["admin"], "beta-data-scientist")
        with NodeClient(acme_url, acme_token) as acme, NodeClient(beta_url, beta_token) as beta:
            acme_id, beta_id = acme.get("/health"), beta.get("/health")
            say(f"$ agora init --name 'Acme Wind'       → participant {acme_id['participant']}, {acme_url}")
            say(f"$ agora init --name 'Beta Analytics'  → participant {beta_id['participant']}, {beta_url}")
            say(
                f"each: database {acme_id['database']}, storage {acme_id['storage']}, "
                f"chain {acme_id['chain']}"
            )

            step(2, "Acme's data steward declares four offerings and their terms in a manifest")
            manifest = _demo_manifest(work, beta_url)
            plan = plan_manifest(acme, manifest)
            say("$ agora plan -f manifest.yaml")
            for change in plan["changes"]:
                say(f"  {change['action']:10} {change['target']:18} {change['detail']}")
            applied = apply_manifest(acme, manifest)
            say(f"$ agora apply -f manifest.yaml   → {applied['summary']}")
            again = apply_manifest(acme, manifest)
            say(f"$ agora apply -f manifest.yaml   → {again['summary']}")
            for offering in acme.get("/api/v1/offerings")["items"]:
                from marketplace.policy import describe, parse_policy

                terms = " ".join(describe(parse_policy(offering["policy"]))) if offering["policy"] else "-"
                say(f"  {offering['name']:18} {terms}")

            step(3, "She also registers a model by upload")
            model, accuracy = _make_model(work)
            uploaded = acme.upload(
                "/api/v1/offerings",
                model,
                {
                    "metadata": json.dumps(
                        {
                            "name": "digits-logreg",
                            "kind": "model",
                            "title": "Digits classifier (ONNX)",
                            "media_type": "application/onnx",
                            "license": "Apache-2.0",
                            "policy": {"template": "provide-access"},
                        }
                    )
                },
            )
            say(
                f"$ agora offerings add {model.name} --kind model   (logistic regression, test accuracy "
                f"{accuracy:.3f}) → {uploaded['sha256'][:23]}…, anchor {uploaded['anchor']['status']}"
            )

            step(4, "Acme's node notarizes every version on its chain, in one Merkle batch")
            ids = [o["id"] for o in acme.get("/api/v1/offerings")["items"]]
            anchors = wait_anchored(acme, ids)
            first = anchors[0]
            say(f"EVM chain {first['chain_id']}, registry {first['registry']}")
            roots = {a["batch_root"] for a in anchors}
            say(
                f"{len(anchors)} versions under {len(roots)} batch root(s), "
                f"e.g. {first['batch_root'][:18]}…, "
                f"tx {first['tx_hash'][:18]}…, block {first['block_number']}"
            )

            step(5, "Beta adds Acme as a peer; its catalog shows what Acme's policies could grant Beta")
            beta.post_json("/api/v1/participants", {"url": acme_url})
            say(f"$ agora peers add {acme_url}")
            items = wait_catalog(beta, acme_id["participant"], 4)
            for item in items:
                say(f"  {item['kind']:8} {item['title']:32} access {', '.join(item['access_modes'])}")
            say("  (the internal maintenance log is prohibit-access: Beta's catalog never hears of it)")
            hits = beta.get("/api/v1/catalog", q="turbines")["items"]
            say(f"$ agora catalog -q turbines   → {', '.join(h['title'] for h in hits)}")

            step(6, "Beta negotiates with Acme's node; the policy decides, both sign, the chain records")
            offers = {i["name"]: i for i in items}
            denied = negotiate(beta, acme_url, offers["bearing-faults"], "marketing", "compute")
            say(
                f"$ agora negotiate {offers['bearing-faults']['offering_id'][:8]}… "
                "--purpose marketing --mode compute"
            )
            say(f"  → {denied['state']}: {denied['reason']}")
            agreed = negotiate(
                beta, acme_url, offers["turbine-vibration"], "predictive-maintenance", "download"
            )
            say(
                f"$ agora negotiate {offers['turbine-vibration']['offering_id'][:8]}… "
                "--purpose predictive-maintenance --mode download --wait"
            )
            for event in agreed["history"]:
                say(f"  {event['to']:10} {event['message']:38} {event['reason']}")
            agreement = agreed["agreement"]
            if agreed["state"] != "FINALIZED" or agreement is None:
                raise AgoraError(f"the negotiation ended {agreed['state']}: {agreed['reason']}")
            say(
                f"  agreement {agreement['id'][:18]}… signed by both (EIP-712), recorded in tx "
                f"{str(agreement['tx_hash'])[:18]}…; uses allowed: {agreement['max_uses']}"
            )

            step(7, "Beta's node fetches the data under the agreement and checks it against the chain")
            transfer = beta.post_json("/api/v1/transfers", {"agreement_id": agreement["id"]})
            out = work / "vibration-received.csv"
            digest, size = beta.download(
                f"/api/v1/transfers/{transfer['id']}/data", out, expected_sha256=transfer["sha256"]
            )
            sidecar = write_sidecar(out, beta.get(f"/api/v1/transfers/{transfer['id']}/provenance"))
            original, _ = sha256_file(work / "data" / "vibration.csv")
            verdict = "identical" if digest == original else "DIFFERENT"
            say(f"$ agora transfer {agreement['id'][:10]}… -o {out.name}   → {transfer['state']}")
            say(
                f"  → {size} bytes, sha256:{digest[:16]}… — {verdict} to Acme's source; "
                f"sidecar {sidecar.name}"
            )
            usage = acme.get(f"/api/v1/agreements/{agreement['id']}")
            say(f"  Acme's usage log: {usage['uses']} of {usage['max_uses']} uses taken")
            if digest != original:
                raise AgoraError("the received file differs from the registered one")

            step(8, "Anyone checks it against the chain alone: agora verify")
            verify(out, root)
            tampered = work / "vibration-tampered.csv"
            data = bytearray(out.read_bytes())
            data[100] ^= 0x01
            tampered.write_bytes(bytes(data))
            shutil.copy(sidecar, sidecar_of(tampered))
            say("one flipped bit later:")
            verify(tampered, root, expect_ok=False)

            digits = offers["digit-scans"]
            compute_to_data(root, work, beta, acme_url, beta_url, beta_env, beta_token, digits)
            federated_learning(root, work, beta, beta_url, beta_env, beta_token, acme, acme_url)
            last = data_quality(work, manifest, acme, beta, acme_url, first_step=16)
            last = plain_dsp_peer(acme, acme_url, last)

            step(last, "Bad input is refused with its reason, and changes nothing")
            before = len(acme.get("/api/v1/offerings")["items"])
            try:
                acme.upload(
                    "/api/v1/offerings", model, {"metadata": json.dumps({"title": "", "kind": "spreadsheet"})}
                )
            except AgoraError as exc:
                say(f"refused ({exc.status}): {exc.detail}")
            after = len(acme.get("/api/v1/offerings")["items"])
            say(f"offerings before and after: {before} → {after}")

    console.print("\n[bold green]Demo complete.[/]")


def _demo_manifest(work: Path, beta_url: str) -> Path:
    """The example manifest (three offerings, generated data) plus Beta as a peer."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    shutil.copytree(examples / "data", work / "data")
    shutil.copytree(examples / "quality", work / "quality")
    path = work / "manifest.yaml"
    path.write_text((examples / "manifest.yaml").read_text() + f"peers:\n  - url: {beta_url}\n")
    return path
