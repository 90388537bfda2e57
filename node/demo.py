"""``agora demo``: the end-to-end story on embedded defaults, told step by step.

Two organisations' nodes as real processes: Acme declares offerings in a manifest, its node
notarizes them; Beta browses Acme's catalog, negotiates, fetches data under an agreement and
verifies it; then Beta trains a CNN on Acme's digit scans without the data leaving Acme's
node (compute-to-data), receives only the ONNX model and verifies its whole lineage; bad
input is refused. Each later capability extends the story.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kernel.cli import console
from kernel.client import NodeClient
from kernel.errors import AgoraError, ConfigurationError, ServiceUnavailable
from kernel.hashing import sha256_file
from kernel.sidecar import sidecar_of, write_sidecar

PASSPHRASE = "demo-passphrase-not-for-production"


def _step(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{text}[/]")


def _say(text: str) -> None:
    console.print(f"   {text}", highlight=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agora() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


@contextmanager
def _served_node(home: Path, name: str, crawl_interval: str = "30") -> Iterator[tuple[str, dict[str, str]]]:
    """``agora init`` + ``agora serve`` as a real process on a free loopback port."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(
        AGORA_HOME=str(home),
        AGORA_PUBLIC_URL=url,
        AGORA_KEY_PASSPHRASE=PASSPHRASE,
        AGORA_ANCHOR_MAX_DELAY="0.5",
        AGORA_CATALOG_CRAWL_INTERVAL=crawl_interval,
    )
    init = subprocess.run([*_agora(), "init", "--name", name], env=env, capture_output=True, text=True)
    if init.returncode != 0:
        raise ServiceUnavailable(f"agora init failed: {init.stderr.strip()}")
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [*_agora(), "serve", "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_healthy(url, proc, home)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], home: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"the node exited:\n{(home / 'serve.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServiceUnavailable("the node did not become healthy within 60 s")


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


def _wait_anchored(client: NodeClient, offering_ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        anchors = [client.get(f"/api/v1/offerings/{oid}")["anchor"] for oid in offering_ids]
        if all(a["status"] == "ANCHORED" for a in anchors):
            return anchors
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"not anchored within {timeout:.0f} s: {[a['status'] for a in anchors]}")
        time.sleep(0.2)


def _verify(path: Path, root: Path, expect_ok: bool = True) -> None:
    """Run `agora verify` as a bystander would: no node home, only the file and its sidecar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["AGORA_HOME"] = str(root / "bystander")
    result = subprocess.run([*_agora(), "verify", str(path)], env=env, capture_output=True, text=True)
    _say(f"$ agora verify {path.name}   (exit {result.returncode})")
    for line in (result.stdout + result.stderr).strip().splitlines():
        _say("  " + line)
    if (result.returncode == 0) != expect_ok:
        raise AgoraError(
            f"agora verify {path.name} exited {result.returncode}, which the story did not expect"
        )


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
    """Stop at once, in one line, when Beta's training job would have no sandbox to run in."""
    from training_jobs.sandbox import BubblewrapSandbox, SandboxUnavailable

    if shutil.which("bwrap") is None:
        raise ConfigurationError(
            "the demo trains a model in a bubblewrap sandbox: install the Debian package bubblewrap "
            "(apt-get install bubblewrap; `make demo` does it when run as root)"
        )
    try:
        BubblewrapSandbox().check()
    except SandboxUnavailable as exc:
        raise ConfigurationError(f"the demo's training step needs a working sandbox: {exc.detail}") from None


def _token(home: Path, url: str, scopes: list[str], subject: str) -> str:
    from node.auth import TokenIssuer
    from node.settings import Settings

    return TokenIssuer.for_node(Settings.load(home=home, public_url=url)).issue(scopes, 900, subject=subject)


def _story(root: Path, work: Path) -> None:
    from marketplace.manifests.cli import apply_manifest, plan_manifest

    _step(1, "Acme Wind and Beta Analytics each set up a node")
    with (
        _served_node(root / "acme", "Acme Wind") as (acme_url, _),
        _served_node(root / "beta", "Beta Analytics", crawl_interval="0.5") as (beta_url, beta_env),
    ):
        acme_token = _token(root / "acme", acme_url, ["admin"], "acme-data-steward")
        beta_token = _token(root / "beta", beta_url, ["admin"], "beta-data-scientist")
        with NodeClient(acme_url, acme_token) as acme, NodeClient(beta_url, beta_token) as beta:
            acme_id, beta_id = acme.get("/health"), beta.get("/health")
            _say(f"$ agora init --name 'Acme Wind'       → participant {acme_id['participant']}, {acme_url}")
            _say(f"$ agora init --name 'Beta Analytics'  → participant {beta_id['participant']}, {beta_url}")
            _say(
                f"each: database {acme_id['database']}, storage {acme_id['storage']}, "
                f"chain {acme_id['chain']}"
            )

            _step(2, "Acme's data steward declares four offerings and their terms in a manifest")
            manifest = _demo_manifest(work, beta_url)
            plan = plan_manifest(acme, manifest)
            _say("$ agora plan -f manifest.yaml")
            for change in plan["changes"]:
                _say(f"  {change['action']:10} {change['target']:18} {change['detail']}")
            applied = apply_manifest(acme, manifest)
            _say(f"$ agora apply -f manifest.yaml   → {applied['summary']}")
            again = apply_manifest(acme, manifest)
            _say(f"$ agora apply -f manifest.yaml   → {again['summary']}")
            for offering in acme.get("/api/v1/offerings")["items"]:
                from marketplace.policy import describe, parse_policy

                terms = " ".join(describe(parse_policy(offering["policy"]))) if offering["policy"] else "-"
                _say(f"  {offering['name']:18} {terms}")

            _step(3, "She also registers a model by upload")
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
            _say(
                f"$ agora offerings add {model.name} --kind model   (logistic regression, test accuracy "
                f"{accuracy:.3f}) → {uploaded['sha256'][:23]}…, anchor {uploaded['anchor']['status']}"
            )

            _step(4, "Acme's node notarizes every version on its chain, in one Merkle batch")
            ids = [o["id"] for o in acme.get("/api/v1/offerings")["items"]]
            anchors = _wait_anchored(acme, ids)
            first = anchors[0]
            _say(f"EVM chain {first['chain_id']}, registry {first['registry']}")
            roots = {a["batch_root"] for a in anchors}
            _say(
                f"{len(anchors)} versions under {len(roots)} batch root(s), "
                f"e.g. {first['batch_root'][:18]}…, "
                f"tx {first['tx_hash'][:18]}…, block {first['block_number']}"
            )

            _step(5, "Beta adds Acme as a peer; its catalog shows what Acme's policies could grant Beta")
            beta.post_json("/api/v1/participants", {"url": acme_url})
            _say(f"$ agora peers add {acme_url}")
            items = _wait_catalog(beta, acme_id["participant"], 4)
            for item in items:
                _say(f"  {item['kind']:8} {item['title']:32} access {', '.join(item['access_modes'])}")
            _say("  (the internal maintenance log is prohibit-access: Beta's catalog never hears of it)")
            hits = beta.get("/api/v1/catalog", q="turbines")["items"]
            _say(f"$ agora catalog -q turbines   → {', '.join(h['title'] for h in hits)}")

            _step(6, "Beta negotiates with Acme's node; the policy decides, both sign, the chain records")
            offers = {i["name"]: i for i in items}
            denied = _negotiate(beta, acme_url, offers["bearing-faults"], "marketing", "compute")
            _say(
                f"$ agora negotiate {offers['bearing-faults']['offering_id'][:8]}… "
                "--purpose marketing --mode compute"
            )
            _say(f"  → {denied['state']}: {denied['reason']}")
            agreed = _negotiate(
                beta, acme_url, offers["turbine-vibration"], "predictive-maintenance", "download"
            )
            _say(
                f"$ agora negotiate {offers['turbine-vibration']['offering_id'][:8]}… "
                "--purpose predictive-maintenance --mode download --wait"
            )
            for event in agreed["history"]:
                _say(f"  {event['to']:10} {event['message']:38} {event['reason']}")
            agreement = agreed["agreement"]
            if agreed["state"] != "FINALIZED" or agreement is None:
                raise AgoraError(f"the negotiation ended {agreed['state']}: {agreed['reason']}")
            _say(
                f"  agreement {agreement['id'][:18]}… signed by both (EIP-712), recorded in tx "
                f"{str(agreement['tx_hash'])[:18]}…; uses allowed: {agreement['max_uses']}"
            )

            _step(7, "Beta's node fetches the data under the agreement and checks it against the chain")
            transfer = beta.post_json("/api/v1/transfers", {"agreement_id": agreement["id"]})
            out = work / "vibration-received.csv"
            digest, size = beta.download(
                f"/api/v1/transfers/{transfer['id']}/data", out, expected_sha256=transfer["sha256"]
            )
            sidecar = write_sidecar(out, beta.get(f"/api/v1/transfers/{transfer['id']}/provenance"))
            original, _ = sha256_file(work / "data" / "vibration.csv")
            verdict = "identical" if digest == original else "DIFFERENT"
            _say(f"$ agora transfer {agreement['id'][:10]}… -o {out.name}   → {transfer['state']}")
            _say(
                f"  → {size} bytes, sha256:{digest[:16]}… — {verdict} to Acme's source; "
                f"sidecar {sidecar.name}"
            )
            usage = acme.get(f"/api/v1/agreements/{agreement['id']}")
            _say(f"  Acme's usage log: {usage['uses']} of {usage['max_uses']} uses taken")
            if digest != original:
                raise AgoraError("the received file differs from the registered one")

            _step(8, "Anyone checks it against the chain alone: agora verify")
            _verify(out, root)
            tampered = work / "vibration-tampered.csv"
            data = bytearray(out.read_bytes())
            data[100] ^= 0x01
            tampered.write_bytes(bytes(data))
            shutil.copy(sidecar, sidecar_of(tampered))
            _say("one flipped bit later:")
            _verify(tampered, root, expect_ok=False)

            digits = offers["digit-scans"]
            _compute_to_data(root, work, beta, acme_url, beta_url, beta_env, beta_token, digits)

            _step(12, "Bad input is refused with its reason, and changes nothing")
            before = len(acme.get("/api/v1/offerings")["items"])
            try:
                acme.upload(
                    "/api/v1/offerings", model, {"metadata": json.dumps({"title": "", "kind": "spreadsheet"})}
                )
            except AgoraError as exc:
                _say(f"refused ({exc.status}): {exc.detail}")
            after = len(acme.get("/api/v1/offerings")["items"])
            _say(f"offerings before and after: {before} → {after}")

    console.print("\n[bold green]Demo complete.[/] Federated learning joins this story as it is built.")


def _compute_to_data(
    root: Path,
    work: Path,
    beta: NodeClient,
    acme_url: str,
    beta_url: str,
    beta_env: dict[str, str],
    beta_token: str,
    digits: dict[str, Any],
) -> None:
    """Steps 9-11: Beta trains a CNN on Acme's digits without the data leaving Acme's node."""
    _step(9, "Acme's manifest offers its digit scans for compute only; Beta agrees to train on them")
    _say(
        f"  {digits['title']}: access {', '.join(digits['access_modes'])} "
        f"({digits['sha256'][:23]}…; never downloadable)"
    )
    agreed = _negotiate(beta, acme_url, digits, "research", "compute")
    if agreed["state"] != "FINALIZED":
        raise AgoraError(f"the compute negotiation ended {agreed['state']}: {agreed['reason']}")
    agreement_id = agreed["agreement_id"]
    _say(
        f"$ agora negotiate {digits['offering_id'][:8]}… --purpose research --mode compute --wait "
        f"→ {agreement_id[:18]}…"
    )

    _step(10, "Beta's CNN trains in Acme's sandbox; Acme's node verifies it and translates it to ONNX")
    examples = Path(__file__).resolve().parent.parent / "examples" / "jobs" / "digits-cnn"
    env = {**beta_env, "AGORA_URL": beta_url, "AGORA_TOKEN": beta_token}
    started = time.monotonic()
    submitted = subprocess.run(
        [
            *_agora(),
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
    _say(
        "$ agora jobs submit -f examples/jobs/digits-cnn/job.yaml --agreement … --provider … --wait"
        f"   ({time.monotonic() - started:.0f} s)"
    )
    for step in job["history"]:
        _say(f"  {step['state']:12} {step['reason']}")
    page = beta.get(f"/api/v1/jobs/{job['id']}/logs")
    for line in page["lines"]:
        if line["stage"] == "node" or "epoch" in line["line"]:
            _say(f"  [{line['stage']}] {line['line'][:100]}")
    metrics = job["result"]["metrics"]
    _say(
        f"  Acme's node, on {metrics['holdout_rows']} rows it kept back: ONNX Runtime accuracy "
        f"{metrics['onnx_accuracy']:.3f}; max |ONNX - native| {metrics['max_abs_diff']:.1e} "
        f"on {metrics['probe_inputs']} probe inputs"
    )

    _step(11, "Beta receives only the model, and anyone can check its whole lineage on chain")
    out = work / "digits-cnn.onnx"
    fetched = subprocess.run(
        [*_agora(), "jobs", "fetch", job["id"], "-o", str(out)], env=env, capture_output=True, text=True
    )
    if fetched.returncode != 0:
        said = fetched.stderr.strip().splitlines() or [f"exit {fetched.returncode}"]
        raise AgoraError(f"agora jobs fetch failed: {said[-1].removeprefix('error: ')}")
    _say(
        f"$ agora jobs fetch {job['id'][:17]}… -o {out.name}   → {out.stat().st_size} bytes "
        "+ provenance sidecar"
    )
    held = [sha256_file(p)[0] for p in (root / "beta" / "objects").rglob("*") if p.is_file()]
    leaked = digits["sha256"].removeprefix("sha256:") in held
    _say(f"  the dataset's bytes on Beta's node: {'PRESENT' if leaked else 'none'} — only the model crossed")
    if leaked:
        raise AgoraError("the dataset reached the consumer's node")
    _verify(out, root)


def _negotiate(
    client: NodeClient, provider_url: str, item: dict[str, Any], purpose: str, mode: str, timeout: float = 60
) -> dict[str, Any]:
    started = client.post_json(
        "/api/v1/negotiations",
        {
            "offering_id": item["offering_id"],
            "provider": provider_url,
            "purpose": purpose,
            "access_mode": mode,
        },
    )
    deadline = time.monotonic() + timeout
    while True:
        negotiation: dict[str, Any] = client.get(f"/api/v1/negotiations/{started['id']}")
        if negotiation["state"] in ("FINALIZED", "TERMINATED"):
            return negotiation
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"negotiation stuck in {negotiation['state']}: {negotiation['reason']}")
        time.sleep(0.1)


def _demo_manifest(work: Path, beta_url: str) -> Path:
    """The example manifest (three offerings, generated data) plus Beta as a peer."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    shutil.copytree(examples / "data", work / "data")
    path = work / "manifest.yaml"
    path.write_text((examples / "manifest.yaml").read_text() + f"peers:\n  - url: {beta_url}\n")
    return path


def _wait_catalog(client: NodeClient, provider: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = [i for i in client.get("/api/v1/catalog")["items"] if i["provider"] == provider]
        if len(items) >= count:
            return items
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the peer's catalog did not arrive within {timeout:.0f} s")
        time.sleep(0.2)
