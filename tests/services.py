"""Real servers the integration tests start on loopback: PostgreSQL, an S3 server, a node.

Each start function returns a handle with a ``stop()``; none of them is a mock. When a
part is missing, tests skip locally and fail in CI (``CI=true``), as the README promises.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent
AGORA = str(Path(sys.executable).with_name("agora"))


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must run every integration test."""
    if IN_CI:
        pytest.fail(f"required test service unavailable in CI: {reason}")
    pytest.skip(reason)


@contextmanager
def listening() -> Iterator[int]:
    """A TCP port on loopback that really accepts connections while the block runs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class LoopbackHTTP:
    """An HTTP server on a free loopback port, serving ``handler`` from a thread until :meth:`stop`
    (the stand-ins hostile tests play: peers, an internal service, a redirecting front)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# PostgreSQL -------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path
    user: str = "agora"
    _counter: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"], check=False
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _as_postgres(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, timeout=120)


def start_postgres() -> Postgres:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    bindir = Path(found[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="agora-pg-"))
    datadir = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    _as_postgres(
        [str(bindir / "initdb"), "-D", str(datadir), "-U", "agora", "-A", "trust", "-E", "UTF8", "--no-sync"]
    )
    port = free_port()
    opts = f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off -c synchronous_commit=off -c max_connections=200"
    _as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(base / "log"), "-w", "start"]
    )
    wait_for_port(port)
    return Postgres(port=port, datadir=datadir, bindir=bindir)


# S3 ---------------------------------------------------------------------------------------


@dataclass
class S3Server:
    port: int
    server: object
    access_key: str = "agora-test"
    secret_key: str = "agora-test-secret"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]


def start_s3() -> S3Server:
    """moto's standalone server speaks the S3 protocol; the product uses only the minio SDK."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    return S3Server(port=port, server=server)


# A node as a real process --------------------------------------------------------------------


@dataclass
class LiveNode:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([AGORA, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"agora {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def org_key(self) -> bytes:
        """The organisation's private key (to sign protocol messages as this node would)."""
        from eth_account import Account

        keystore = json.loads((self.home / "keystore.json").read_text())
        return bytes(Account.decrypt(keystore, "test-passphrase"))

    def token(self, *scopes: str) -> str:
        args = ["token", "create", "--home", str(self.home)]
        for s in scopes or ("admin",):
            args += ["--scope", s]
        return self.cli(*args).stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Org:
    """An organisation's live node with an admin token, for tests that play two parties."""

    def __init__(self, node: LiveNode) -> None:
        self.node = node
        self.token = node.token("admin")
        self.address = httpx.get(f"{node.url}/health").json()["participant"]

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.node.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
            **kw,
        )


def node_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(
        AGORA_HOME=str(home),
        AGORA_PUBLIC_URL=f"http://127.0.0.1:{port}",
        AGORA_KEY_PASSPHRASE="test-passphrase",
    )
    env.update(extra)
    return env


def start_node(
    home: Path,
    name: str = "Test Org",
    port: int | None = None,
    *,
    serve: list[str] | None = None,
    **extra_env: str,
) -> LiveNode:
    """``agora init`` (once) and ``agora serve`` on a loopback port (a free one unless given);
    ``serve`` replaces the ``agora`` of ``agora serve`` (a test-only hostile node's entry point)."""
    port = port or free_port()
    env = node_env(home, port, **extra_env)
    if not (home / "keystore.json").exists():
        subprocess.run([AGORA, "init", "--name", name], env=env, check=True, capture_output=True, timeout=60)
    log = (home / "serve.log").open("ab")
    proc = subprocess.Popen(
        [*(serve or [AGORA]), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).raise_for_status()
    except Exception:
        proc.kill()
        raise RuntimeError(f"node failed to start:\n{(home / 'serve.log').read_text()[-3000:]}") from None
    return LiveNode(home=home, port=port, proc=proc, env=env)


# anvil (a local EVM node) ------------------------------------------------------------------

ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


@dataclass
class Anvil:
    port: int
    proc: subprocess.Popen[bytes]
    state: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM: anvil writes its ``--state`` file (if any) on the way out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_anvil(state: Path | None = None, port: int | None = None) -> Anvil:
    """anvil on a free loopback port (or ``port``, to restart one where it was); with ``state``
    the chain is loaded from and saved to that file."""
    if not ANVIL.is_file():
        unavailable("anvil not installed: run npm install")
    port = port or free_port()
    cmd = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent"]
    if state is not None:
        cmd += ["--state", str(state)]
    with tempfile.TemporaryFile() as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, timeout=30, proc=proc)
        except Exception:
            proc.kill()
            proc.wait()
            log.seek(0)
            output = log.read().decode("utf-8", "replace")[-3000:]
            raise RuntimeError(f"anvil failed to start:\n{output}") from None
    return Anvil(port=port, proc=proc, state=state)
