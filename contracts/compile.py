"""Compile the Solidity sources with py-solc-x and keep the artifacts in ``contracts/build``.

A native ``solc`` is used when one is installed (on PATH, or installed by py-solc-x);
otherwise the npm ``solc`` package (solcjs), through a thin wrapper: solcjs prints a line
starting with ``>>>`` before its JSON, which the wrapper drops so py-solc-x can read it.
Both produce the same bytecode for the same version and settings, so the committed
artifacts can be checked on any machine (``agora contracts compile --check``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import AgoraError, ConfigurationError
from kernel.hashing import sha256_bytes

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "solidity"
BUILD = HERE / "build"
SOLC_VERSION = "0.8.28"
SETTINGS: dict[str, Any] = {
    # paris: no PUSH0, so the registry also deploys on consortium chains that lag behind mainnet
    "evmVersion": "paris",
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
CONTRACTS = {"AgoraRegistry.sol": ["AgoraRegistry"], "PerAssetRecord.sol": ["PerAssetRecord"]}


class CompileError(AgoraError):
    type_slug = "compile"
    status = 500
    title = "Solidity compilation failed"


class ArtifactsDiffer(AgoraError):
    type_slug = "artifacts-differ"
    status = 500
    title = "Committed contract artifacts differ from the sources"


@dataclass(frozen=True)
class Compiler:
    binary: Path
    kind: str  # "native" or "solcjs"
    version: str


_WRAPPER = """#!/bin/sh
# solcjs prints a '>>>' notice before its JSON; drop it so py-solc-x can parse the output.
set -e
out=$(node "{solcjs}" "$@")
printf '%s\\n' "$out" | grep -v '^>>>'
"""


def find_compiler() -> Compiler:
    """A native solc of the pinned version when present, else solcjs from node_modules."""
    import solcx
    from solcx.wrapper import get_solc_version

    candidates: list[Path] = []
    if which := shutil.which("solc"):
        candidates.append(Path(which))
    with contextlib.suppress(Exception):  # py-solc-x raises several kinds when none is installed
        candidates.append(Path(solcx.install.get_executable(SOLC_VERSION)))
    for binary in candidates:
        try:
            version = str(get_solc_version(binary))
        except Exception:
            continue
        if version == SOLC_VERSION:
            return Compiler(binary, "native", version)
    solcjs = _solcjs()
    wrapper_dir = Path(tempfile.gettempdir()) / f"agora-solcjs-{os.getuid()}"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / "solc"
    wrapper.write_text(_WRAPPER.format(solcjs=solcjs))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    version = str(get_solc_version(wrapper))
    if version != SOLC_VERSION:
        raise ConfigurationError(f"solcjs at {solcjs} is {version}; the artifacts need {SOLC_VERSION}")
    return Compiler(wrapper, "solcjs", version)


def _solcjs() -> Path:
    for root in (HERE.parent, Path.cwd()):
        candidate = root / "node_modules" / "solc" / "solc.js"
        if candidate.exists():
            return candidate
    raise ConfigurationError(
        f"no Solidity compiler: install solc {SOLC_VERSION} or run `npm install` in the repository "
        "(package.json pins the npm solc package)"
    )


def compile_sources(compiler: Compiler | None = None) -> dict[str, dict[str, Any]]:
    """Compile every source; returns artifacts by contract name."""
    import solcx
    from solcx.exceptions import SolcError

    compiler = compiler or find_compiler()
    sources = {name: (SOURCES / name).read_text() for name in CONTRACTS}
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SETTINGS,
    }
    try:
        output = solcx.compile_standard(request, solc_binary=compiler.binary)
    except SolcError as exc:
        raise CompileError(str(exc)) from exc
    artifacts: dict[str, dict[str, Any]] = {}
    for source, names in CONTRACTS.items():
        for name in names:
            compiled = output["contracts"][source][name]
            artifacts[name] = {
                "contractName": name,
                "sourceName": source,
                "sourceSha256": sha256_bytes(sources[source].encode()),
                "compiler": compiler.version,
                "settings": SETTINGS,
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
    return artifacts


def _render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def write_artifacts(artifacts: dict[str, dict[str, Any]]) -> list[Path]:
    BUILD.mkdir(exist_ok=True)
    written = []
    for name, artifact in artifacts.items():
        path = BUILD / f"{name}.json"
        path.write_text(_render(artifact))
        written.append(path)
    return written


def check_artifacts(artifacts: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`ArtifactsDiffer` naming what differs from the committed files."""
    problems = []
    for name, artifact in artifacts.items():
        path = BUILD / f"{name}.json"
        if not path.exists():
            problems.append(f"{path.name} is missing")
            continue
        committed = json.loads(path.read_text())
        for key in ("sourceSha256", "compiler", "settings", "abi", "bytecode", "deployedBytecode"):
            if committed.get(key) != artifact[key]:
                problems.append(f"{path.name}: {key} differs")
    if problems:
        raise ArtifactsDiffer(
            "; ".join(problems) + " — run `agora contracts compile` and commit contracts/build/"
        )


@functools.cache
def load_artifact(name: str) -> dict[str, Any]:
    """A committed artifact (ABI + bytecode), read once per process; no compiler needed at run
    time. Callers must not change what it returns."""
    data: dict[str, Any] = json.loads((BUILD / f"{name}.json").read_text())
    return data
