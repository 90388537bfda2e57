"""Dataset schemas: inferred from the bytes when none is declared; trainability checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quality.intake import Intake


def assess(path: Path, media_type: str, declared: dict[str, Any], modes: list[str]) -> Intake:
    """Placeholder until inference lands in this module: nothing is inferred yet."""
    return Intake(schema=None, trainable=None)
