"""The README's compute-to-data walk-through works literally, command by command.

The shell block between ``<!-- walkthrough:begin -->`` and ``<!-- walkthrough:end -->`` runs
under ``bash -euo pipefail`` in a scratch directory that holds the repository's
``examples/``; only the two ports are swapped for free ones, so the test can run beside
anything else on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests import services

pytestmark = pytest.mark.slow


def walkthrough() -> str:
    text = (services.REPO / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:begin -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", text, re.S)
    assert block, "README.md has no walk-through block"
    return block.group(1)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    acme, beta = services.free_port(), services.free_port()
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{acme}").replace(
        "127.0.0.1:8001", f"127.0.0.1:{beta}"
    )
    (tmp_path / "examples").symlink_to(services.REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["PATH"] = f"{Path(services.AGORA).parent}{os.pathsep}{env.get('PATH', '')}"
    # the two `agora serve` processes are the script's own background jobs: stop them with it
    wrapped = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", wrapped],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    logs = "".join(
        f"\n--- {name} ---\n{(tmp_path / name).read_text()[-2000:]}"
        for name in ("acme.log", "beta.log")
        if (tmp_path / name).exists()
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}{logs}"
    assert "Handwritten digit scans" in result.stdout
    assert "COMPLETED" in result.stdout
    assert result.stdout.rstrip().endswith("VERIFIED")
    assert (tmp_path / "digits-cnn.onnx").stat().st_size > 10_000
    assert (tmp_path / "digits-cnn.onnx.provenance.json").is_file()
