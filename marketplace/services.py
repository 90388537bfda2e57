"""Offerings: registering, versioning, listing and serving their bytes.

Every write follows the same order so a failure half-way leaves nothing behind: the bytes
are staged and hashed, the metadata is validated, the object is committed to the store
under its digest, and then the rows (asset, offering, version, audit entry) are written in
one transaction. If that transaction fails, an object this request created and no row
references is deleted again.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from contracts.models import Notarization
from contracts.notary import enqueue as enqueue_notarization
from kernel import audit
from kernel.db import fetch, transaction, utcnow
from kernel.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from kernel.storage import ObjectInfo, ObjectStore, StagedObject
from kernel.validation import validate
from marketplace import views
from marketplace.aliases import find_offering, resolve_in
from marketplace.catalog import sync_local
from marketplace.models import Asset, Offering, OfferingAlias, OfferingVersion
from marketplace.schemas import (
    ImportRequest,
    OfferingDetail,
    OfferingMetadata,
    OfferingOut,
    OfferingPage,
)
from marketplace.terms import ComputeTerms
from quality import intake
from quality.spec import QUALITY_FAILED, QUALITY_NONE, QUALITY_VALIDATING, QualityFields, declared

T = TypeVar("T")
# what of a version's source its anchor covers: a DVC path, rev, commit and md5, or the job or
# federation a model was published from and that model's asset id
SOURCE_KEYS = ("kind", "repo", "path", "rev", "commit", "md5", "job", "federation", "asset_id")
UPDATABLE_FIELDS = (
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
    "managed",
)


@dataclass(frozen=True)
class Download:
    sha256: str
    size: int
    media_type: str
    filename: str


class OfferingService:
    """The offerings of this node's own organisation."""

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        provider: str,
        *,
        import_dirs: list[Path],
        max_upload_bytes: int,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.provider = provider
        self.import_dirs = import_dirs
        self.max_upload_bytes = max_upload_bytes
        self.on_queued = on_queued

    # Writing --------------------------------------------------------------------------

    def register(
        self,
        staged: StagedObject,
        metadata: OfferingMetadata,
        actor: str,
        *,
        managed: bool = False,
        source: dict[str, Any] | None = None,
        offering_id: str | None = None,
    ) -> OfferingOut:
        """Create an offering from bytes already staged (an upload); its id is a new UUID unless
        ``offering_id`` names one (a dataset id a conformance suite expects)."""
        _require_content(staged)
        if metadata.policy is not None:
            _check_at("metadata.policy", metadata.policy)
        try:
            declared = metadata.quality()
        except ValueError as exc:
            raise InvalidInput(str(exc), errors=[FieldError("metadata.expectations", str(exc))]) from None
        staged.finish()  # an upload staged in the background is read by its path next
        found = intake.assess(
            staged.path, metadata.media_type, declared, kind=metadata.kind, modes=list(metadata.access_modes)
        )

        def write(session: Session, info: ObjectInfo) -> OfferingOut:
            if metadata.name and self._by_name(session, metadata.name) is not None:
                raise _name_taken(metadata.name)
            offering = Offering(
                id=offering_id or str(uuid.uuid4()),
                provider=self.provider,
                managed=managed,
                compute_terms=metadata.compute_terms().model_dump(),
                quality_declared=declared,
                **metadata.descriptive(),
            )
            session.add(offering)
            session.flush()
            version, asset, notarization = self._add_version_rows(
                session, offering, info, metadata.media_type, found=found, source=source
            )
            _changed(
                session,
                offering,
                actor,
                "offering.create",
                {"sha256": info.sha256, "size": info.size, "title": offering.title, **_source_note(source)},
            )
            return views.offering_out(offering, version, asset, notarization, created=info.created)

        return self._store_then_record(staged, metadata.media_type, write)

    def import_path(self, request: ImportRequest, actor: str) -> OfferingOut:
        """Register a file from a server-side directory the operator allows."""
        path = self.allowed_path(request.path)
        with self.store.stage_file(path) as staged:
            return self.register(staged, request.metadata, actor)

    def add_version(
        self, offering_id: str, staged: StagedObject, actor: str, *, source: dict[str, Any] | None = None
    ) -> OfferingOut:
        """A new version of an existing offering (new bytes, same metadata)."""
        _require_content(staged)
        offering = self._get(offering_id)
        staged.finish()  # an upload staged in the background is read by its path next
        found = intake.assess(
            staged.path,
            offering.media_type,
            declared_quality(offering),
            kind=offering.kind,
            modes=list(offering.access_modes),
        )

        def write(session: Session, info: ObjectInfo) -> OfferingOut:
            row = fetch(session, Offering, offering_id, f"no offering {offering_id}", lock=True)
            newest = self._newest(session, row)
            if newest.asset_sha256 == info.sha256:
                raise InvalidInput(
                    f"version {newest.version} of offering {offering_id} already has these bytes",
                    errors=[FieldError("file", "identical to the newest version")],
                )
            version, asset, notarization = self._add_version_rows(
                session, row, info, row.media_type, newest.version + 1, found=found, source=source
            )
            _changed(
                session,
                row,
                actor,
                "offering.version",
                {
                    "version": version.version,
                    "sha256": info.sha256,
                    "size": info.size,
                    "published": version.published,
                    **_source_note(source),
                },
            )
            return views.offering_out(row, version, asset, notarization, created=info.created)

        return self._store_then_record(staged, offering.media_type, write)

    def update(self, offering_id: str, changes: dict[str, object], actor: str) -> OfferingOut:
        """Change metadata fields (validated by the caller); audited with old and new values."""
        allowed = set(UPDATABLE_FIELDS)
        if changes.get("policy") is not None:
            _check_at("policy", changes["policy"])  # type: ignore[arg-type]
        if "compute_terms" in changes:
            changes = {**changes, "compute_terms": _terms_at("compute_terms", changes["compute_terms"])}
        if "quality_declared" in changes:
            quality = _quality_at("quality_declared", changes["quality_declared"])
            changes = {**changes, "quality_declared": quality}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidInput(
                f"cannot change {', '.join(unknown)}",
                errors=[FieldError(k, "not updatable") for k in unknown],
            )
        with transaction(self.engine) as session:
            row = fetch(session, Offering, offering_id, f"no offering {offering_id}", lock=True)
            before = {k: getattr(row, k) for k in changes}
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            reprofile = "quality_declared" in changes and _redeclare_schema(
                session, row, declared(before["quality_declared"])["schema"]
            )
            _changed(session, row, actor, "offering.update", {"before": before, "after": changes})
        if reprofile and self.on_queued is not None:
            self.on_queued()
        return self.get(offering_id)

    def set_status(self, offering_id: str, status: str, actor: str) -> OfferingOut:
        """Retire an offering (it leaves the catalog; agreements stay valid) or reactivate it."""
        if status not in ("active", "retired"):
            raise InvalidInput(
                f"unknown status {status!r}", errors=[FieldError("status", "active or retired")]
            )
        with transaction(self.engine) as session:
            row = fetch(session, Offering, offering_id, f"no offering {offering_id}", lock=True)
            if row.status != status:
                previous, row.status, row.updated_at = row.status, status, utcnow()
                action = "offering.retire" if status == "retired" else "offering.reactivate"
                _changed(session, row, actor, action, {"from": previous})
        return self.get(offering_id)

    def terms(
        self, offering_id: str, *, alias: str | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """What a negotiation needs of an active offering: modes, approval, policy and the
        bytes of the version agreed on: the latest, the one ``alias`` names now, or ``version``."""
        detail = self.get(offering_id)
        if detail.status != "active":
            raise NotFound(f"offering {offering_id} is retired")
        number = self.version_of(offering_id, alias=alias, version=version)
        current = next((v for v in detail.versions if v.version == number), None)
        if current is None:
            raise NotFound(f"offering {offering_id} has no version {number}")
        if not current.published:
            raise NotFound(
                f"offering {offering_id} has no published version {number} "
                f"(version {current.version} is {_unpublished_reason(current.quality_status)})"
            )
        return {
            "access_modes": list(detail.access_modes),
            "approval": detail.approval,
            "policy": detail.policy,
            "version": current.version,
            "sha256": current.sha256.removeprefix("sha256:"),
            "size": current.size,
            **({"alias": alias} if alias else {}),
        }

    def version_of(self, offering_id: str, *, alias: str | None = None, version: int | None = None) -> int:
        """The version number an alias names now, ``version`` as given, or the latest."""
        if alias and version:
            raise InvalidInput(
                "give an alias or a version, not both", errors=[FieldError("alias", "with version")]
            )
        with Session(self.engine) as session:
            offering = find_offering(session, self.provider, offering_id)
            if alias:
                return resolve_in(session, offering, alias)
            return version or offering.latest_version

    def compute_terms(self, offering_id: str) -> dict[str, Any]:
        """The offering's compute terms as stored (``marketplace.terms.ComputeTerms`` reads them)."""
        return dict(self._get(offering_id).compute_terms or {})

    def by_name(self, name: str) -> Offering | None:
        with Session(self.engine) as session:
            return self._by_name(session, name)

    def managed(self) -> list[Offering]:
        """Offerings declared in a manifest (plan/apply compare against these)."""
        with Session(self.engine) as session:
            return list(session.exec(select(Offering).where(col(Offering.managed))).all())

    def _add_version_rows(
        self,
        session: Session,
        offering: Offering,
        info: ObjectInfo,
        media_type: str,
        number: int = 1,
        *,
        found: intake.Intake,
        source: dict[str, Any] | None = None,
    ) -> tuple[OfferingVersion, Asset, Notarization]:
        asset = session.get(Asset, info.sha256)
        if asset is None:
            asset = Asset(sha256=info.sha256, size=info.size, media_type=media_type)
            session.add(asset)
            session.flush()
        notarization = enqueue_notarization(
            session,
            kind=offering.kind,
            content_hash=info.sha256,
            owner=self.provider,
            metadata=notarized_metadata(offering, number, source),
            parents=lineage_parents(source),
        )
        declared = declared_quality(offering)
        validating = offering.kind == "dataset" and declared["expectations"] is not None
        version = OfferingVersion(
            offering_id=offering.id,
            version=number,
            asset_sha256=info.sha256,
            notarization_id=notarization.id,
            source=source,
            schema_doc=found.schema,
            trainable=found.trainable,
            quality_status=QUALITY_VALIDATING if validating else QUALITY_NONE,
            # a version waiting for (or failing) a reject-on-failure suite is not offered
            published=not (validating and declared["on_failure"] == "reject"),
        )
        session.add(version)
        if version.published or number == 1:
            offering.latest_version = number
        offering.updated_at = utcnow()
        session.flush()
        return version, asset, notarization

    def validated(self, session: Session, version: OfferingVersion, passed: bool, actor: str) -> None:
        """A version's suite ran (in the caller's transaction, which stores the outcome): a passing
        version is published; a failing one stays unpublished under ``reject`` and is flagged
        (already published) under ``publish-flagged``."""
        offering = fetch(
            session, Offering, version.offering_id, f"no offering {version.offering_id}", lock=True
        )
        declared = declared_quality(offering)
        publish = passed or declared["on_failure"] == "publish-flagged"
        moved = publish and not version.published
        if publish:
            version.published = True
            if version.version > offering.latest_version or not self._published(session, offering):
                offering.latest_version = version.version
        offering.updated_at = utcnow()
        session.add(version)
        _changed(
            session,
            offering,
            actor,
            "offering.validated",
            {
                "version": version.version,
                "status": version.quality_status,
                "published": version.published,
                **({"published_now": True} if moved else {}),
            },
        )

    def _published(self, session: Session, offering: Offering) -> bool:
        current = self._version(session, offering, offering.latest_version)
        return current.published

    def _store_then_record(
        self, staged: StagedObject, media_type: str, write: Callable[[Session, ObjectInfo], T]
    ) -> T:
        info = self.store.commit(staged, media_type)
        try:
            with transaction(self.engine) as session:
                result = write(session, info)
        except BaseException:
            if info.created:
                self._forget_unreferenced(info.sha256)
            raise
        if self.on_queued is not None:
            self.on_queued()
        return result

    def backfill_notarizations(self) -> int:
        """Queue the versions registered before notarization existed (after an upgrade)."""
        with transaction(self.engine) as session:
            rows = session.exec(
                select(OfferingVersion, Offering)
                .join(Offering, col(Offering.id) == OfferingVersion.offering_id)
                .where(col(OfferingVersion.notarization_id).is_(None))
            ).all()
            for version, offering in rows:
                notarization = enqueue_notarization(
                    session,
                    kind=offering.kind,
                    content_hash=version.asset_sha256,
                    owner=offering.provider,
                    metadata=notarized_metadata(offering, version.version, version.source),
                    parents=lineage_parents(version.source),
                )
                version.notarization_id = notarization.id
        return len(rows)

    def _forget_unreferenced(self, sha256: str) -> None:
        with Session(self.engine) as session:
            if session.get(Asset, sha256) is None:
                self.store.delete(sha256)

    def allowed_path(self, text: str) -> Path:
        """A server-side file under AGORA_IMPORT_DIRS (symlinks resolved), or the reason it is not."""
        if not self.import_dirs:
            raise Forbidden(
                "registering server-side files is disabled on this node (set AGORA_IMPORT_DIRS)",
                errors=[FieldError("path", "no import directory is configured")],
            )
        raw = Path(text)
        if not raw.is_absolute():
            raise InvalidInput("path must be absolute", errors=[FieldError("path", "not an absolute path")])
        try:
            resolved = raw.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise InvalidInput(
                f"no such file: {text}", errors=[FieldError("path", "does not exist")]
            ) from None
        if not any(resolved.is_relative_to(d) for d in self.import_dirs):
            raise Forbidden(
                f"{text} is outside the directories this node imports from",
                errors=[FieldError("path", "outside AGORA_IMPORT_DIRS")],
            )
        if not resolved.is_file():
            raise InvalidInput(f"{text} is not a regular file", errors=[FieldError("path", "not a file")])
        return resolved

    # Reading --------------------------------------------------------------------------

    def list(self, *, kind: str | None = None, cursor: str | None = None, limit: int = 50) -> OfferingPage:
        """Newest first, keyset-paginated on (created_at, id) so pages are stable."""
        return views.page(self.engine, kind=kind, cursor=cursor, limit=limit)

    def get(self, offering_id: str) -> OfferingDetail:
        with Session(self.engine) as session:
            offering = fetch(session, Offering, offering_id, f"no offering {offering_id}")
            rows = session.exec(
                select(OfferingVersion, Asset, Notarization)
                .join(Asset, col(Asset.sha256) == OfferingVersion.asset_sha256)
                .outerjoin(Notarization, col(Notarization.id) == OfferingVersion.notarization_id)
                .where(OfferingVersion.offering_id == offering_id)
                .order_by(col(OfferingVersion.version))
            ).all()
            aliases = {
                a.name: a.version
                for a in session.exec(
                    select(OfferingAlias)
                    .where(OfferingAlias.offering_id == offering_id)
                    .order_by(col(OfferingAlias.name))
                ).all()
            }
            validations = views.validation_anchors(session, [v for v, _, _ in rows])
        current = next((row for row in rows if row[0].version == offering.latest_version), rows[-1])
        base = views.offering_out(offering, *current)
        named: dict[int, list[str]] = {}
        for alias, number in aliases.items():
            named.setdefault(number, []).append(alias)
        return OfferingDetail(
            **msgspec.structs.asdict(base),
            versions=[
                views.version_out(
                    *row, validation=validations.get(row[0].id), aliases=named.get(row[0].version, [])
                )
                for row in rows
            ],
            declared=declared_quality(offering),
            aliases=aliases,
        )

    def download(self, offering_id: str, version: int | None = None, *, alias: str | None = None) -> Download:
        detail = self.get(offering_id)
        wanted = (
            self.version_of(offering_id, alias=alias, version=version) if alias else version or detail.version
        )
        match = next((v for v in detail.versions if v.version == wanted), None)
        if match is None:
            raise NotFound(f"offering {offering_id} has no version {wanted}")
        if not match.published:
            raise NotFound(
                f"version {wanted} of offering {offering_id} is not published "
                f"({_unpublished_reason(match.quality_status)})"
            )
        ext = mimetypes.guess_extension(detail.media_type.split(";")[0]) or ""
        filename = f"{detail.name or detail.id}-v{wanted}{ext}"
        return Download(match.sha256.removeprefix("sha256:"), match.size, detail.media_type, filename)

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self.store.read(sha256, start, end)

    def _get(self, offering_id: str) -> Offering:
        with Session(self.engine) as session:
            return fetch(session, Offering, offering_id, f"no offering {offering_id}")

    def _by_name(self, session: Session, name: str) -> Offering | None:
        return session.exec(
            select(Offering).where(Offering.provider == self.provider, Offering.name == name)
        ).first()

    @staticmethod
    def _newest(session: Session, offering: Offering) -> OfferingVersion:
        """The highest version, published or not (a new version numbers after it)."""
        return session.exec(
            select(OfferingVersion)
            .where(OfferingVersion.offering_id == offering.id)
            .order_by(col(OfferingVersion.version).desc())
            .limit(1)
        ).one()

    @staticmethod
    def _version(session: Session, offering: Offering, number: int) -> OfferingVersion:
        row = session.exec(
            select(OfferingVersion).where(
                OfferingVersion.offering_id == offering.id, OfferingVersion.version == number
            )
        ).one()
        return row


def _changed(session: Session, offering: Offering, actor: str, action: str, details: dict[str, Any]) -> None:
    """Every change to an offering: audited, and its catalog entry kept in step, in its transaction."""
    session.flush()
    audit.record(
        session, actor=actor, action=action, subject_type="offering", subject_id=offering.id, details=details
    )
    sync_local(session, offering)


def check_policy(policy: dict[str, object]) -> None:
    """Raise :class:`InvalidInput` (with field paths inside the policy) for a bad policy."""
    from marketplace.policy import parse_policy

    parse_policy(policy)


def _check_at(prefix: str, policy: dict[str, object]) -> None:
    try:
        check_policy(policy)
    except InvalidInput as exc:
        raise exc.under(prefix) from None


def _terms_at(prefix: str, value: object) -> dict[str, Any]:
    """Compute terms as stored (every key, validated), or :class:`InvalidInput` naming the field."""
    return validate(ComputeTerms, value, prefix=prefix, what="compute terms").model_dump()


def _redeclare_schema(session: Session, offering: Offering, old: dict[str, Any] | None) -> bool:
    """A dataset offering whose declared schema changed: each version's stored schema becomes
    the new declaration (its roles decide what a profile shows) and its profile is made again
    by the quality worker. True when versions were reset."""
    from quality.schema import schema_doc
    from quality.spec import DatasetSchema

    new = declared(offering.quality_declared)["schema"]
    if offering.kind != "dataset" or new is None or new == old:
        return False
    doc = schema_doc(DatasetSchema.model_validate(new), "declared")
    versions = session.exec(select(OfferingVersion).where(OfferingVersion.offering_id == offering.id)).all()
    for version in versions:
        version.schema_doc, version.profile = doc, None
        session.add(version)
    return bool(versions)


def _quality_at(prefix: str, value: object) -> dict[str, Any]:
    """Quality declarations as stored (schema, inline suite, on_failure, on_untrainable), or
    :class:`InvalidInput` naming the field (a suite file must have been read and inlined)."""
    fields = validate(QualityFields, value, prefix=prefix, what="quality declarations")
    try:
        return fields.quality()
    except ValueError as exc:
        raise InvalidInput(str(exc), errors=[FieldError(f"{prefix}.expectations", str(exc))]) from None


def _require_content(staged: StagedObject) -> None:
    if staged.size == 0:
        raise InvalidInput("the file is empty", errors=[FieldError("file", "empty file")])


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f"an offering named {name!r} already exists", errors=[FieldError("metadata.name", "taken")]
    )


