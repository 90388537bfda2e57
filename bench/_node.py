"""Shared helpers of the benchmarks: a node as a real process on loopback, RSS sampling.

Not a test helper: ``tests/services.py`` imports pytest; this module needs only the
product's own dependencies plus psutil.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

AGORA = str(Path(sys.executable).with_name("agora"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services import free_port, wait_for_port  # noqa: E402  (the test setup's own helpers)

PASSPHRASE = "bench-passphrase"


@dataclass
class Node:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, scope: str = "admin", ttl: str = "1h") -> str:
        result = subprocess.run(
            [AGORA, "token", "create", "--home", str(self.home), "--scope", scope, "--ttl", ttl],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"agora token create failed:\n{result.stderr}")
        return result.stdout.strip()

    def log_tail(self, chars: int = 3000) -> str:
        path = self.home / "serve.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def node_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(
        AGORA_HOME=str(home),
        AGORA_PUBLIC_URL=f"http://127.0.0.1:{port}",
        AGORA_KEY_PASSPHRASE=PASSPHRASE,
    )
    return env


def start_node(home: Path, name: str = "Bench Org", extra_env: dict[str, str] | None = None) -> Node:
    """``agora init`` then ``agora serve`` on a free loopback port; waits for /health."""
    port = free_port()
    env = {**node_env(home, port), **(extra_env or {})}
    subprocess.run([AGORA, "init", "--name", name], env=env, check=True, capture_output=True, timeout=120)
    with (home / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [AGORA, "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = Node(home=home, port=port, proc=proc, env=env)
    try:
        wait_for_port(port, timeout=120, proc=proc)
        httpx.get(f"{node.url}/health", timeout=30).raise_for_status()
    except BaseException:
        node.stop()
        raise RuntimeError(f"node failed to start:\n{node.log_tail()}") from None
    return node


class TempDir:
    """A temporary directory removed on exit (also after an error)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class RssSampler:
    """Peak resident set size of processes (with their children), sampled in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02, children: tuple[str, ...] = ()) -> None:
        import psutil

        self._psutil = psutil
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.children = children
        self.interval = interval
        self.peak = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self, name: str) -> int:
        proc = self.procs[name]
        total = 0
        with contextlib.suppress(self._psutil.Error):
            total += proc.memory_info().rss
            for child in proc.children(recursive=True) if name in self.children else ():
                with contextlib.suppress(self._psutil.Error):
                    total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.procs:
                self.peak[name] = max(self.peak[name], self.rss(name))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class PySpy:
    """``py-spy record`` of a process while the block runs (collapsed stacks to ``out``).

    A no-op when ``out`` is None. py-spy is not a dependency of the project:
    ``.venv/bin/pip install py-spy`` first.
    """

    def __init__(self, pid: int, out: Path | None, rate: int = 200, gil: bool = False) -> None:
        self.pid = pid
        self.gil = gil
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        if self.out is None:
            return self
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        cmd = [exe, "record", "-p", str(self.pid), "-o", str(self.out), "-f", "raw"]
        cmd += ["-r", str(self.rate), "--nonblocking"] + (["--gil"] if self.gil else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        print(f"py-spy: collapsed stacks of pid {self.pid} in {self.out}")


def machine_busy() -> float:
    """CPU seconds all processes of the machine have spent (user + system, all cores; no irq time)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def own_cpu() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"
