"""Model aliases: names such as ``champion`` or ``candidate`` the owner points at a version.

As in MLflow (2.9 replaced stages with aliases), an alias names exactly one version of one
model offering and moves when the owner says so; ``latest`` is reserved and always means
the newest published version. Only a published version can be named.

Every move and every deletion is written in the audit log (from → to) and notarized in the
same transaction: an ``alias`` asset whose content is the canonical hash of
``{offering, alias, version, sha256, moved_at}`` and whose parent is the named version's own
asset, so the chain holds which bytes the name pointed at, and since when. The offering's
catalog entry carries the aliases (``agora:aliases``) so peers see them.

A negotiation that asks for an alias is agreed on the version it names at that moment
(:func:`resolve_in`, called by ``OfferingService.terms``); moving the alias later changes no
agreement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from contracts.models import Notarization
from contracts.notary import enqueue
from contracts.registry import asset_id
from kernel import audit
from kernel.canonical import canonical_hash
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import Conflict, FieldError, InvalidInput, NotFound
from marketplace.catalog import sync_local
from marketplace.models import Offering, OfferingAlias, OfferingVersion

ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
LATEST = "latest"  # reserved: the newest published version
_ALIAS = re.compile(ALIAS_PATTERN)


def check_name(name: str, *, field: str = "name", allow_latest: bool = False) -> str:
    """An alias name as given, or :class:`InvalidInput` saying why it is not one."""
    if not isinstance(name, str) or not _ALIAS.fullmatch(name):
        raise InvalidInput(
            f"{str(name)[:80]!r} is not an alias name (a lower-case letter, then up to 63 of a-z 0-9 _ -)",
            errors=[FieldError(field, f"must match {ALIAS_PATTERN}")],
        )
    if name == LATEST and not allow_latest:
        raise InvalidInput(
            "'latest' is reserved: it always names the newest published version",
            errors=[FieldError(field, "reserved")],
        )
    return name


def find_offering(session: Session, provider: str, key: str, *, lock: bool = False) -> Offering:
    """An own offering by id or by name, or :class:`NotFound`."""
    row = session.get(Offering, key, with_for_update=lock) if len(key) <= 36 else None
    if row is None:
        query = select(Offering).where(Offering.provider == provider, Offering.name == key)
        row = session.exec(query.with_for_update() if lock else query).first()
    if row is None or row.provider != provider:
        raise NotFound(f"no offering {key[:100]}")
    return row


def resolve_in(session: Session, offering: Offering, name: str) -> int:
    """The version ``name`` points at now (``latest``: the newest published one)."""
    check_name(name, field="alias", allow_latest=True)
    if name == LATEST:
        return offering.latest_version
    row = _alias(session, offering.id, name)
    if row is None:
        known = ", ".join(sorted(_current(session, offering.id))) or "none"
        raise NotFound(f"offering {offering.id} has no alias {name!r} (its aliases: {known})")
    return row.version


class AliasService:
    """The aliases of this node's own model offerings."""

    def __init__(self, engine: Engine, provider: str, *, on_queued: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.provider = provider
        self.on_queued = on_queued

    def current(self, offering_id: str) -> dict[str, int]:
        """Alias name → version, by name."""
        with Session(self.engine) as session:
            offering = find_offering(session, self.provider, offering_id)
            return _current(session, offering.id)

    def describe(self, offering_id: str) -> dict[str, Any]:
        """What ``GET …/aliases`` answers: the offering's id, its latest version and aliases."""
        with Session(self.engine) as session:
            offering = find_offering(session, self.provider, offering_id)
            return {
                "offering_id": offering.id,
                "latest": offering.latest_version,
                "aliases": _current(session, offering.id),
            }

    def resolve(self, offering_id: str, name: str) -> int:
        with Session(self.engine) as session:
            return resolve_in(session, find_offering(session, self.provider, offering_id), name)

    def move(self, offering_id: str, name: str, version: int, actor: str) -> dict[str, Any]:
        """Point ``name`` at ``version`` (created if new); audited and notarized. Pointing it
        where it already points changes nothing."""
        check_name(name)
        with transaction(self.engine) as session:
            offering = _model(find_offering(session, self.provider, offering_id, lock=True))
            target = _published_version(session, offering, version)
            row = _alias(session, offering.id, name)
            previous = row.version if row is not None else None
            if row is not None and previous == version:
                notarization = session.get(Notarization, row.notarization_id) if row.notarization_id else None
                return _out(offering, row, previous, notarization, moved=False)
            if row is None:
                row = OfferingAlias(offering_id=offering.id, name=name, version=version)
            moved_at = utcnow()
            notarization = self._notarize(session, offering, name, target, moved_at, previous)
            row.version, row.moved_by, row.updated_at = version, actor[:200], moved_at
            row.notarization_id = notarization.id
            session.add(row)
            self._changed(
                session,
                offering,
                actor,
                "offering.alias",
                {"alias": name, "from": previous, "to": version, "anchor": notarization.asset_id},
            )
            out = _out(offering, row, previous, notarization, moved=True)
        self._queued()
        return out

    def delete(self, offering_id: str, name: str, actor: str) -> None:
        """Remove an alias; the removal is audited and notarized like a move (to no version)."""
        check_name(name)
        with transaction(self.engine) as session:
            offering = _model(find_offering(session, self.provider, offering_id, lock=True))
            row = _alias(session, offering.id, name)
            if row is None:
                raise NotFound(f"offering {offering.id} has no alias {name!r}")
            target = _version(session, offering, row.version)
            notarization = self._notarize(
                session, offering, name, target, utcnow(), row.version, deleted=True
            )
            session.delete(row)
            self._changed(
                session,
                offering,
                actor,
                "offering.alias.delete",
                {"alias": name, "from": row.version, "to": None, "anchor": notarization.asset_id},
            )
        self._queued()

    def _notarize(
        self,
        session: Session,
        offering: Offering,
        name: str,
        target: OfferingVersion,
        moved_at: Any,
        previous: int | None,
        *,
        deleted: bool = False,
    ) -> Notarization:
        """The move's anchor: content covers offering, alias, version, bytes and time; its
        parent is the version's own asset (the one its download's provenance names)."""
        record = {
            "offering": offering.id,
            "alias": name,
            "version": None if deleted else target.version,
            "sha256": None if deleted else target.asset_sha256,
            "moved_at": as_utc(moved_at).isoformat(),
        }
        verb = f"removed from v{target.version}" if deleted else f"→ v{target.version}"
        return enqueue(
            session,
            kind="alias",
            content_hash=canonical_hash(record),
            owner=self.provider,
            metadata={
                "title": f"alias {name} {verb} of {offering.title}"[:200],
                **record,
                "from": previous,
            },
            parents=[version_asset_id(session, offering, target)],
        )

    @staticmethod
    def _changed(
        session: Session, offering: Offering, actor: str, action: str, details: dict[str, Any]
    ) -> None:
        offering.updated_at = utcnow()  # peers re-crawl the entry: its aliases changed
        session.add(offering)
        session.flush()
        audit.record(
            session,
            actor=actor,
            action=action,
            subject_type="offering",
            subject_id=offering.id,
            details=details,
        )
        sync_local(session, offering)

    def _queued(self) -> None:
        if self.on_queued is not None:
            self.on_queued()


def version_asset_id(session: Session, offering: Offering, version: OfferingVersion) -> str:
    """The registry id of a version's bytes as this offering notarized them."""
    if version.notarization_id is not None:
        notarization = session.get(Notarization, version.notarization_id)
        if notarization is not None:
            return notarization.asset_id
    return "0x" + asset_id(offering.provider, offering.kind, bytes.fromhex(version.asset_sha256)).hex()


def _model(offering: Offering) -> Offering:
    if offering.kind != "model":
        raise InvalidInput(
            f"offering {offering.id} is a {offering.kind}: only model offerings have aliases",
            errors=[FieldError("offering", "not a model")],
        )
    return offering


def _version(session: Session, offering: Offering, number: int) -> OfferingVersion:
    row = session.exec(
        select(OfferingVersion).where(
            OfferingVersion.offering_id == offering.id, OfferingVersion.version == number
        )
    ).first()
    if row is None:
        raise NotFound(f"offering {offering.id} has no version {number}")
    return row


def _published_version(session: Session, offering: Offering, number: int) -> OfferingVersion:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput(f"{number!r} is not a version number", errors=[FieldError("version", "not >= 1")])
    row = _version(session, offering, number)
    if not row.published:
        raise Conflict(
            f"version {number} of offering {offering.id} is not published "
            f"(quality {row.quality_status}): an alias names only a published version",
            errors=[FieldError("version", "not published")],
        )
    return row


def _alias(session: Session, offering_id: str, name: str) -> OfferingAlias | None:
    return session.exec(
        select(OfferingAlias).where(OfferingAlias.offering_id == offering_id, OfferingAlias.name == name)
    ).first()


def _current(session: Session, offering_id: str) -> dict[str, int]:
    rows = session.exec(
        select(OfferingAlias)
        .where(OfferingAlias.offering_id == offering_id)
        .order_by(col(OfferingAlias.name))
    ).all()
    return {row.name: row.version for row in rows}


def _out(
    offering: Offering,
    row: OfferingAlias,
    previous: int | None,
    notarization: Notarization | None,
    *,
    moved: bool,
) -> dict[str, Any]:
    return {
        "offering_id": offering.id,
        "alias": row.name,
        "version": row.version,
        "from": previous,
        "moved": moved,
        "moved_by": row.moved_by,
        "updated_at": as_utc(row.updated_at).isoformat(),
        "anchor": {
            "status": notarization.status if notarization else "NOT_QUEUED",
            "asset_id": notarization.asset_id if notarization else None,
        },
    }
