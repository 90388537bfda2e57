"""The marketplace catalog: this node's offerings and its peers', in one searchable table.

* :func:`sync_local` keeps the entry of an own offering in step, in the same transaction as
  every change to the offering.
* :meth:`CatalogService.search` serves ``GET /api/v1/catalog``: full text (FTS5 on SQLite,
  tsvector on PostgreSQL; the database maintains both), filters, keyset pagination in a
  stable order (newest change first).
* :meth:`CatalogService.dcat_catalog` renders what a requesting participant may see as a
  Dataspace Protocol catalog (DCAT datasets with ODRL offers, and each current version's
  quality evidence in DQV and CSVW, :mod:`quality.dqv`); offerings whose policy excludes the
  requester are left out.
* :meth:`CatalogService.store_peer_page` takes a page a crawler fetched from a peer, keeping of
  each dataset only the columns and a bounded document (:func:`peer_document`).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, and_, func, or_, text, update
from sqlalchemy import column as sa_column
from sqlalchemy import delete as sa_delete
from sqlalchemy import select as sa_select
from sqlalchemy import table as sa_table
from sqlmodel import Session, col, delete, select

from kernel.db import as_utc, backend_name, transaction, utcnow
from kernel.errors import FieldError, InvalidInput, NotFound
from marketplace.models import (
    Asset,
    CatalogEntry,
    Offering,
    OfferingAlias,
    OfferingVersion,
    PeerCatalogState,
)
from marketplace.terms import ComputeTerms
from quality import dqv, dqv_read

DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
MAX_PAGE = 200
COMPUTE_TERMS = "agora:computeTerms"  # what a compute job's consumer may receive (marketplace.terms)
ALIASES = "agora:aliases"  # a model offering's aliases: name → version (marketplace.aliases)
VALIDATION_SHA256 = "agora:validationSha256"  # finds the entry when its validation is anchored
MAX_ALIASES = 64
CONTEXT_PATH = "/ui/context.jsonld"  # the JSON-LD context of the catalog's own prefixes (quality.dqv)
_TOKEN = re.compile(r"\w+", re.UNICODE)


# Keeping own offerings in the catalog ---------------------------------------------------


def sync_local(session: Session, offering: Offering) -> None:
    """Upsert (or, once retired, remove) the catalog entry of an own offering."""
    entry = session.exec(
        select(CatalogEntry).where(
            CatalogEntry.provider == offering.provider, CatalogEntry.offering_id == offering.id
        )
    ).first()
    version = session.exec(
        select(OfferingVersion).where(
            OfferingVersion.offering_id == offering.id, OfferingVersion.version == offering.latest_version
        )
    ).one()
    if offering.status != "active" or not version.published:
        # retired, or no version published yet (a first version validating or rejected)
        if entry is not None:
            session.delete(entry)
        return
    asset = session.get(Asset, version.asset_sha256)
    from contracts.models import Notarization

    notarization = session.get(Notarization, version.notarization_id) if version.notarization_id else None
    validation = (
        session.get(Notarization, version.validation_notarization_id)
        if version.validation_notarization_id
        else None
    )
    fields = _entry_fields(
        name=offering.name,
        kind=offering.kind,
        title=offering.title,
        description=offering.description,
        keywords=list(offering.keywords),
        license=offering.license,
        media_type=offering.media_type,
        access_modes=list(offering.access_modes),
        version=offering.latest_version,
        sha256=asset.sha256 if asset else "",
        policy=offering.policy,
        anchor_status=notarization.status if notarization else "",
    )
    if entry is None:
        entry = CatalogEntry(provider=offering.provider, offering_id=offering.id, local=True, **fields)
        session.add(entry)
    else:
        for key, value in fields.items():
            setattr(entry, key, value)
    # what a peer's DCAT dataset carries besides the columns (see CatalogService._dataset)
    found = dqv.evidence(
        status=version.quality_status,
        schema=version.schema_doc,
        profile=version.profile,
        summary=version.quality,
        source=version.source,
        validation_sha256=version.validation_sha256,
        validation_asset_id=validation.asset_id if validation else None,
        validation_anchor=validation.status if validation else None,
    )
    entry.document = {
        COMPUTE_TERMS: ComputeTerms.of(offering.compute_terms).model_dump(),
        dqv.EVIDENCE: found,
        dqv.STATUS: found["status"],
        VALIDATION_SHA256: version.validation_sha256 or "",
    }
    if offering.kind == "model":  # read before the assignment: the query autoflushes the entry
        aliases = session.exec(
            select(OfferingAlias)
            .where(OfferingAlias.offering_id == offering.id)
            .order_by(col(OfferingAlias.name))
        ).all()
        entry.document = {**entry.document, ALIASES: {a.name: a.version for a in aliases}}
    entry.modified_at = as_utc(offering.updated_at)
    entry.fetched_at = utcnow()


def stated_terms(document: dict[str, Any] | None) -> dict[str, Any] | None:
    """The compute terms a catalog entry states (a peer's, as it sent them), or None when it
    states none or they are not valid terms."""
    try:
        return ComputeTerms.model_validate((document or {})[COMPUTE_TERMS]).model_dump()
    except (KeyError, TypeError, ValidationError):
        return None


OFFER = "dsp:offer"  # a peer's offer on a dataset, as its catalog states it (what a request echoes)
MAX_OFFER_BYTES = 16 * 1024


def dataset_iri(offering_id: str) -> str:
    """A dataset's ``@id`` in the DSP catalog: ``urn:uuid:<id>`` for an offering id that is a
    UUID (Agora's own), the id as it is otherwise (one given at registration, e.g. a
    conformance suite's ``CAT0101``)."""
    try:
        uuid.UUID(offering_id)
    except ValueError:
        return offering_id
    return f"urn:uuid:{offering_id}"


def _peer_offer(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The first offer of a peer's dataset with the dataset as its target, if it is small."""
    policies = dataset.get("hasPolicy")
    first = policies[0] if isinstance(policies, list) and policies else policies
    if not isinstance(first, dict) or not isinstance(dataset.get("@id"), str):
        return None
    offer = {**first, "target": dataset["@id"]}
    return offer if len(json.dumps(offer)) <= MAX_OFFER_BYTES else None


def peer_document(dataset: dict[str, Any]) -> dict[str, Any]:
    """What this node keeps of a peer's DCAT dataset besides the columns: its compute terms (when
    they are valid terms), its aliases and its quality evidence, each bounded (a peer's document
    is hostile: nothing else of it is stored)."""
    found = dqv_read.read_dataset(dataset)
    aliases = dataset.get(ALIASES)
    document: dict[str, Any] = {
        COMPUTE_TERMS: stated_terms(dataset),
        dqv.EVIDENCE: found,
        dqv.STATUS: found["status"] if found else "",
    }
    offer = _peer_offer(dataset)
    if offer is not None:
        document[OFFER] = offer
    if isinstance(aliases, dict):
        document[ALIASES] = {
            str(name)[:64]: number
            for name, number in list(aliases.items())[:MAX_ALIASES]
            if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 2**31
        }
    return document


def _entry_fields(**values: Any) -> dict[str, Any]:
    keywords = values["keywords"]
    values["search_text"] = " ".join(
        [
            values["title"],
            values["description"],
            " ".join(keywords),
            values.get("name") or "",
            values["license"],
        ]
    )
    tags = [f"kw:{k.lower()}" for k in keywords] + [f"mode:{m}" for m in values["access_modes"]]
    values["filter_tags"] = "|" + "|".join(tags) + "|"
    return values


# Search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogFilters:
    q: str | None = None
    kind: str | None = None
    provider: str | None = None
    keyword: str | None = None
    access_mode: str | None = None
    license: str | None = None


def fts_query(q: str) -> str:
    """A safe full-text query: each word a prefix term, all required."""
    words = _TOKEN.findall(q.lower())[:12]
    if not words:
        raise InvalidInput("the search has no words", errors=[FieldError("q", "no searchable words")])
    return " ".join(f'"{w}"*' for w in words)


class CatalogService:
    def __init__(self, engine: Engine, *, self_address: str, public_url: str) -> None:
        self.engine = engine
        self.self_address = self_address
        self.public_url = public_url.rstrip("/")
        self.context_url = self.public_url + CONTEXT_PATH
        self.backend = backend_name(str(engine.url))

    def search(
        self, filters: CatalogFilters, *, cursor: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(
                f"limit must be between 1 and {MAX_PAGE}", errors=[FieldError("limit", "out of range")]
            )
        table: Any = CatalogEntry.__table__  # type: ignore[attr-defined]
        wanted = [c for c in table.c if c.name not in ("document", "search_text", "filter_tags")]
        wanted.append(table.c.document[dqv.STATUS].as_string().label("quality_status"))
        query = sa_select(*wanted)
        if filters.q:
            # full-text results come newest entry first (by id): the index hands them over in
            # that order, so a page never sorts every match of a common word
            query = self._text_search(query, table, filters.q)
            if cursor:
                query = query.where(table.c.id < _decode_id_cursor(cursor))
        else:
            query = query.order_by(col(CatalogEntry.modified_at).desc(), col(CatalogEntry.id).desc())
            if cursor:
                at, last_id = _decode_cursor(cursor)
                query = query.where(
                    or_(
                        col(CatalogEntry.modified_at) < at,
                        and_(col(CatalogEntry.modified_at) == at, col(CatalogEntry.id) < last_id),
                    )
                )
        for column, value in (
            (col(CatalogEntry.kind), filters.kind),
            (col(CatalogEntry.provider), filters.provider),
            (col(CatalogEntry.license), filters.license),
        ):
            if value:
                query = query.where(column == value)
        if filters.keyword:
            query = query.where(col(CatalogEntry.filter_tags).contains(f"|kw:{filters.keyword.lower()}|"))
        if filters.access_mode:
            query = query.where(col(CatalogEntry.filter_tags).contains(f"|mode:{filters.access_mode}|"))
        with Session(self.engine) as session:
            # plain rows, not ORM objects: hydrating a page of entities costs more than the query
            rows: list[Any] = [
                SimpleNamespace(**m) for m in session.execute(query.limit(limit + 1)).mappings()
            ]
            states = {s.provider: s for s in session.exec(select(PeerCatalogState)).all()}
        items = [self._item(row, states.get(row.provider)) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_id_cursor(last.id) if filters.q else _encode_cursor(last)
        return {"items": items, "next_cursor": next_cursor}

    def set_anchor_status(self, assets: list[tuple[str, str]], status: str) -> None:
        """The notary anchored (or failed) these (owner, sha256) assets: show it in the catalog
        (an offering's own anchor, or the anchor of its current version's validation result)."""
        with transaction(self.engine) as session:
            validated = session.exec(
                select(CatalogEntry).where(
                    col(CatalogEntry.local),
                    col(CatalogEntry.document)[VALIDATION_SHA256]
                    .as_string()
                    .in_([sha256 for _, sha256 in assets]),
                )
            ).all()
            for entry in validated:
                found = dict(entry.document.get(dqv.EVIDENCE) or {})
                if found.get("validation"):
                    found["validation"] = {**found["validation"], "anchor_status": status}
                    entry.document = {**entry.document, dqv.EVIDENCE: found}
            for owner, sha256 in assets:
                session.execute(
                    update(CatalogEntry)
                    .where(
                        col(CatalogEntry.provider) == owner,
                        col(CatalogEntry.sha256) == sha256,
                        col(CatalogEntry.local),
                    )
                    .values(anchor_status=status)
                )

    def entry(self, provider: str, offering_id: str) -> dict[str, Any] | None:
        """One catalog entry as a search result item (the web UI's offering page)."""
        with Session(self.engine) as session:
            row = session.exec(
                select(CatalogEntry).where(
                    CatalogEntry.provider == provider, CatalogEntry.offering_id == offering_id
                )
            ).first()
            if row is None:
                return None
            state = session.get(PeerCatalogState, provider)
        return {
            **self._item(row, state),
            "quality_status": _status(row.document),
            "compute_terms": stated_terms(row.document),
            "evidence": (row.document or {}).get(dqv.EVIDENCE),
        }

    def _text_search(self, query: Any, table: Any, q: str) -> Any:
        if self.backend == "sqlite":
            fts = sa_table("catalog_fts", sa_column("rowid"))
            return (
                query.select_from(fts.join(table, table.c.id == fts.c.rowid))
                .where(text("catalog_fts MATCH :fts").bindparams(fts=fts_query(q)))
                .order_by(fts.c.rowid.desc())
            )
        words = _TOKEN.findall(q.lower())[:12]
        if not words:
            raise InvalidInput("the search has no words", errors=[FieldError("q", "no searchable words")])
        tsquery = " & ".join(f"{w}:*" for w in words)
        return query.where(
            text("catalog_entry.search_vector @@ to_tsquery('simple', :tsq)").bindparams(tsq=tsquery)
        ).order_by(table.c.id.desc())

    def _item(self, row: Any, state: PeerCatalogState | None) -> dict[str, Any]:
        item = {
            "provider": row.provider,
            "offering_id": row.offering_id,
            "local": row.local,
            "name": row.name,
            "kind": row.kind,
            "title": row.title,
            "description": row.description,
            "keywords": row.keywords,
            "license": row.license,
            "media_type": row.media_type,
            "access_modes": row.access_modes,
            "version": row.version,
            "sha256": f"sha256:{row.sha256}" if row.sha256 else None,
            "anchor_status": row.anchor_status or None,
            "policy": row.policy,
            "modified_at": as_utc(row.modified_at).isoformat(),
            "fetched_at": as_utc(row.fetched_at).isoformat(),
            "stale": False,
            "quality_status": getattr(row, "quality_status", None) or None,
        }
        if not row.local and state is not None:
            # a copy is as fresh as the last crawl that reached the peer, changed or not
            confirmed = as_utc(state.last_success_at) if state.last_success_at else as_utc(row.fetched_at)
            item["stale"] = bool(state.last_error) or state.last_success_at is None
            item["provider_endpoint"] = state.endpoint
            item["fetched_at"] = confirmed.isoformat()
            item["age_seconds"] = int((utcnow() - confirmed).total_seconds())
        return item

    # The catalog this node serves to peers ------------------------------------------------

    def dcat_catalog(
        self,
        requester: str,
        *,
        requester_name: str = "",
        groups: Iterable[str] = (),
        since: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[dict[str, Any], str | None]:
        """The page of this node's catalog that ``requester`` may see (DSP ``Catalog``)."""
        from marketplace.policy import odrl

        limit = max(1, min(limit, 1000))
        query = (
            select(CatalogEntry)
            .where(col(CatalogEntry.local))
            .order_by(col(CatalogEntry.modified_at), col(CatalogEntry.id))
        )
        if since is not None:
            query = query.where(col(CatalogEntry.modified_at) > since)
        if cursor:
            at, last_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    col(CatalogEntry.modified_at) > at,
                    and_(col(CatalogEntry.modified_at) == at, col(CatalogEntry.id) > last_id),
                )
            )
        with Session(self.engine) as session:
            rows = list(session.exec(query.limit(limit + 1)).all())
            removed: list[str] = []
            if since is not None and cursor is None:
                removed = [
                    o.id
                    for o in session.exec(
                        select(Offering).where(
                            Offering.provider == self.self_address,
                            Offering.status != "active",
                            col(Offering.updated_at) > since,
                        )
                    ).all()
                ]
        service_id = f"urn:agora:service:{self.self_address}"
        datasets = []
        group_list = list(groups)
        for row in rows[:limit]:
            if not visible_to(row.policy, requester, requester_name, group_list):
                removed.append(row.offering_id)
                continue
            datasets.append(self._dataset(row, service_id, odrl))
        catalog = {
            # the DSP context, then the one naming the dqv, csvw, oa and agora prefixes
            "@context": [DSP_CONTEXT, self.context_url],
            "@id": f"urn:agora:catalog:{self.self_address}",
            "@type": "Catalog",
            "participantId": self.self_address,
            "service": [{"@id": service_id, "@type": "DataService", "endpointURL": self.public_url + "/dsp"}],
            "dataset": datasets,
            "agora:removed": removed,
            "agora:modifiedUntil": as_utc(rows[min(len(rows), limit) - 1].modified_at).isoformat()
            if rows
            else None,
        }
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return catalog, next_cursor

    def dcat_dataset(self, dataset_id: str, requester: str, *, requester_name: str = "") -> dict[str, Any]:
        """One dataset of this node's catalog (DSP ``Dataset``), if ``requester`` may see it;
        :class:`NotFound` alike for one that does not exist and one it may not see."""
        from marketplace.policy import odrl

        offering_id = dataset_id.removeprefix("urn:uuid:")
        with Session(self.engine) as session:
            row = session.exec(
                select(CatalogEntry).where(col(CatalogEntry.local), CatalogEntry.offering_id == offering_id)
            ).first()
        if row is None or not visible_to(row.policy, requester, requester_name, []):
            raise NotFound(f"no dataset {dataset_id[:200]} in this catalog")
        dataset = self._dataset(row, f"urn:agora:service:{self.self_address}", odrl)
        return {"@context": [DSP_CONTEXT, self.context_url], **dataset}

    def _dataset(self, row: CatalogEntry, service_id: str, odrl: Any) -> dict[str, Any]:
        dataset_id = dataset_iri(row.offering_id)
        offer = odrl.to_odrl_offer(
            _parsed_policy(_policy_key(row.policy or {"template": "prohibit-access"})),
            offer_id=f"urn:agora:offer:{row.offering_id}:{row.version}",
            target=dataset_id,
            assigner=self.self_address,
        )
        return {
            "@id": dataset_id,
            "@type": "Dataset",
            "hasPolicy": [offer],
            "distribution": [
                {"@type": "Distribution", "format": "HttpData-PULL", "accessService": service_id}
            ],
            "dct:title": row.title,
            "dct:description": row.description,
            "dcat:keyword": row.keywords,
            "dct:license": row.license,
            "dcat:mediaType": row.media_type,
            "dct:modified": as_utc(row.modified_at).isoformat(),
            "agora:name": row.name,
            "agora:kind": row.kind,
            "agora:version": row.version,
            "agora:sha256": row.sha256,
            "agora:accessModes": row.access_modes,
            "agora:anchorStatus": row.anchor_status,
            "agora:policy": row.policy,
            COMPUTE_TERMS: (row.document or {}).get(COMPUTE_TERMS),
            **dqv.dataset_fields((row.document or {}).get(dqv.EVIDENCE), dataset_id),
            **({ALIASES: row.document[ALIASES]} if ALIASES in (row.document or {}) else {}),
        }

    # Peers' catalogs ------------------------------------------------------------------------

    def peer_offer(self, provider: str, offering_id: str) -> dict[str, Any] | None:
        """The offer ``provider``'s catalog states for one of its datasets (crawled), or None."""
        with Session(self.engine) as session:
            entry = session.exec(
                select(CatalogEntry).where(
                    CatalogEntry.provider == provider, CatalogEntry.offering_id == offering_id
                )
            ).first()
        offer = (entry.document or {}).get(OFFER) if entry is not None else None
        return offer if isinstance(offer, dict) else None

    def store_peer_page(self, provider: str, catalog: dict[str, Any]) -> set[str]:
        """Upsert a page of a peer's catalog and drop what it reports removed; returns the ids stored."""
        datasets = [d for d in catalog.get("dataset") or [] if isinstance(d, dict)]
        removed = {str(r) for r in catalog.get("agora:removed") or []}
        now = utcnow()
        ids = [str(d.get("@id", "")).removeprefix("urn:uuid:") for d in datasets]
        with transaction(self.engine) as session:
            existing = (
                {
                    e.offering_id: e
                    for e in session.exec(
                        select(CatalogEntry).where(
                            CatalogEntry.provider == provider, col(CatalogEntry.offering_id).in_(ids)
                        )
                    ).all()
                }
                if ids
                else {}
            )
            for dataset in datasets:
                offering_id = str(dataset.get("@id", "")).removeprefix("urn:uuid:")
                if not offering_id:
                    continue
                fields = _entry_fields(
                    name=dataset.get("agora:name"),
                    kind=str(dataset.get("agora:kind") or "dataset"),
                    title=str(dataset.get("dct:title") or offering_id)[:200],
                    description=str(dataset.get("dct:description") or ""),
                    keywords=[str(k) for k in dataset.get("dcat:keyword") or []][:32],
                    license=str(dataset.get("dct:license") or "")[:100],
                    media_type=str(dataset.get("dcat:mediaType") or "")[:255],
                    access_modes=[str(m) for m in dataset.get("agora:accessModes") or []],
                    version=int(dataset.get("agora:version") or 1),
                    sha256=str(dataset.get("agora:sha256") or ""),
                    policy=dataset.get("agora:policy"),
                    anchor_status=str(dataset.get("agora:anchorStatus") or ""),
                )
                entry = existing.pop(offering_id, None)
                if entry is None:
                    entry = CatalogEntry(provider=provider, offering_id=offering_id, local=False, **fields)
                    session.add(entry)
                else:
                    for key, value in fields.items():
                        setattr(entry, key, value)
                entry.document = peer_document(dataset)
                entry.modified_at = _parse_time(dataset.get("dct:modified")) or now
                entry.fetched_at = now
            stored = {str(d.get("@id", "")).removeprefix("urn:uuid:") for d in datasets} - {""}
            gone = removed - stored
            if gone:
                session.exec(
                    delete(CatalogEntry).where(
                        col(CatalogEntry.provider) == provider, col(CatalogEntry.offering_id).in_(gone)
                    )
                )
        return stored

    def retain_only(self, provider: str, offering_ids: set[str]) -> int:
        """After a full crawl: drop the peer's entries it no longer lists to this node."""
        with transaction(self.engine) as session:
            held = session.exec(
                select(CatalogEntry.id, CatalogEntry.offering_id).where(CatalogEntry.provider == provider)
            ).all()
            stale = [entry_id for entry_id, offering_id in held if offering_id not in offering_ids]
            for chunk in range(0, len(stale), 500):
                session.exec(delete(CatalogEntry).where(col(CatalogEntry.id).in_(stale[chunk : chunk + 500])))
        return len(stale)

    def keep_only_providers(self, providers: set[str]) -> int:
        """Drop every peer copy (entries and crawl state) of a provider not in ``providers``
        (the peers the operator added); returns how many entries went."""
        with transaction(self.engine) as session:
            held = set(
                session.exec(
                    select(CatalogEntry.provider).where(col(CatalogEntry.local).is_(False)).distinct()
                ).all()
            ) | set(session.exec(select(PeerCatalogState.provider)).all())
            gone = sorted(held - providers)
            if not gone:
                return 0
            dropped = session.execute(
                sa_delete(CatalogEntry).where(
                    col(CatalogEntry.local).is_(False), col(CatalogEntry.provider).in_(gone)
                )
            )
            session.execute(sa_delete(PeerCatalogState).where(col(PeerCatalogState.provider).in_(gone)))
            return int(getattr(dropped, "rowcount", 0) or 0)

    def crawl_state(self, provider: str) -> PeerCatalogState | None:
        with Session(self.engine) as session:
            return session.get(PeerCatalogState, provider)

    def record_crawl(
        self, provider: str, endpoint: str, *, ok: bool, error: str = "", cursor: datetime | None = None
    ) -> None:
        with transaction(self.engine) as session:
            state = session.get(PeerCatalogState, provider)
            if state is None:
                state = PeerCatalogState(provider=provider, endpoint=endpoint)
                session.add(state)
            now = utcnow()
            state.endpoint = endpoint
            state.last_attempt_at = now
            if ok:
                state.last_success_at = now
                state.last_error = ""
                if cursor is not None:
                    state.modified_cursor = cursor
                session.flush()
                state.entries = int(
                    session.execute(
                        sa_select(func.count())
                        .select_from(CatalogEntry)
                        .where(col(CatalogEntry.provider) == provider)
                    ).scalar_one()
                )
            else:
                state.last_error = error[:2000]

    def counts(self, provider: str) -> dict[str, int]:
        """A provider's entries by kind, and how many are anchored (one grouped query)."""
        with Session(self.engine) as session:
            rows = session.execute(
                sa_select(col(CatalogEntry.kind), col(CatalogEntry.anchor_status), func.count())
                .where(col(CatalogEntry.provider) == provider)
                .group_by(col(CatalogEntry.kind), col(CatalogEntry.anchor_status))
            ).all()
        counts = {"offerings": 0, "datasets": 0, "models": 0, "anchored": 0}
        for kind, anchor_status, n in rows:
            counts["offerings"] += n
            counts[f"{kind}s"] = counts.get(f"{kind}s", 0) + n
            counts["anchored"] += n if anchor_status == "ANCHORED" else 0
        return counts

    def freshness(self) -> list[dict[str, Any]]:
        """How fresh each peer's copy is (the dashboard and /health show it)."""
        with Session(self.engine) as session:
            states = session.exec(select(PeerCatalogState)).all()
        now = utcnow()
        return [
            {
                "provider": s.provider,
                "endpoint": s.endpoint,
                "entries": s.entries,
                "last_success_at": as_utc(s.last_success_at).isoformat() if s.last_success_at else None,
                "age_seconds": int((now - as_utc(s.last_success_at)).total_seconds())
                if s.last_success_at
                else None,
                "last_error": s.last_error or None,
            }
            for s in states
        ]


# Visibility ----------------------------------------------------------------------------------

_WHO = ("participant", "participantName", "participantGroup")


def _policy_key(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _parsed_policy(key: str) -> Any:
    """A catalog repeats a handful of policies thousands of times: parse each once."""
    from marketplace.policy import parse_policy

    return parse_policy(json.loads(key))


def visible_to(
    policy_data: dict[str, Any] | None, address: str, name: str = "", groups: list[str] | None = None
) -> bool:
    """Could ``address`` be granted some use? Only constraints on who asks decide here
    (purpose, time and counts are settled when negotiating); no policy: offered to no one."""
    if policy_data is None:
        return False
    return _visible(_policy_key(policy_data), address, name, tuple(groups or ()))


@functools.lru_cache(maxsize=16384)
def _visible(key: str, address: str, name: str, groups: tuple[str, ...]) -> bool:
    from marketplace.policy import RequestContext, expand
    from marketplace.policy.engine import could_grant

    ctx = RequestContext(
        participant=address, participant_name=name or None, groups=list(groups), mode="compute"
    )
    return could_grant(expand(_parsed_policy(key)), ctx, _WHO)


def _encode_cursor(row: Any) -> str:
    raw = f"{as_utc(row.modified_at).isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _encode_id_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"id|{entry_id}".encode()).decode().rstrip("=")


def _decode_id_cursor(cursor: str) -> int:
    try:
        kind, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|", 1)
        if kind != "id":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            "bad cursor", errors=[FieldError("cursor", "not a cursor of this search")]
        ) from None


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last_id = raw.split("|", 1)
        return datetime.fromisoformat(at), int(last_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            "bad cursor", errors=[FieldError("cursor", "not a cursor this node issued")]
        ) from None


def _status(document: dict[str, Any] | None) -> str | None:
    value = (document or {}).get(dqv.STATUS)
    return value if isinstance(value, str) else None


def _parse_time(value: Any) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(str(value))) if value else None
    except ValueError:
        return None
