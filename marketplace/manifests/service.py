"""Plan and apply a manifest against this node's offerings and peers.

Sources are files on the machine that runs ``agora plan/apply``: the client sends their
sha256 and size with the plan, and uploads the bytes only for offerings that need them
(new ones, new versions). A ``dvc://`` source is resolved there too; the client adds what
it resolved to (repository, path, rev, git commit, DVC md5), which the version records. An
absolute source path is read on the node itself, if it lies under ``AGORA_IMPORT_DIRS``.

A version is new when its bytes differ from the offering's *newest* version, published or
not: a version rejected by its suite is not planned again until the data changes. Quality
declarations (schema, suite, on_failure, on_untrainable) are compared like any metadata; a
suite kept in a file is read by the client and sent beside the manifest. Aliases of model
versions are moved to where the manifest puts them. Offerings declared by an earlier
manifest and missing from this one are retired; offerings registered through the API are
never touched.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import AgoraError, FieldError, InvalidInput
from kernel.hashing import parse_digest, sha256_file
from kernel.storage import StagedObject
from kernel.validation import validate
from marketplace.manifests.loader import LoadedManifest, locate
from marketplace.manifests.plan import Change, DvcSourceInfo, Plan, SourceInfo
from marketplace.manifests.schema import ManifestOffering
from marketplace.models import Offering
from marketplace.schemas import OfferingMetadata
from marketplace.services import OfferingService
from marketplace.terms import ComputeTerms
from quality import dvc_source
from quality.spec import ExpectationSuite, SuiteFile, declared

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
    "quality_declared",
)
SPECIAL_TYPES = {
    ".csv": "text/csv",
    ".onnx": "application/onnx",
    ".parquet": "application/vnd.apache.parquet",
}


def guess_media_type(source: str) -> str:
    if dvc_source.is_dvc(source):
        source = source.rpartition("@")[0]
    suffix = Path(source).suffix.lower()
    return SPECIAL_TYPES.get(suffix) or mimetypes.guess_type(source)[0] or "application/octet-stream"


@dataclass(frozen=True)
class _Item:
    """One offering of the manifest, with what the request sent for it."""

    index: int
    offering: ManifestOffering
    source: SourceInfo | None
    suite: dict[str, Any] | None

    def at(self, suffix: str) -> str:
        return f"offerings.{self.index}.{suffix}"


class ManifestService:
    def __init__(
        self,
        offerings: OfferingService,
        *,
        known_peer_urls: Callable[[], set[str]],
        add_peer: Callable[[str, str], object],
        check_policy: Callable[[dict[str, Any]], None],
        move_alias: Callable[[str, str, int, str], object],
        aliases_of: Callable[[str], dict[str, int]],
    ) -> None:
        self.offerings = offerings
        self._known_peer_urls = known_peer_urls
        self._add_peer = add_peer
        self._check_policy = check_policy
        self._move_alias = move_alias
        self._aliases_of = aliases_of

    # Planning -------------------------------------------------------------------------

    def plan(
        self,
        loaded: LoadedManifest,
        sources: dict[str, SourceInfo],
        suites: dict[str, dict[str, Any]] | None = None,
    ) -> Plan:
        """The changes the manifest asks for; changes nothing."""
        self._check_policies(loaded)
        plan = Plan([], [])
        for item in self._items(loaded, sources, suites or {}):
            self._plan_offering(loaded, item, plan)
        declared_names = {o.name for o in loaded.manifest.offerings}
        for offering in self.offerings.managed():
            if offering.name not in declared_names and offering.status == "active":
                plan.changes.append(
                    Change("retire", offering.name or offering.id, "no longer in the manifest")
                )
        known = {u.rstrip("/") for u in self._known_peer_urls()}
        for peer in loaded.manifest.peers:
            if peer.url.rstrip("/") not in known:
                plan.changes.append(Change("add-peer", peer.url, "learn the peer's identity"))
        return plan

    def _plan_offering(self, loaded: LoadedManifest, item: _Item, plan: Plan) -> None:
        o = item.offering
        digest = self._source_digest(loaded, item)
        desired = self._desired(loaded, item)
        existing = self.offerings.by_name(o.name)
        if existing is None:
            plan.changes.append(Change("create", o.name, f"new {o.kind} from {_origin(item)}", sha256=digest))
            plan.changes += self._alias_changes(loaded, item, None, newest=1, notes=plan.notes)
            return
        if existing.kind != o.kind:
            raise locate(
                InvalidInput(
                    f"offering {o.name} is a {existing.kind}; a kind cannot change (use a new name)"
                ),
                loaded,
                item.at("kind"),
            )
        before = len(plan.changes)
        if existing.status == "retired":
            plan.changes.append(Change("reactivate", o.name, "declared again: back in the catalog"))
        detail = self.offerings.get(existing.id)
        newest = detail.versions[-1]
        number = newest.version
        if newest.sha256.removeprefix("sha256:") != digest:
            number += 1
            plan.changes.append(
                Change("new-version", o.name, f"version {number} from {_origin(item)}", sha256=digest)
            )
        elif item.source is not None and item.source.source is not None:
            moved = _commit_moved(newest.source, item.source.source)
            if moved:
                plan.notes.append(f"{o.name}: {moved}")
        differing = [f for f in COMPARED_FIELDS if _current(existing, f) != desired[f]]
        if differing or not existing.managed:
            fields = differing + ([] if existing.managed else ["managed"])
            described = ", ".join(_described(f, existing, desired) for f in fields)
            plan.changes.append(Change("update", o.name, "metadata: " + described, fields=fields))
        plan.changes += self._alias_changes(loaded, item, existing.id, newest=number, notes=plan.notes)
        if len(plan.changes) == before:
            plan.unchanged.append(o.name)

    def _items(
        self, loaded: LoadedManifest, sources: dict[str, SourceInfo], suites: dict[str, dict[str, Any]]
    ) -> list[_Item]:
        names = {o.name: i for i, o in enumerate(loaded.manifest.offerings)}
        for name in sorted(set(suites) - {o.name for o in loaded.manifest.offerings if _suite_file(o)}):
            where = f"offerings.{names[name]}.expectations" if name in names else "suites"
            raise locate(
                InvalidInput(f"a suite was sent for {name}, whose manifest entry names no suite file"),
                loaded,
                where,
            )
        return [
            _Item(i, o, sources.get(o.name), suites.get(o.name))
            for i, o in enumerate(loaded.manifest.offerings)
        ]

    def _check_policies(self, loaded: LoadedManifest) -> None:
        for index, item in enumerate(loaded.manifest.offerings):
            if item.policy is not None:
                try:
                    self._check_policy(item.policy)
                except InvalidInput as exc:
                    raise locate(exc, loaded, f"offerings.{index}.policy") from None

    def _source_digest(self, loaded: LoadedManifest, item: _Item) -> str:
        o, info = item.offering, item.source
        is_dvc = dvc_source.is_dvc(o.source)
        if not is_dvc and Path(o.source).is_absolute() and info is None:
            path = self._server_path(loaded, item)
            digest, _ = sha256_file(path)
            return digest
        if info is None:
            raise locate(
                InvalidInput(f"no sha256 given for the source of {o.name} ({dvc_source.redact(o.source)})"),
                loaded,
                item.at("source"),
            )
        problem = None
        if is_dvc:
            ref = _parsed(loaded, item)
            if info.source is None:
                problem = "a dvc:// source needs what the client resolved it to (source: repo, commit, md5)"
            else:
                problem = dvc_source.check_reported(ref, info.source.model_dump())
        elif info.source is not None:
            problem = "a DVC source was reported for a file source"
        if problem:
            raise locate(InvalidInput(f"{o.name}: {problem}"), loaded, item.at("source"))
        return parse_digest(info.sha256)

    def _server_path(self, loaded: LoadedManifest, item: _Item) -> Path:
        try:
            return self.offerings.allowed_path(item.offering.source)
        except AgoraError as exc:
            raise locate(InvalidInput(exc.detail), loaded, item.at("source")) from None

    def _desired(self, loaded: LoadedManifest, item: _Item) -> dict[str, Any]:
        o = item.offering
        return {
            "title": o.title,
            "description": o.description,
            "keywords": list(dict.fromkeys(o.keywords)),
            "license": o.license,
            "media_type": o.media_type or guess_media_type(o.source),
            "access_modes": list(o.access_modes),
            "approval": o.approval,
            "policy": o.policy,
            "compute_terms": o.compute_terms().model_dump(),
            "quality_declared": self._quality(loaded, item),
        }

    @staticmethod
    def _quality(loaded: LoadedManifest, item: _Item) -> dict[str, Any]:
        """The quality declarations as stored, a suite file's content (sent by the client) inline."""
        o = item.offering
        reference = _suite_file(o)
        if reference is None:
            return o.quality()
        if item.suite is None:
            raise locate(
                InvalidInput(f"the suite file {reference.suite} was not sent with the manifest"),
                loaded,
                item.at("expectations.suite"),
            )
        try:
            suite = validate(ExpectationSuite, item.suite, what=f"expectation suite {reference.suite}")
        except InvalidInput as exc:
            errors = [type(e)(e.path, f"{reference.suite}: {e.message}") for e in exc.errors]
            raise locate(
                InvalidInput(exc.detail, errors=errors), loaded, item.at("expectations.suite")
            ) from None
        return o.model_copy(update={"expectations": suite}).quality()

    def _alias_changes(
        self,
        loaded: LoadedManifest,
        item: _Item,
        offering_id: str | None,
        *,
        newest: int,
        notes: list[str],
    ) -> list[Change]:
        """Aliases the manifest moves (``offering_id``: None for an offering it creates);
        ``newest`` is the highest version once applied."""
        o = item.offering
        if not o.aliases:
            return []
        if o.kind != "model":
            raise locate(
                InvalidInput(f"aliases name versions of model offerings; {o.name} is a {o.kind}"),
                loaded,
                item.at("aliases"),
            )
        current = self._aliases_of(offering_id) if offering_id is not None else {}
        changes = []
        for name, version in o.aliases.items():
            if version > newest:
                raise locate(
                    InvalidInput(f"{o.name} has no version {version} to name {name} (newest: {newest})"),
                    loaded,
                    item.at(f"aliases.{name}"),
                )
            before = current.get(name)
            if before != version:
                was = f"moved from version {before}" if before is not None else "new"
                changes.append(
                    Change(
                        "alias", o.name, f"{name} → version {version} ({was})", alias=name, version=version
                    )
                )
        notes += [
            f"{o.name}: alias {name} (version {current[name]}) is not in the manifest; left where it is"
            for name in sorted(set(current) - set(o.aliases))
        ]
        return changes

    # Applying -------------------------------------------------------------------------

    def apply(
        self,
        loaded: LoadedManifest,
        sources: dict[str, SourceInfo],
        files: dict[str, StagedObject],
        actor: str,
        suites: dict[str, dict[str, Any]] | None = None,
    ) -> Plan:
        """Carry out the plan; ``files`` holds the uploaded bytes of the offerings that need them."""
        plan = self.plan(loaded, sources, suites)
        items = {i.offering.name: i for i in self._items(loaded, sources, suites or {})}
        for change in plan.changes:
            if change.action in ("create", "new-version"):
                item = items[change.target]
                source = item.source.source.model_dump() if item.source and item.source.source else None
                staged = self._bytes_for(loaded, item, files, change.sha256 or "")
                with staged, _named(loaded, item):
                    if change.action == "create":
                        desired = self._desired(loaded, item)
                        terms = desired.pop("compute_terms")
                        quality = desired.pop("quality_declared")
                        metadata = OfferingMetadata(
                            name=item.offering.name, kind=item.offering.kind, **desired, **terms, **quality
                        )
                        self.offerings.register(staged, metadata, actor, managed=True, source=source)
                    else:
                        self.offerings.add_version(self._id_of(change.target), staged, actor, source=source)
            elif change.action == "update":
                desired = {**self._desired(loaded, items[change.target]), "managed": True}
                self.offerings.update(
                    self._id_of(change.target), {f: desired[f] for f in change.fields}, actor
                )
            elif change.action == "alias":
                assert change.alias is not None and change.version is not None
                self._move_alias(self._id_of(change.target), change.alias, change.version, actor)
            elif change.action in ("retire", "reactivate"):
                status = "retired" if change.action == "retire" else "active"
                self.offerings.set_status(self._id_of(change.target), status, actor)
            elif change.action == "add-peer":
                self._add_peer(change.target, actor)
        return plan

    def _id_of(self, name: str) -> str:
        existing = self.offerings.by_name(name)
        assert existing is not None, name
        return existing.id

    def _bytes_for(
        self, loaded: LoadedManifest, item: _Item, files: dict[str, StagedObject], digest: str
    ) -> StagedObject:
        o = item.offering
        staged = files.get(o.name)
        if staged is None and not dvc_source.is_dvc(o.source) and Path(o.source).is_absolute():
            staged = self.offerings.store.stage_file(self._server_path(loaded, item))
        if staged is None:
            raise locate(
                InvalidInput(
                    f"apply needs the bytes of {o.name}: upload its source as part 'source:{o.name}'"
                ),
                loaded,
                item.at("source"),
            )
        if staged.sha256 != digest:
            staged.discard()
            raise locate(
                InvalidInput(f"the source of {o.name} changed since it was hashed (sha256 {staged.sha256})"),
                loaded,
                item.at("source"),
            )
        return staged


