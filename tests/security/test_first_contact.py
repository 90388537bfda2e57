"""A new user's first commands: every failure is one readable line, never a traceback or a JSON dump.

The demo and the install step stop at once, naming the Debian package they miss, on a
machine without bubblewrap (played here by a PATH without ``bwrap``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import services


def _without_bwrap(tmp_path: Path) -> str:
    """A PATH holding every command of this one but ``bwrap``."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = shadow / name
            if name != "bwrap" and not target.exists():
                target.symlink_to(Path(directory) / name)
    assert shutil.which("bwrap", path=str(shadow)) is None
    return f"{Path(services.AGORA).parent}{os.pathsep}{shadow}"


def _agora(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    return subprocess.run(
        [services.AGORA, *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=timeout
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "{" not in result.stdout
    return lines[0]


def test_serve_on_a_home_that_was_never_initialised_says_agora_init(tmp_path: Path) -> None:
    result = _agora("serve", "--home", str(tmp_path / "nothing-here"))
    line = _one_error_line(result)
    assert "no node is initialised" in line and "agora init" in line
    assert result.returncode == 1
    assert not (tmp_path / "nothing-here" / "agora.db").exists(), "a refused serve creates nothing"


def test_worker_and_db_upgrade_refuse_the_same_way(tmp_path: Path) -> None:
    assert "agora init" in _one_error_line(_agora("worker", "--home", str(tmp_path / "none")))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("jobs", "submit", "-f", "/no/such/job.yaml"), "does not exist"),
        (("no-such-command",), "No such command"),
        (("negotiate", "x"), "Missing option"),
    ],
)
def test_usage_errors_are_one_line(args: tuple[str, ...], fragment: str) -> None:
    line = _one_error_line(_agora(*args))
    assert fragment in line


def test_an_unreachable_node_is_one_line(tmp_path: Path) -> None:
    port = services.free_port()
    line = _one_error_line(_agora("catalog", "--url", f"http://127.0.0.1:{port}", "--token", "x"))
    assert "cannot reach the node" in line


def test_the_demo_stops_at_once_without_bubblewrap(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _agora("demo", env={"PATH": _without_bwrap(tmp_path)}, timeout=120)
    line = _one_error_line(result)
    assert "install the Debian package bubblewrap" in line
    assert time.monotonic() - started < 30, "the demo must stop before it starts any node"


def test_the_install_step_names_the_package_it_cannot_install(tmp_path: Path) -> None:
    """Not root (or no apt): one line naming bubblewrap and why, exit 1."""
    if os.getuid() != 0 or shutil.which("runuser") is None:
        services.unavailable("needs root and runuser to play an unprivileged user")
    script = services.REPO / ".ci" / "install-services.sh"
    readable = Path(tempfile.mkdtemp(prefix="agora-nobody-"))  # pytest's tmp_path is root's alone
    try:
        readable.chmod(0o755)
        path = _without_bwrap(readable)
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/env", f"PATH={path}", "bash", "-s", "demo"],
            input=script.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(readable)
    line = _one_error_line(result)
    assert "bubblewrap" in line and "sandbox" in line
