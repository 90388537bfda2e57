"""What a provider's node accepts of a coordinator's round starts, on a real database and store:
rounds only in turn and within the spec, one evaluation after the last, none once stopped,
the deadline held to the spec's, weights of the federation's layout only."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from connector.agreements import AgreementService
from federation import tensors
from federation.models import Federation
from federation.provider import ProviderFederations, parse_layout
from federation.spec import FederationSpec
from kernel.db import make_engine, transaction, utcnow
from kernel.errors import Conflict, InvalidInput, NotFound
from node import db
from node.storage import LocalObjectStore

COORDINATOR = "0x" + "33" * 20
STRANGER = "0x" + "44" * 20
FED = "urn:uuid:00000000-0000-4000-8000-000000000001"
WEIGHTS = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


@pytest.fixture
def provider(tmp_path: Path) -> ProviderFederations:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    spec = FederationSpec.model_validate(
        {"name": "t", "model": {"factory": "m:f", "digest": "0" * 64}, "providers": [{"agreement": "0x" + "1" * 64}],
         "rounds": 3, "round_deadline": 60}
    )  # fmt: skip
    with transaction(engine) as session:
        session.add(
            Federation(
                id=FED, role="provider", name="t", coordinator=COORDINATOR, spec=spec.wire(),
                layout={k: [list(v.shape), str(v.dtype)] for k, v in WEIGHTS.items()}, result={"num_train": 10},
            )
        )  # fmt: skip
    return ProviderFederations(
        engine,
        LocalObjectStore(tmp_path / "objects"),
        agreements=AgreementService(engine, address="0x" + "11" * 20, public_url="http://p"),
        offering_modes=lambda _: ["federate"],
        sandbox=lambda: None,  # type: ignore[arg-type,return-value]
        workdir=tmp_path / "federations",
        holdout_fraction=0.2,
    )


def start(provider: ProviderFederations, number: int, *, evaluate_only: bool = False, sender: str = COORDINATOR,
          weights: dict[str, np.ndarray] = WEIGHTS, deadline: str | None = None) -> dict[str, object]:  # fmt: skip
    body = {
        "federation": FED,
        "round": number,
        "config": {},
        "evaluate_only": evaluate_only,
        "deadline": deadline,
    }
    return provider.on_round(sender, FED, body, tensors.encode(weights))


def test_rounds_come_in_turn_and_the_evaluation_only_after_the_last(provider: ProviderFederations) -> None:
    with pytest.raises(Conflict, match="out of turn"):
        start(provider, 2)
    assert start(provider, 1)["state"] == "PENDING"
    assert start(provider, 1)["state"] == "PENDING"  # the same start again: the same round
    with pytest.raises(InvalidInput, match="not one of them"):
        start(provider, 2, evaluate_only=True)  # an evaluation that is not after the last round
    start(provider, 2)
    start(provider, 3)
    with pytest.raises(InvalidInput, match="not one of them"):
        start(provider, 4)  # a fourth training round of a three-round federation
    with pytest.raises(InvalidInput, match="not one of them"):
        start(provider, 5, evaluate_only=True)
    assert start(provider, 4, evaluate_only=True)["state"] == "PENDING"
    with pytest.raises(Conflict, match="out of turn"):
        start(provider, 2)  # back to an earlier round


def test_a_stopped_provider_takes_no_more_rounds(provider: ProviderFederations) -> None:
    start(provider, 1)
    with transaction(provider.engine) as session:
        fed = session.get(Federation, FED)
        assert fed is not None
        fed.result = {**fed.result, "stopped": "the next round would pass the policy's cap"}
    with pytest.raises(Conflict, match="stopped contributing"):
        start(provider, 2)


def test_only_its_coordinator_starts_rounds(provider: ProviderFederations) -> None:
    with pytest.raises(NotFound):
        start(provider, 1, sender=STRANGER)


def test_weights_of_another_layout_are_refused(provider: ProviderFederations) -> None:
    with pytest.raises(tensors.UpdateRejected):
        start(provider, 1, weights={"w": np.zeros((2, 3), np.float32)})
    with pytest.raises(tensors.UpdateRejected):
        start(provider, 1, weights={**WEIGHTS, "b": np.full(3, np.nan, np.float32)})


def test_a_far_deadline_is_held_to_the_spec(provider: ProviderFederations) -> None:
    from sqlmodel import Session, select

    from federation.models import Contribution

    start(provider, 1, deadline=(utcnow() + timedelta(days=365)).isoformat())
    with Session(provider.engine) as session:
        row = session.exec(select(Contribution)).one()
    deadline = datetime.fromisoformat(row.config["deadline"])
    assert deadline - utcnow() < timedelta(seconds=60 + 60 + 5)


def test_a_layout_is_bounded_before_it_is_believed() -> None:
    with pytest.raises(InvalidInput, match="over"):
        parse_layout({"w": [[1 << 24, 1 << 24, 1 << 24], "float32"]})  # would overflow int64
    with pytest.raises(InvalidInput):
        parse_layout({"w": [[2, 3], "object"]})
    with pytest.raises(InvalidInput):
        parse_layout({})
