"""A federation written straight into a node's database, as the round driver would have left
it, for the tests of the UI's federation pages (no rounds are run).

Three training rounds of a federation of two providers, one named like a script, plus the
closing evaluate-only round: each round's ``metrics`` evaluate the weights it started from,
per provider and example-weighted overall, exactly in :func:`federation.rounds.evaluation_summary`'s
shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from federation.models import (
    DONE,
    DROPPED,
    JOINED,
    OPEN,
    RECEIVED,
    Contribution,
    Federation,
    FederationMember,
    FederationRound,
)
from federation.rounds import evaluation_summary
from kernel.db import transaction, utcnow
from kernel.lifecycle import entry

HOSTILE_NAME = '<script>alert("name")</script>'
ACME = "0x" + "a1" * 20
HOSTILE = "0x" + "b2" * 20
# (accuracy, loss) each provider reports for the weights round n started from, n = 1, 2, …
FIGURES = {
    ACME: [(0.10, 2.30), (0.55, 1.40), (0.80, 0.70), (0.91, 0.35)],
    HOSTILE: [(0.12, 2.25), (0.50, 1.50), (0.78, 0.75), (0.89, 0.40)],
}
ROWS = {ACME: 600, HOSTILE: 300}


@dataclass(frozen=True)
class Seeded:
    id: str
    rounds: int  # training rounds in the spec
    numbers: list[int]  # the rounds written (the last one past ``rounds`` is the evaluation)


def seed_federation(
    engine: Engine,
    *,
    state: str = "RUNNING",
    role: str = "coordinator",
    done: int = 3,
    endpoint: str = "http://127.0.0.1:9",
    name: str = "digits-fed",
) -> Seeded:
    """A federation in ``state`` whose first ``done`` rounds have figures (``done`` = 4 includes
    the final evaluation); when it is RUNNING and ``done`` < 4, round ``done`` + 1 is OPEN."""
    fed_id = f"urn:uuid:{uuid.uuid4()}"
    total = 3
    now = utcnow()
    fed = Federation(
        id=fed_id,
        role=role,
        name=name,
        coordinator="0x" + "c3" * 20,
        spec={"name": name, "rounds": total},
        layout={"fc.weight": [[10, 64], "float32"]},
        initial_sha256="1" * 64,
        global_sha256="2" * 64,
        current_round=min(done, total),
        state=state,
        reason=f"round {min(done, total)} of {total} done",
        history=[entry("CREATED", "inviting 2 providers"), entry("READY", "2 of 2 providers joined")]
        + ([entry(state, f"now {state}")] if state not in ("CREATED", "READY") else []),
        created_at=now - timedelta(minutes=5),
    )
    numbers: list[int] = []
    with transaction(engine) as session:
        session.add(fed)
        for provider, label in ((ACME, "Acme Wind"), (HOSTILE, HOSTILE_NAME)):
            session.add(
                FederationMember(
                    federation_id=fed_id,
                    provider=provider,
                    provider_name=label,
                    endpoint=endpoint,
                    agreement_id="0x" + provider[2:4] * 32,
                    offering_id="digits",
                    dataset_sha256=provider[2:4] * 32,
                    num_train=ROWS[provider],
                    state=JOINED,
                    reason="joined",
                    history=[entry(JOINED, "joined")],
                )
            )
        for number in range(1, total + 2 if role == "coordinator" else 1):  # rounds: the coordinator's
            if number > done and not (number == done + 1 and state == "RUNNING"):
                break
            numbers.append(number)
            is_open = number > done
            parts = []
            for provider, figures in FIGURES.items():
                accuracy, loss = figures[number - 1]
                part = Contribution(
                    federation_id=fed_id,
                    round_number=number,
                    role="coordinator",
                    provider=provider,
                    state=RECEIVED if not is_open else "TRAINING",
                    reason="the update arrived in time" if not is_open else "the provider has the round",
                    global_in="2" * 64,
                    update_sha256=(provider[2:4] + f"{number:02d}") * 16,
                    num_examples=ROWS[provider],
                    eval_metrics=(
                        {"accuracy": accuracy, "loss": loss, "num_examples": ROWS[provider] // 4}
                        if not is_open
                        else {}
                    ),
                    privacy={"epsilon": 0.5 * number, "delta": 1e-5, "note": "<b>node noise</b>"},
                    config={"evaluate_only": number > total},
                )
                parts.append(part)
                session.add(part)
            if number == 2:  # a third, late provider the round went on without
                session.add(
                    Contribution(
                        federation_id=fed_id,
                        round_number=number,
                        role="coordinator",
                        provider="0x" + "d4" * 20,
                        state=DROPPED,
                        reason="no update by the round's deadline",
                        config={"evaluate_only": False},
                    )
                )
            rnd = FederationRound(
                federation_id=fed_id,
                number=number,
                state=OPEN if is_open else DONE,
                reason="round open" if is_open else "aggregated 2 updates with fedavg",
                config={"evaluate_only": number > total},
                global_in="2" * 64,
                global_out="" if is_open or number > total else f"{number:02d}" * 32,
                merkle_root="" if is_open or number > total else f"{number + 4:02d}" * 32,
                participants=[] if is_open else [ACME, HOSTILE],
                metrics={} if is_open else evaluation_summary(parts),
                asset_id="" if is_open or number > total else "0x" + f"{number + 7:02d}" * 32,
                started_at=now - timedelta(minutes=4 - number),
            )
            session.add(rnd)
    return Seeded(fed_id, total, numbers)


def finish_round(engine: Engine, federation_id: str, number: int) -> None:
    """Round ``number`` (OPEN) done as the driver would close it: both updates in, figures in."""
    from sqlmodel import col, select

    with transaction(engine) as session:
        parts = session.exec(
            select(Contribution).where(
                Contribution.federation_id == federation_id,
                Contribution.round_number == number,
                col(Contribution.provider).in_(list(FIGURES)),
            )
        ).all()
        for part in parts:
            accuracy, loss = FIGURES[part.provider][number - 1]
            part.state, part.reason = RECEIVED, "the update arrived in time"
            part.eval_metrics = {"accuracy": accuracy, "loss": loss, "num_examples": ROWS[part.provider] // 4}
            session.add(part)
        rnd = session.exec(
            select(FederationRound).where(
                FederationRound.federation_id == federation_id, FederationRound.number == number
            )
        ).one()
        rnd.state, rnd.reason = DONE, "aggregated 2 updates with fedavg"
        rnd.participants = [ACME, HOSTILE]
        rnd.metrics = evaluation_summary(list(parts))
        session.add(rnd)
