"""``agora demo``: the end-to-end story on embedded defaults, told step by step.

Each later capability extends the story. Today it shows one organisation's node: its
identity, its API, registering a dataset and a model, listing, downloading and checking
what came back, and a bad request being refused without changing anything.
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
from kernel.errors import AgoraError, ServiceUnavailable
from kernel.hashing import sha256_file
from marketplace.cli import write_sidecar

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
def _served_node(home: Path, name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``agora init`` + ``agora serve`` as a real process on a free loopback port."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(
        AGORA_HOME=str(home),
        AGORA_PUBLIC_URL=url,
        AGORA_KEY_PASSPHRASE=PASSPHRASE,
        AGORA_ANCHOR_MAX_DELAY="0.5",
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


def _make_dataset(directory: Path) -> Path:
    """The digits dataset bundled with scikit-learn, as CSV (nothing is downloaded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = directory / "digits.csv"
    with path.open("w") as f:
        f.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
        for row, label in zip(digits.data, digits.target, strict=True):
            f.write(",".join(str(int(v)) for v in row) + f",{int(label)}\n")
    return path


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
        "[bold]Agora demo[/]: one organisation's node, on embedded defaults "
        "(SQLite, local object store), as real processes on loopback."
    )
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


def _story(root: Path, work: Path) -> None:
    from node.auth import TokenIssuer
    from node.identity import participant_address, token_signing_key
    from node.settings import Settings

    _step(1, "Acme Wind sets up its node")
    home = root / "acme"
    with _served_node(home, "Acme Wind") as (url, _env):
        settings = Settings.load(home=home, public_url=url)
        address = participant_address(settings)
        _say(f"$ agora init --name 'Acme Wind'   → participant {address}")
        _say(f"$ agora serve                      → listening on {url}")
        _say(f"the org key lives in an encrypted keystore: {settings.keystore_path.name}")

        issuer = TokenIssuer(token_signing_key(settings), settings.token_issuer, address, 3600)
        token = issuer.issue(["offerings:write", "catalog:read"], 900, subject="data-steward")
        _step(2, "A data steward gets a bearer token")
        _say("$ agora token create --scope offerings:write --scope catalog:read --ttl 15m")
        with NodeClient(url, token) as client:
            health = client.get("/health")
            _say(
                f"GET /health → {health['status']}: database {health['database']}, "
                f"storage {health['storage']}, chain {health['chain']}"
            )

            _step(3, "She registers a dataset and a model")
            dataset = _make_dataset(work)
            model, accuracy = _make_model(work)
            _say(
                f"generated {dataset.name} ({dataset.stat().st_size} bytes, sklearn's digits) and "
                f"{model.name} (logistic regression, test accuracy {accuracy:.3f})"
            )
            registered = []
            for path, meta in [
                (
                    dataset,
                    {
                        "name": "digits",
                        "kind": "dataset",
                        "title": "Handwritten digits 8x8",
                        "media_type": "text/csv",
                        "keywords": ["vision", "digits"],
                        "license": "CC-BY-4.0",
                        "access_modes": ["compute", "download"],
                    },
                ),
                (
                    model,
                    {
                        "name": "digits-logreg",
                        "kind": "model",
                        "title": "Digits classifier (ONNX)",
                        "media_type": "application/onnx",
                        "keywords": ["classifier"],
                        "license": "Apache-2.0",
                        "access_modes": ["download"],
                    },
                ),
            ]:
                offering = client.upload("/api/v1/offerings", path, {"metadata": json.dumps(meta)})
                registered.append(offering)
                _say(f"$ agora offerings add {path.name} --title '{meta['title']}'")
                _say(
                    f"  → {offering['id']}  {offering['sha256'][:23]}…  {offering['size']} bytes, "
                    f"anchor {offering['anchor']['status']}"
                )

            _step(4, "The same bytes registered again are stored once")
            again = client.upload(
                "/api/v1/offerings",
                dataset,
                {"metadata": json.dumps({"title": "Digits (copy)", "media_type": "text/csv"})},
            )
            _say(f"new offering {again['id'][:8]}…, same sha256, stored again: {again['created']}")

            _step(5, "Anyone with catalog:read lists the offerings")
            page = client.get("/api/v1/offerings")
            for o in page["items"]:
                _say(f"{o['kind']:8} {o['title']:28} v{o['version']}  {o['sha256'][:19]}…")

            _step(6, "The node notarizes what it registered on its chain")
            anchors = _wait_anchored(client, [o["id"] for o in registered])
            first = anchors[0]
            _say(f"embedded EVM chain {first['chain_id']}, registry {first['registry']}")
            _say(
                f"one Merkle batch for all versions: root {first['batch_root'][:18]}…, "
                f"tx {first['tx_hash'][:18]}…, block {first['block_number']}"
            )

            _step(7, "A download comes back byte for byte, with its provenance")
            out = work / "digits-downloaded.csv"
            offering = client.get(f"/api/v1/offerings/{registered[0]['id']}")
            digest, size = client.download(f"/api/v1/offerings/{offering['id']}/download", out)
            sidecar = write_sidecar(client, offering["versions"][-1], out)
            original, _ = sha256_file(dataset)
            verdict = "identical" if digest == original else "DIFFERENT"
            _say(f"$ agora offerings download {offering['id'][:8]}… -o {out.name}")
            _say(f"  → {size} bytes, sha256:{digest[:16]}… — {verdict} to what was registered")
            _say(f"  → provenance sidecar {sidecar.name if sidecar else '(none)'}")
            if digest != original or sidecar is None:
                raise AgoraError("the download differs from the registered file or has no provenance")

            _step(8, "Anyone checks it against the chain alone: agora verify")
            _verify(out, root)
            tampered = work / "digits-tampered.csv"
            data = bytearray(out.read_bytes())
            data[100] ^= 0x01
            tampered.write_bytes(bytes(data))
            shutil.copy(sidecar, tampered.with_name(tampered.name + ".provenance.json"))
            _say("one flipped bit later:")
            _verify(tampered, root, expect_ok=False)

            _step(9, "Bad input is refused with its reason, and changes nothing")
            before = len(client.get("/api/v1/offerings")["items"])
            try:
                client.upload(
                    "/api/v1/offerings",
                    dataset,
                    {"metadata": json.dumps({"title": "", "kind": "spreadsheet"})},
                )
            except AgoraError as exc:
                _say(f"refused ({exc.status}): {exc.detail}")
            after = len(client.get("/api/v1/offerings")["items"])
            _say(f"offerings before and after: {before} → {after}")

    console.print(
        "\n[bold green]Demo complete.[/] Usage policies and the federated catalog, negotiation between "
        "organisations, training jobs and federated learning join this story as they are built."
    )
