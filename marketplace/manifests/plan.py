"""What a plan is: the changes a manifest asks for, and what the client sends of each source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DvcSourceInfo(BaseModel):
    """What the client resolved a ``dvc://`` source to."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dvc"]
    repo: str = Field(min_length=1, max_length=4096)
    path: str = Field(min_length=1, max_length=4096)
    rev: str = Field(min_length=1, max_length=200)
    commit: str = Field(pattern=r"^[0-9a-f]{40}$", description="the git commit the rev resolved to")
    md5: str = Field(pattern=r"^[0-9a-f]{32}$", description="the DVC md5 of the path at that commit")


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    size: int = Field(gt=0)
    source: DvcSourceInfo | None = Field(default=None, description="a dvc:// source, resolved")


@dataclass
class Change:
    action: str  # create | new-version | update | alias | retire | reactivate | add-peer
    target: str
    detail: str
    fields: list[str] = field(default_factory=list)
    sha256: str | None = None
    alias: str | None = None  # alias: the name moved, and the version it moves to
    version: int | None = None


@dataclass
class Plan:
    changes: list[Change]
    unchanged: list[str]
    notes: list[str] = field(default_factory=list)  # what moved without being a change

    @property
    def needs_bytes(self) -> list[str]:
        """Offerings whose source bytes apply needs (created or versioned)."""
        return [c.target for c in self.changes if c.action in ("create", "new-version")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [asdict(c) for c in self.changes],
            "unchanged": self.unchanged,
            "notes": self.notes,
            "needs_bytes": self.needs_bytes,
            "summary": summarize(self),
        }


def summarize(plan: Plan) -> str:
    if not plan.changes:
        return "no changes: the node already matches the manifest"
    counts: dict[str, int] = {}
    for change in plan.changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    return ", ".join(f"{n} {action}" for action, n in counts.items())