def _suite_file(offering: ManifestOffering) -> SuiteFile | None:
    return offering.expectations if isinstance(offering.expectations, SuiteFile) else None


def _parsed(loaded: LoadedManifest, item: _Item) -> dvc_source.DvcRef:
    try:
        return dvc_source.parse(item.offering.source)
    except InvalidInput as exc:
        raise locate(exc, loaded, item.at("source")) from None


def _origin(item: _Item) -> str:
    """Where a new version comes from, for the plan: the source, and a DVC source's commit."""
    resolved = item.source.source if item.source is not None else None
    shown = dvc_source.redact(item.offering.source)
    return f"{shown} (commit {resolved.commit[:12]})" if resolved else shown


def _commit_moved(recorded: dict[str, Any] | None, now: DvcSourceInfo) -> str | None:
    """A note when a DVC source's rev moved to another commit with the same data."""
    before = (recorded or {}).get("commit")
    if not before or before == now.commit:
        return None
    return f"{now.rev} moved from commit {before[:12]} to {now.commit[:12]}; same data (md5 {now.md5})"


def _current(offering: Offering, name: str) -> Any:
    """A compared field of an existing offering, defaults filled in (an offering registered
    before compute terms or quality declarations existed holds none)."""
    value = getattr(offering, name)
    if name == "compute_terms":
        return ComputeTerms.of(value).model_dump()
    if name == "quality_declared":
        return declared(value)
    return value


def _described(name: str, offering: Offering, desired: dict[str, Any]) -> str:
    """A changed field for the plan; compute terms name each term that changes, old → new,
    and quality declarations the declarations that change."""
    if name not in ("compute_terms", "quality_declared"):
        return name
    before, after = _current(offering, name), desired[name]
    if name == "quality_declared":
        return f"quality ({', '.join(key for key in after if before.get(key) != after[key])})"
    moves = [f"{key} {before[key]} → {after[key]}".lower() for key in after if before[key] != after[key]]
    return f"compute terms ({', '.join(moves)})"


@contextmanager
def _named(loaded: LoadedManifest, item: _Item) -> Iterator[None]:
    """A refusal of an offering's bytes (its schema, its trainability) located at its source line
    and named by the offering, so the steward knows which entry to fix."""
    try:
        yield
    except InvalidInput as exc:
        message = f"{item.offering.name}: {exc.detail}"
        located = loaded.document.error([FieldError(item.at("source"), message)], "manifest")
        # the same kind of refusal (an untrainable file stays a 422), now saying where
        raise type(exc)(located.detail, errors=located.errors, **exc.extra) from None
