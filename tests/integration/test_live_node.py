"""A node as a real process (uvicorn on loopback), on the embedded defaults and on the
production parts: PostgreSQL and an S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests import services

META = {"title": "Bearing faults", "kind": "dataset", "media_type": "text/csv", "access_modes": ["download"]}


def _register_and_fetch(node: services.LiveNode, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    src = tmp_path / "faults.csv"
    src.write_bytes(data)
    token = node.token("admin")
    added = node.cli(
        "offerings",
        "add",
        str(src),
        "--title",
        "Bearing faults",
        "--media-type",
        "text/csv",
        "--url",
        node.url,
        "--token",
        token,
        "--json",
    )
    offering = json.loads(added.stdout)
    assert offering["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    listed = json.loads(node.cli("offerings", "list", "--json", "--url", node.url, "--token", token).stdout)
    assert [o["id"] for o in listed] == [offering["id"]]
    out = tmp_path / "copy.csv"
    node.cli("offerings", "download", offering["id"], "-o", str(out), "--url", node.url, "--token", token)
    assert out.read_bytes() == data


def test_embedded_defaults(live_node: services.LiveNode, tmp_path: Path) -> None:
    health = httpx.get(f"{live_node.url}/health").json()
    assert (health["database"], health["storage"]) == ("sqlite", "file")
    _register_and_fetch(live_node, tmp_path)


@pytest.mark.postgres
@pytest.mark.s3
def test_postgres_and_s3(postgres, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = services.start_node(
        tmp_path / "prod",
        AGORA_DATABASE_URL=postgres.new_database(),
        AGORA_STORAGE_URL="s3://agora-live",
        AGORA_S3_ENDPOINT=s3.endpoint,
        AGORA_S3_ACCESS_KEY=s3.access_key,
        AGORA_S3_SECRET_KEY=s3.secret_key,
    )
    try:
        health = httpx.get(f"{node.url}/health").json()
        assert (health["database"], health["storage"]) == ("postgresql", "s3")
        _register_and_fetch(node, tmp_path)
    finally:
        node.stop()


def test_cli_uses_the_local_key_when_no_token_is_given(live_node: services.LiveNode, tmp_path: Path) -> None:
    src = tmp_path / "small.csv"
    src.write_text("a\n1\n")
    result = live_node.cli("offerings", "add", str(src), "--title", "Small", "--home", str(live_node.home))
    assert "registered" in result.stdout


def test_cli_prints_the_nodes_reason(live_node: services.LiveNode, tmp_path: Path) -> None:
    src = tmp_path / "empty.csv"
    src.write_bytes(b"")
    result = live_node.cli(
        "offerings", "add", str(src), "--title", "Empty", "--home", str(live_node.home), check=False
    )
    assert result.returncode == 1
    assert "the file is empty" in result.stderr
    token = live_node.token("catalog:read")
    denied = live_node.cli("offerings", "list", "--url", live_node.url, "--token", token + "x", check=False)
    assert denied.returncode == 1 and "signature" in denied.stderr


def test_unreachable_node_exits_2(tmp_path: Path) -> None:
    node_env = services.node_env(tmp_path, services.free_port())
    import subprocess

    result = subprocess.run(
        [services.AGORA, "offerings", "list", "--url", "http://127.0.0.1:9", "--token", "x"],
        capture_output=True,
        text=True,
        env=node_env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot reach the node" in result.stderr


def _state(node: services.LiveNode) -> tuple[list[str], list[Path], list[Path]]:
    token = node.token("catalog:read")
    items = httpx.get(f"{node.url}/api/v1/offerings", headers={"Authorization": f"Bearer {token}"}).json()[
        "items"
    ]
    objects = [p for p in (node.home / "objects").rglob("*") if p.is_file() and ".staging" not in p.parts]
    staging = list((node.home / "objects" / ".staging").glob("*")) if (node.home / "objects").exists() else []
    return [o["id"] for o in items], objects, staging


def test_connection_broken_mid_upload_leaves_nothing(live_node: services.LiveNode) -> None:
    token = live_node.token("offerings:write")
    boundary = "agoraboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{json.dumps(META)}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    declared = len(head) + 50 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", live_node.port)) as sock:
        sock.sendall(
            (
                f"POST /api/v1/offerings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
            ).encode()
            + head
        )
        for _ in range(8):
            sock.sendall(os.urandom(1024 * 1024))
        time.sleep(0.3)  # let the server stage what it received
    deadline = time.monotonic() + 10
    while True:
        offerings, objects, staging = _state(live_node)
        if not staging or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert offerings == []
    assert objects == []
    assert staging == [], "the staging file of the broken upload must be removed"
    # the node still serves the next request normally
    assert httpx.get(f"{live_node.url}/health").status_code == 200


BLOCK = os.urandom(4 * 1024 * 1024)


def _chunks(size: int, block: bytes = BLOCK):  # type: ignore[no-untyped-def]
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        yield block[:n]
        sent += n


@pytest.mark.slow
def test_one_gib_streamed_upload(live_node: services.LiveNode) -> None:
    """1 GiB through the real server: the digest matches and the server never holds it whole."""
    size = 1024**3
    expected = hashlib.sha256()
    for chunk in _chunks(size):
        expected.update(chunk)
    token = live_node.token("offerings:write")
    server = psutil.Process(live_node.proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    boundary = "gib-boundary"

    def body():  # type: ignore[no-untyped-def]
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{json.dumps(META)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="g.bin"\r\n\r\n'
        ).encode()
        yield from _chunks(size)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = httpx.post(
            f"{live_node.url}/api/v1/offerings",
            content=body(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            timeout=600,
        )
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == "sha256:" + expected.hexdigest()
    assert response.json()["size"] == size
    assert peak < 400 * 1024 * 1024, f"server RSS peaked at {peak / 2**20:.0f} MiB during a 1 GiB upload"
