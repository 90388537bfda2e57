"""Enforcing an agreement on the provider's side, without the network: every refusal has its reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from connector.agreements import AgreementService, UseDenied
from connector.models import Agreement, UsageRecord
from kernel.db import make_engine, transaction
from kernel.errors import Forbidden, NotFound
from node import db

PROVIDER = "0x" + "11" * 20
CONSUMER = "0x" + "22" * 20


@pytest.fixture
def service(tmp_path: Path) -> AgreementService:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db.upgrade(url)
    return AgreementService(make_engine(url), address=PROVIDER, public_url="http://provider")


def add(service: AgreementService, agreement_id: str, **changes: object) -> None:
    terms = {
        "purpose": "research",
        "accessMode": "download",
        "policy": {"template": "n-times-usage", "params": {"count": 2}},
    }
    row = Agreement(
        id=agreement_id,
        negotiation_id="n",
        role="provider",
        provider=PROVIDER,
        consumer=CONSUMER,
        offering_id="o",
        terms=terms,
        terms_hash="a" * 64,
        provider_signature="0x",
        chain_id=1,
        registry_address="0x" + "00" * 20,
        tx_hash="0x" + "ab" * 32,
        max_uses=2,
    )
    for key, value in changes.items():
        setattr(row, key, value)
    with transaction(service.engine) as session:
        session.add(row)


def test_uses_are_counted_and_logged(service: AgreementService) -> None:
    add(service, "a1")
    assert service.use("a1", consumer=CONSUMER, mode="download").uses == 1
    assert service.use("a1", consumer=CONSUMER, mode="download").uses == 2
    with pytest.raises(UseDenied, match=r"2|spent"):
        service.use("a1", consumer=CONSUMER, mode="download")
    with Session(service.engine) as session:
        log = session.exec(select(UsageRecord).where(UsageRecord.agreement_id == "a1")).all()
    assert [u.granted for u in log] == [True, True, False]


@pytest.mark.parametrize(
    ("changes", "mode", "reason"),
    [
        ({"tx_hash": None}, "download", "not final yet"),
        ({"valid_until": int(time.time()) - 60}, "download", "expired"),
        ({}, "compute", "covers download, not compute"),
        (
            {
                "terms": {
                    "purpose": "research",
                    "accessMode": "download",
                    "policy": {"template": "prohibit-access"},
                }
            },
            "download",
            "policy denies",
        ),
    ],
)
def test_refusals_name_their_reason(
    service: AgreementService, changes: dict[str, object], mode: str, reason: str
) -> None:
    add(service, "a2", **changes)
    with pytest.raises(UseDenied, match=reason):
        service.use("a2", consumer=CONSUMER, mode=mode)
    with Session(service.engine) as session:
        logged = session.exec(select(UsageRecord).where(UsageRecord.agreement_id == "a2")).one()
    assert not logged.granted and reason.split()[0] in logged.reason


def test_only_the_consumer_may_use_it(service: AgreementService) -> None:
    add(service, "a3")
    with pytest.raises(Forbidden):
        service.use("a3", consumer="0x" + "33" * 20, mode="download")
    with pytest.raises(NotFound):
        service.use("nope", consumer=CONSUMER, mode="download")
