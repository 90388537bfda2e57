"""Model aliases on a real node database and store: the rules (model offerings only, names,
``latest`` reserved, published versions only), and that every move and deletion is audited
(from → to) and notarized with the named version's asset as parent."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, col, select

from contracts.models import Notarization
from kernel.audit import AuditEntry
from kernel.canonical import canonical_hash
from kernel.errors import Conflict, InvalidInput, NotFound
from marketplace.catalog import ALIASES
from marketplace.models import CatalogEntry, OfferingAlias, OfferingVersion
from marketplace.schemas import OfferingMetadata


def _stage(runtime: Any, data: bytes) -> Any:
    staged = runtime.store.stage()
    staged.write(data)
    staged.finish()
    return staged


@pytest.fixture
def offerings(runtime: Any) -> dict[str, str]:
    """A model offering with versions 1 and 2, and a dataset offering."""
    settings = runtime.settings
    runtime.participants.ensure_self(
        address=runtime.address, name=settings.name, endpoint=settings.public_url
    )
    meta = OfferingMetadata(
        name="wind-model",
        kind="model",
        title="Wind model",
        media_type="application/onnx",
        policy={"template": "provide-access"},
    )
    with _stage(runtime, b"model v1") as staged:
        model = runtime.offerings.register(staged, meta, "tester").id
    with _stage(runtime, b"model v2") as staged:
        runtime.offerings.add_version(model, staged, "tester")
    data = OfferingMetadata(name="wind-data", title="Wind data", media_type="text/csv")
    with _stage(runtime, b"a,b\n1,2\n") as staged:
        dataset = runtime.offerings.register(staged, data, "tester").id
    return {"model": model, "dataset": dataset}


def _audit(runtime: Any, action: str) -> list[AuditEntry]:
    with Session(runtime.engine) as session:
        return list(
            session.exec(
                select(AuditEntry).where(AuditEntry.action == action).order_by(col(AuditEntry.id))
            ).all()
        )


def _counts(runtime: Any) -> tuple[int, int, int]:
    with Session(runtime.engine) as session:
        return (
            len(session.exec(select(OfferingAlias)).all()),
            len(session.exec(select(Notarization).where(Notarization.kind == "alias")).all()),
            len(
                session.exec(
                    select(AuditEntry).where(col(AuditEntry.action).startswith("offering.alias"))
                ).all()
            ),
        )


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("Champion", InvalidInput),
        ("1st", InvalidInput),
        ("", InvalidInput),
        ("a" * 65, InvalidInput),
        ("champ ion", InvalidInput),
        ("champion\n", InvalidInput),
        ("latest", InvalidInput),
    ],
)
def test_bad_names_are_refused_and_change_nothing(
    runtime: Any, offerings: dict[str, str], name: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        runtime.aliases.move(offerings["model"], name, 1, "tester")
    assert _counts(runtime) == (0, 0, 0)


def test_only_model_offerings_and_published_existing_versions(
    runtime: Any, offerings: dict[str, str]
) -> None:
    with pytest.raises(InvalidInput, match="only model offerings have aliases"):
        runtime.aliases.move(offerings["dataset"], "champion", 1, "tester")
    with pytest.raises(NotFound, match="has no version 7"):
        runtime.aliases.move(offerings["model"], "champion", 7, "tester")
    with pytest.raises(InvalidInput):
        runtime.aliases.move(offerings["model"], "champion", 0, "tester")
    with pytest.raises(NotFound):
        runtime.aliases.move("no-such-offering", "champion", 1, "tester")
    with Session(runtime.engine) as session:  # a version held back (as a rejected dataset version would be)
        row = session.exec(
            select(OfferingVersion).where(
                OfferingVersion.offering_id == offerings["model"], OfferingVersion.version == 2
            )
        ).one()
        row.published = False
        session.add(row)
        session.commit()
    with pytest.raises(Conflict, match="not published"):
        runtime.aliases.move(offerings["model"], "champion", 2, "tester")
    assert _counts(runtime) == (0, 0, 0)


def test_moves_and_deletion_are_audited_and_notarized(runtime: Any, offerings: dict[str, str]) -> None:
    model = offerings["model"]
    first = runtime.aliases.move("wind-model", "champion", 1, "alice")  # by name
    assert (first["version"], first["from"], first["moved"]) == (1, None, True)
    second = runtime.aliases.move(model, "champion", 2, "bob")
    assert (second["from"], second["version"]) == (1, 2)
    runtime.aliases.move(model, "candidate", 2, "bob")
    again = runtime.aliases.move(model, "champion", 2, "bob")  # already there: nothing new
    assert again["moved"] is False and again["anchor"] == second["anchor"]

    moves = _audit(runtime, "offering.alias")
    assert [(e.actor, e.details["alias"], e.details["from"], e.details["to"]) for e in moves] == [
        ("alice", "champion", None, 1),
        ("bob", "champion", 1, 2),
        ("bob", "candidate", None, 2),
    ]
    detail = runtime.offerings.get(model)
    assert detail.aliases == {"candidate": 2, "champion": 2}
    assert {v.version: v.aliases for v in detail.versions} == {1: [], 2: ["candidate", "champion"]}

    with Session(runtime.engine) as session:
        anchor = session.exec(
            select(Notarization).where(Notarization.asset_id == second["anchor"]["asset_id"])
        ).one()
        version_2 = next(v for v in detail.versions if v.version == 2)
        assert anchor.kind == "alias" and anchor.parents == [version_2.anchor.asset_id]
        record = {k: anchor.metadata_doc[k] for k in ("offering", "alias", "version", "sha256", "moved_at")}
        assert record["sha256"] == version_2.sha256.removeprefix("sha256:") and record["version"] == 2
        assert anchor.content_hash == canonical_hash(record)
        alias_row = session.exec(select(OfferingAlias).where(OfferingAlias.name == "champion")).one()
        assert alias_row.notarization_id == anchor.id and alias_row.moved_by == "bob"
        entry = session.exec(select(CatalogEntry).where(CatalogEntry.offering_id == model)).one()
        assert entry.document[ALIASES] == {"candidate": 2, "champion": 2}

    assert runtime.aliases.resolve(model, "champion") == 2
    assert runtime.aliases.resolve(model, "latest") == 2
    with pytest.raises(NotFound, match="no alias 'staging'"):
        runtime.aliases.resolve(model, "staging")

    runtime.aliases.delete(model, "candidate", "carol")
    (removal,) = _audit(runtime, "offering.alias.delete")
    assert (removal.actor, removal.details["from"], removal.details["to"]) == ("carol", 2, None)
    with Session(runtime.engine) as session:
        gone = session.exec(
            select(Notarization).where(Notarization.asset_id == removal.details["anchor"])
        ).one()
        assert gone.kind == "alias" and gone.metadata_doc["version"] is None and len(gone.parents) == 1
    assert runtime.aliases.current(model) == {"champion": 2}
    with pytest.raises(NotFound):
        runtime.aliases.delete(model, "candidate", "carol")
    with pytest.raises(InvalidInput, match="reserved"):
        runtime.aliases.delete(model, "latest", "carol")


def test_terms_and_download_take_the_version_an_alias_names(runtime: Any, offerings: dict[str, str]) -> None:
    model = offerings["model"]
    runtime.aliases.move(model, "champion", 1, "alice")
    terms = runtime.offerings.terms(model, alias="champion")
    v1 = next(v for v in runtime.offerings.get(model).versions if v.version == 1)
    assert (terms["version"], terms["alias"], terms["sha256"]) == (
        1,
        "champion",
        v1.sha256.removeprefix("sha256:"),
    )
    assert runtime.offerings.terms(model)["version"] == 2 and "alias" not in runtime.offerings.terms(model)
    assert runtime.offerings.terms(model, version=1)["sha256"] == terms["sha256"]
    assert runtime.offerings.download(model, alias="champion").sha256 == terms["sha256"]
    with pytest.raises(NotFound, match="no alias 'nope'"):
        runtime.offerings.terms(model, alias="nope")
    with pytest.raises(InvalidInput, match="not both"):
        runtime.offerings.terms(model, alias="champion", version=1)


@pytest.mark.parametrize(
    "message",
    [
        {"agora:alias": "Champion"},
        {"agora:alias": "champion\n"},
        {"agora:alias": ["champion"]},
        {"agora:alias": "a" * 65},
        {"agora:version": True},
        {"agora:version": 1.0},
        {"agora:version": "1"},
        {"agora:version": 0},
        {"agora:version": 2**31},
        {"agora:alias": "champion", "agora:version": 1},
    ],
)
def test_a_request_names_a_version_only_in_the_shapes_it_may(message: dict[str, Any]) -> None:
    from connector.negotiation import asked_version

    with pytest.raises(InvalidInput):
        asked_version(message)


def test_what_a_request_asks_for() -> None:
    from connector.negotiation import asked_version

    assert asked_version({"agora:alias": "champion"}) == {"agora:alias": "champion"}
    assert asked_version({"agora:version": 3}) == {"agora:version": 3}
    assert asked_version({"agora:purpose": "research"}) == {}


def test_the_dsp_catalog_carries_the_aliases_and_validates(runtime: Any, offerings: dict[str, str]) -> None:
    from tests import dsp

    runtime.aliases.move(offerings["model"], "champion", 2, "alice")
    catalog, _ = runtime.catalog.dcat_catalog("0x" + "11" * 20)
    (model,) = [d for d in catalog["dataset"] if d["agora:name"] == "wind-model"]
    assert model[ALIASES] == {"champion": 2}
    assert dsp.errors("catalog/catalog-schema.json", catalog) == []
    assert dsp.errors("catalog/dataset-schema.json", {"@context": catalog["@context"], **model}) == []
