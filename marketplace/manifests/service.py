"""Plan and apply a manifest against this node's offerings and peers.

Sources are files on the machine that runs ``agora plan/apply``: the client sends their
sha256 and size with the plan, and uploads the bytes only for offerings that need them
(new ones, new versions). An absolute source path is read on the node itself, if it lies
under ``AGORA_IMPORT_DIRS``. Offerings declared by an earlier manifest and missing from
this one are retired; offerings registered through the API are never touched.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import AgoraError, InvalidInput
from kernel.hashing import parse_digest, sha256_file
from kernel.storage import StagedObject
from marketplace.manifests.loader import LoadedManifest, locate
from marketplace.manifests.schema import ManifestOffering
from marketplace.models import Offering
from marketplace.schemas import OfferingMetadata
from marketplace.services import OfferingService
from marketplace.terms import ComputeTerms

COMPARED_FIELDS = (
    "title",
    "description",
    "keywords",
    "license",
    "media_type",
    "access_modes",
    "approval",
    "policy",
    "compute_terms",
)
SPECIAL_TYPES = {
    ".csv": "text/csv",
    ".onnx": "application/onnx",
    ".parquet": "application/vnd.apache.parquet",
}


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    size: int = Field(gt=0)


@dataclass
class Change:
    action: str  # create | new-version | update | retire | reactivate | add-peer
    target: str
    detail: str
    fields: list[str] = field(default_factory=list)
    sha256: str | None = None


@dataclass
class Plan:
    changes: list[Change]
    unchanged: list[str]

    @property
    def needs_bytes(self) -> list[str]:
        """Offerings whose source bytes apply needs (created or versioned)."""
        return [c.target for c in self.changes if c.action in ("create", "new-version")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [asdict(c) for c in self.changes],
            "unchanged": self.unchanged,
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


def guess_media_type(source: str) -> str:
    suffix = Path(source).suffix.lower()
    return SPECIAL_TYPES.get(suffix) or mimetypes.guess_type(source)[0] or "application/octet-stream"


class ManifestService:
    def __init__(
        self,
        offerings: OfferingService,
        *,
        known_peer_urls: Callable[[], set[str]],
        add_peer: Callable[[str, str], object],
        check_policy: Callable[[dict[str, Any]], None],
    ) -> None:
        self.offerings = offerings
        self._known_peer_urls = known_peer_urls
        self._add_peer = add_peer
        self._check_policy = check_policy

    # Planning -------------------------------------------------------------------------

    def plan(self, loaded: LoadedManifest, sources: dict[str, SourceInfo]) -> Plan:
        """The changes the manifest asks for; changes nothing."""
        self._check_policies(loaded)
        changes: list[Change] = []
        unchanged: list[str] = []
        declared = {o.name for o in loaded.manifest.offerings}
        for index, item in enumerate(loaded.manifest.offerings):
            digest = self._source_digest(loaded, index, item, sources)
            existing = self.offerings.by_name(item.name)
            if existing is None:
                changes.append(
                    Change("create", item.name, f"new {item.kind} from {item.source}", sha256=digest)
                )
                continue
            if existing.kind != item.kind:
                raise locate(
                    InvalidInput(
                        f"offering {item.name} is a {existing.kind}; a kind cannot change (use a new name)"
                    ),
                    loaded,
                    f"offerings.{index}.kind",
                )
            found = False
            if existing.status == "retired":
                changes.append(Change("reactivate", item.name, "declared again: back in the catalog"))
                found = True
            latest = self.offerings.get(existing.id)
            if latest.sha256.removeprefix("sha256:") != digest:
                changes.append(
                    Change(
                        "new-version",
                        item.name,
                        f"version {latest.version + 1} from {item.source}",
                        sha256=digest,
                    )
                )
                found = True
            desired = self._desired(item)
            differing = [f for f in COMPARED_FIELDS if _current(existing, f) != desired[f]]
            if differing or not existing.managed:
                fields = differing + ([] if existing.managed else ["managed"])
                detail = ", ".join(_described(f, existing, desired) for f in fields)
                changes.append(Change("update", item.name, "metadata: " + detail, fields=fields))
                found = True
            if not found:
                unchanged.append(item.name)
        for offering in self.offerings.managed():
            if offering.name not in declared and offering.status == "active":
                changes.append(Change("retire", offering.name or offering.id, "no longer in the manifest"))
        known = {u.rstrip("/") for u in self._known_peer_urls()}
        for peer in loaded.manifest.peers:
            if peer.url.rstrip("/") not in known:
                changes.append(Change("add-peer", peer.url, "learn the peer's identity"))
        return Plan(changes, unchanged)

    def _check_policies(self, loaded: LoadedManifest) -> None:
        for index, item in enumerate(loaded.manifest.offerings):
            if item.policy is not None:
                try:
                    self._check_policy(item.policy)
                except InvalidInput as exc:
                    raise locate(exc, loaded, f"offerings.{index}.policy") from None

    def _source_digest(
        self, loaded: LoadedManifest, index: int, item: ManifestOffering, sources: dict[str, SourceInfo]
    ) -> str:
        if Path(item.source).is_absolute() and item.name not in sources:
            path = self._server_path(loaded, index, item.source)
            digest, _ = sha256_file(path)
            return digest
        info = sources.get(item.name)
        if info is None:
            raise locate(
                InvalidInput(f"no sha256 given for the source of {item.name} ({item.source})"),
                loaded,
                f"offerings.{index}.source",
            )
        return parse_digest(info.sha256)

    def _server_path(self, loaded: LoadedManifest, index: int, source: str) -> Path:
        try:
            return self.offerings.allowed_path(source)
        except AgoraError as exc:
            raise locate(InvalidInput(exc.detail), loaded, f"offerings.{index}.source") from None

    @staticmethod
    def _desired(item: ManifestOffering) -> dict[str, Any]:
        return {
            "title": item.title,
            "description": item.description,
            "keywords": list(dict.fromkeys(item.keywords)),
            "license": item.license,
            "media_type": item.media_type or guess_media_type(item.source),
            "access_modes": list(item.access_modes),
            "approval": item.approval,
            "policy": item.policy,
            "compute_terms": item.compute_terms().model_dump(),
        }

    # Applying -------------------------------------------------------------------------

    def apply(
        self,
        loaded: LoadedManifest,
        sources: dict[str, SourceInfo],
        files: dict[str, StagedObject],
        actor: str,
    ) -> Plan:
        """Carry out the plan; ``files`` holds the uploaded bytes of the offerings that need them."""
        plan = self.plan(loaded, sources)
        items = {o.name: (i, o) for i, o in enumerate(loaded.manifest.offerings)}
        for change in plan.changes:
            if change.action in ("create", "new-version"):
                index, item = items[change.target]
                staged = self._bytes_for(loaded, index, item, files, change.sha256 or "")
                with staged:
                    if change.action == "create":
                        desired = self._desired(item)
                        terms = desired.pop("compute_terms")
                        metadata = OfferingMetadata(name=item.name, kind=item.kind, **desired, **terms)
                        self.offerings.register(staged, metadata, actor, managed=True)
                    else:
                        existing = self.offerings.by_name(item.name)
                        assert existing is not None
                        self.offerings.add_version(existing.id, staged, actor)
            elif change.action == "update":
                _, item = items[change.target]
                existing = self.offerings.by_name(item.name)
                assert existing is not None
                desired = {**self._desired(item), "managed": True}
                self.offerings.update(existing.id, {f: desired[f] for f in change.fields}, actor)
            elif change.action in ("retire", "reactivate"):
                existing = self.offerings.by_name(change.target)
                assert existing is not None
                self.offerings.set_status(
                    existing.id, "retired" if change.action == "retire" else "active", actor
                )
            elif change.action == "add-peer":
                self._add_peer(change.target, actor)
        return plan

    def _bytes_for(
        self,
        loaded: LoadedManifest,
        index: int,
        item: ManifestOffering,
        files: dict[str, StagedObject],
        digest: str,
    ) -> StagedObject:
        staged = files.get(item.name)
        if staged is None and Path(item.source).is_absolute():
            path = self._server_path(loaded, index, item.source)
            staged = self.offerings.store.stage_file(path)
        if staged is None:
            raise locate(
                InvalidInput(
                    f"apply needs the bytes of {item.name}: upload its source as part 'source:{item.name}'"
                ),
                loaded,
                f"offerings.{index}.source",
            )
        if staged.sha256 != digest:
            staged.discard()
            raise locate(
                InvalidInput(
                    f"the source of {item.name} changed since it was hashed (sha256 {staged.sha256})"
                ),
                loaded,
                f"offerings.{index}.source",
            )
        return staged


def _current(offering: Offering, name: str) -> Any:
    """A compared field of an existing offering; compute terms with their defaults filled in
    (an offering registered before they existed holds none)."""
    value = getattr(offering, name)
    return ComputeTerms.of(value).model_dump() if name == "compute_terms" else value


def _described(name: str, offering: Offering, desired: dict[str, Any]) -> str:
    """A changed field for the plan; compute terms name each term that changes, old → new."""
    if name != "compute_terms":
        return name
    before, after = _current(offering, name), desired[name]
    moves = [f"{key} {before[key]} → {after[key]}".lower() for key in after if before[key] != after[key]]
    return f"compute terms ({', '.join(moves)})"
