"""Provenance sidecars: ``FILE.provenance.json`` next to a downloaded file (standard library only,
so the CLI can write them without loading the chain code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUFFIX = ".provenance.json"


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def write_sidecar(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as ``path``'s sidecar; returns the sidecar's path."""
    sidecar = sidecar_of(path)
    sidecar.write_text(json.dumps(doc, indent=2) + "\n")
    return sidecar
