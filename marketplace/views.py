"""How offerings read back: the API's shapes of an offering, its versions and anchors, and
the listed page (the hot read path, plain columns over one index)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from contracts.models import Notarization
from kernel.db import as_utc
from kernel.errors import FieldError, InvalidInput
from marketplace.models import Asset, Offering, OfferingVersion
from marketplace.schemas import Anchor, ComputeTermsOut, OfferingOut, OfferingPage, VersionOut
from marketplace.terms import ComputeTerms

MAX_PAGE = 500


def page(
    engine: Engine, *, kind: str | None = None, cursor: str | None = None, limit: int = 50
) -> OfferingPage:
    """Newest first, keyset-paginated on (created_at, id) so pages are stable.

    The hot read path: plain columns (no ORM objects) over the (status, created_at, id)
    index, so a page costs about the same at 10 or 100,000 offerings.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE}", errors=[FieldError("limit", "out of range")]
        )
    tables: list[Any] = [m.__table__ for m in (Offering, OfferingVersion, Asset, Notarization)]  # type: ignore[union-attr]
    o, v, a, n = (t.c for t in tables)
    query = (
        sa_select(
            o.id,
            o.name,
            o.kind,
            o.title,
            o.description,
            o.keywords,
            o.license,
            o.media_type,
            o.access_modes,
            o.approval,
            o.policy,
            o.compute_terms,
            o.provider,
            o.status,
            o.created_at,
            o.updated_at,
            v.version,
            v.quality_status,
            a.sha256,
            a.size,
            n.status.label("anchor_status"),
            n.asset_id,
            n.chain_id,
            n.registry_address,
            n.batch_root,
            n.tx_hash,
            n.block_number,
            n.last_error,
        )
        .select_from(tables[0])
        .join(tables[1], and_(v.offering_id == o.id, v.version == o.latest_version))
        .join(tables[2], a.sha256 == v.asset_sha256)
        .outerjoin(tables[3], n.id == v.notarization_id)
        .where(o.status == "active")
        .order_by(o.created_at.desc(), o.id.desc())
        .limit(limit + 1)
    )
    if kind:
        query = query.where(o.kind == kind)
    if cursor:
        at, last_id = _decode_cursor(cursor)
        query = query.where(or_(o.created_at < at, and_(o.created_at == at, o.id < last_id)))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    items = [_row_out(row) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = _cursor_of(last["created_at"], last["id"]) if last is not None else None
    return OfferingPage(items=items, next_cursor=next_cursor)


def terms_out(stored: dict[str, Any] | None) -> ComputeTermsOut:
    """An offering's stored compute terms as the API shows them (missing keys: the defaults)."""
    terms = ComputeTerms.of(stored)
    return ComputeTermsOut(
        job_logs=terms.job_logs,
        allow_native_release=terms.allow_native_release,
        allow_stored_examples=terms.allow_stored_examples,
    )


def anchor_of(notarization: Notarization | None) -> Anchor:
    if notarization is None:
        return Anchor(status="NOT_QUEUED")
    return Anchor(
        status=notarization.status,
        asset_id=notarization.asset_id,
        chain_id=notarization.chain_id,
        registry=notarization.registry_address,
        batch_root=notarization.batch_root,
        tx_hash=notarization.tx_hash,
        block_number=notarization.block_number,
        error=notarization.last_error or None,
    )


def version_out(
    version: OfferingVersion,
    asset: Asset,
    notarization: Notarization | None,
    *,
    validation: Notarization | None = None,
    aliases: list[str] | None = None,
) -> VersionOut:
    return VersionOut(
        version=version.version,
        sha256=f"sha256:{asset.sha256}",
        size=asset.size,
        media_type=asset.media_type,
        created_at=as_utc(version.created_at),
        anchor=anchor_of(notarization),
        published=version.published,
        quality_status=version.quality_status,
        quality=version.quality,
        validation=anchor_of(validation) if validation is not None else None,
        validation_sha256=f"sha256:{version.validation_sha256}" if version.validation_sha256 else None,
        schema=version.schema_doc,
        trainable=version.trainable,
        profile=version.profile,
        source=version.source,
        aliases=aliases or [],
    )


def validation_anchors(session: Session, versions: list[OfferingVersion]) -> dict[int | None, Notarization]:
    ids = [v.validation_notarization_id for v in versions if v.validation_notarization_id is not None]
    if not ids:
        return {}
    found = {n.id: n for n in session.exec(select(Notarization).where(col(Notarization.id).in_(ids))).all()}
    return {
        v.id: found[v.validation_notarization_id] for v in versions if v.validation_notarization_id in found
    }


def offering_out(
    offering: Offering,
    version: OfferingVersion,
    asset: Asset,
    notarization: Notarization | None,
    created: bool = True,
) -> OfferingOut:
    return OfferingOut(
        id=offering.id,
        name=offering.name,
        kind=offering.kind,
        title=offering.title,
        description=offering.description,
        keywords=offering.keywords,
        license=offering.license,
        media_type=offering.media_type,
        access_modes=offering.access_modes,
        approval=offering.approval,
        policy=offering.policy,
        compute_terms=terms_out(offering.compute_terms),
        provider=offering.provider,
        status=offering.status,
        version=version.version,
        sha256=f"sha256:{asset.sha256}",
        size=asset.size,
        anchor=anchor_of(notarization),
        created_at=as_utc(offering.created_at),
        updated_at=as_utc(offering.updated_at),
        created=created,
        quality_status=version.quality_status,
    )


def _cursor_of(created_at: datetime, offering_id: str) -> str:
    raw = f"{as_utc(created_at).isoformat()}|{offering_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _row_out(m: Any) -> OfferingOut:
    """A listed offering from a plain result row (validated when written, not again here)."""
    anchor = Anchor(
        status=m["anchor_status"] or "NOT_QUEUED",
        asset_id=m["asset_id"],
        chain_id=m["chain_id"],
        registry=m["registry_address"],
        batch_root=m["batch_root"],
        tx_hash=m["tx_hash"],
        block_number=m["block_number"],
        error=m["last_error"] or None,
    )
    return OfferingOut(
        id=m["id"],
        name=m["name"],
        kind=m["kind"],
        title=m["title"],
        description=m["description"],
        keywords=m["keywords"],
        license=m["license"],
        media_type=m["media_type"],
        access_modes=m["access_modes"],
        approval=m["approval"],
        policy=m["policy"],
        compute_terms=terms_out(m["compute_terms"]),
        provider=m["provider"],
        status=m["status"],
        version=m["version"],
        sha256=f"sha256:{m['sha256']}",
        size=m["size"],
        anchor=anchor,
        created_at=as_utc(m["created_at"]),
        updated_at=as_utc(m["updated_at"]),
        created=True,
        quality_status=m["quality_status"],
    )


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last_id = raw.split("|", 1)
        return datetime.fromisoformat(at), last_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            "bad cursor", errors=[FieldError("cursor", "not a cursor this node issued")]
        ) from None
