"""What the node learns about a version's bytes at registration, before anything is written:
its schema (declared, or inferred from the file) and, for compute and federate offerings,
whether the node can build a training set from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Intake:
    schema: dict[str, Any] | None
    trainable: dict[str, Any] | None


def assess(path: Path, media_type: str, declared: dict[str, Any], *, kind: str, modes: list[str]) -> Intake:
    """The schema and trainability of the file at ``path`` (a dataset offering's version).

    Raises :class:`quality.schema.Untrainable` (a 422) when a compute or federate offering's
    bytes cannot become a training set and the offering's ``on_untrainable`` is ``reject``.
    """
    if kind != "dataset":
        return Intake(schema=None, trainable=None)
    from quality import schema

    return schema.assess(path, media_type, declared, modes)