def notarized_metadata(
    offering: Offering, version: int | None = None, source: dict[str, Any] | None = None
) -> dict[str, object]:
    """What an offering version's anchor covers besides its bytes (its metadata hash): the
    offering's description, the version's number and, for a DVC source, the repository path,
    git commit and DVC md5 it came from (for a published job or federation model: its id and
    the asset it was published from)."""
    extra: dict[str, object] = {}
    if version is not None:
        extra["version"] = version
    if source:
        extra["source"] = {k: source[k] for k in SOURCE_KEYS if k in source}
    return {
        **extra,
        "provider": offering.provider,
        "name": offering.name,
        "kind": offering.kind,
        "title": offering.title,
        "description": offering.description,
        "keywords": list(offering.keywords),
        "license": offering.license,
        "media_type": offering.media_type,
    }


def lineage_parents(source: dict[str, Any] | None) -> list[str] | None:
    """A version published from a job's or a federation's model descends from that model's
    own asset (``marketplace.publish``): its anchor names it as parent, so the lineage walks on."""
    if source and source.get("kind") in ("job", "federation") and source.get("asset_id"):
        return [str(source["asset_id"])]
    return None


def declared_quality(offering: Offering) -> dict[str, Any]:
    """An offering's quality declarations (schema, suite, on_failure, on_untrainable), defaults filled in."""
    return declared(offering.quality_declared)


def _unpublished_reason(status: str) -> str:
    if status == QUALITY_VALIDATING:
        return "being validated against its expectation suite"
    if status == QUALITY_FAILED:
        return "rejected: it failed its expectation suite"
    return f"not published (validation {status})"


def _source_note(source: dict[str, Any] | None) -> dict[str, Any]:
    """What an audit entry says of a version's source (a DVC commit and path), if any."""
    if not source:
        return {}
    return {"source": {k: source.get(k) for k in SOURCE_KEYS if k != "repo" and k in source}}
