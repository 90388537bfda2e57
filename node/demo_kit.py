"""What the demo's story is told with: two real node processes on loopback, the CLI as a
user types it, and the lines the story prints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kernel.cli import console
from kernel.client import NodeClient
from kernel.errors import AgoraError, ServiceUnavailable

PASSPHRASE = "demo-passphrase-not-for-production"


def step(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{text}[/]")


def say(text: str) -> None:
    console.print(f"   {text}", highlight=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agora_command() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


@contextmanager
def served_node(home: Path, name: str, crawl_interval: str = "30") -> Iterator[tuple[str, dict[str, str]]]:
    """``agora init`` + ``agora serve`` as a real process on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(
        AGORA_HOME=str(home),
        AGORA_PUBLIC_URL=url,
        AGORA_KEY_PASSPHRASE=PASSPHRASE,
        AGORA_ANCHOR_MAX_DELAY="0.5",
        AGORA_CATALOG_CRAWL_INTERVAL=crawl_interval,
    )
    init = subprocess.run([*agora_command(), "init", "--name", name], env=env, capture_output=True, text=True)
    if init.returncode != 0:
        raise ServiceUnavailable(f"agora init failed: {init.stderr.strip()}")
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [*agora_command(), "serve", "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(url, proc, home)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], home: Path) -> None:
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


def wait_anchored(client: NodeClient, offering_ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        anchors = [client.get(f"/api/v1/offerings/{oid}")["anchor"] for oid in offering_ids]
        if all(a["status"] == "ANCHORED" for a in anchors):
            return anchors
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"not anchored within {timeout:.0f} s: {[a['status'] for a in anchors]}")
        time.sleep(0.2)


def verify(path: Path, root: Path, expect_ok: bool = True) -> None:
    """Run `agora verify` as a bystander would: no node home, only the file and its sidecar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["AGORA_HOME"] = str(root / "bystander")
    result = subprocess.run([*agora_command(), "verify", str(path)], env=env, capture_output=True, text=True)
    say(f"$ agora verify {path.name}   (exit {result.returncode})")
    for line in (result.stdout + result.stderr).strip().splitlines():
        say("  " + line)
    if (result.returncode == 0) != expect_ok:
        raise AgoraError(
            f"agora verify {path.name} exited {result.returncode}, which the story did not expect"
        )


def node_token(home: Path, url: str, scopes: list[str], subject: str) -> str:
    from node.auth import TokenIssuer
    from node.settings import Settings

    return TokenIssuer.for_node(Settings.load(home=home, public_url=url)).issue(scopes, 900, subject=subject)


def negotiate(
    client: NodeClient,
    provider_url: str,
    item: dict[str, Any],
    purpose: str,
    mode: str,
    timeout: float = 60,
    alias: str | None = None,
) -> dict[str, Any]:
    request = {
        "offering_id": item["offering_id"],
        "provider": provider_url,
        "purpose": purpose,
        "access_mode": mode,
    }
    started = client.post_json("/api/v1/negotiations", {**request, **({"alias": alias} if alias else {})})
    deadline = time.monotonic() + timeout
    while True:
        negotiation: dict[str, Any] = client.get(f"/api/v1/negotiations/{started['id']}")
        if negotiation["state"] in ("FINALIZED", "TERMINATED"):
            return negotiation
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"negotiation stuck in {negotiation['state']}: {negotiation['reason']}")
        time.sleep(0.1)


def wait_catalog(client: NodeClient, provider: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = [i for i in client.get("/api/v1/catalog")["items"] if i["provider"] == provider]
        if len(items) >= count:
            return items
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the peer's catalog did not arrive within {timeout:.0f} s")
        time.sleep(0.2)
