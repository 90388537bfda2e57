"""Secure aggregation's round wiring, on real databases and object stores, without a network:
the round's parameters, signed adverts, a provider's sessions (each stage answered once, the
update masked as its change from the global weights) against the library's own server, and the
coordinator's state kept in the object store across a failed change and a restart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account

from federation import tensors
from federation.models import FAILED, RECEIVED, SENDING, Contribution, Federation, FederationRound
from federation.secagg import SecAggFailed, SecAggRejected, SecAggServer
from federation.secagg_local import SecAggLocal, check_start
from federation.secagg_protocol import (
    CONFIG,
    STATE,
    check_advert,
    read_parameters,
    round_context,
    round_parameters,
    sign_advert,
    update_vector,
)
from federation.secagg_state import RoundStates
from federation.spec import FederationSpec, WireSpec
from kernel.db import make_engine, transaction, utcnow
from kernel.errors import InvalidInput
from node import db
from node.storage import LocalObjectStore

FED = "urn:uuid:00000000-0000-4000-8000-000000000002"
COORDINATOR = Account.create()
LAYOUT = {"conv.weight": ([2, 3], "float32"), "conv.bias": ([3], "float32"), "steps": ([1], "int64")}
GLOBAL = {
    "conv.weight": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    "conv.bias": np.array([0.5, -0.25, 0.0], np.float32),
    "steps": np.array([3], np.int64),
}


def _spec(providers: int, **options: Any) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": "t",
            "model": {"factory": "m:f", "digest": "0" * 64},
            "providers": [{"agreement": "0x" + f"{i + 1:064x}"} for i in range(providers)],
            "rounds": 3,
            "min_participants": 2,
            "round_deadline": 60,
            "secure_aggregation": {"enabled": True, **options},
        }
    )


def _accounts(n: int) -> list[Any]:
    return sorted((Account.create() for _ in range(n)), key=lambda a: a.address)


# -- the round's parameters and adverts -------------------------------------------------------------


def test_round_parameters_fit_the_round_and_pass_the_providers_checks() -> None:
    people = _accounts(3)
    params = round_parameters(_spec(3), {a.address: 400 + i for i, a in enumerate(people)}, LAYOUT)
    checked = read_parameters(params)
    assert checked.participants == {a.address: i for i, a in enumerate(people)}  # index in address order
    assert checked.vector_length == 10 and checked.stage_seconds == 15.0
    config = checked.config
    assert (config.num_shares, config.reconstruction_threshold, config.max_examples) == (3, 2, 402)
    assert config.modulus_bits == 40  # 3 x 402 x (2^22 - 1) needs 33 bits: five bytes a value
    check_start(WireSpec.model_validate(_spec(3).wire()), {CONFIG: params}, evaluate_only=False)

    five = _accounts(5)  # a low threshold among five: SecAgg+'s ring of 2t - 1 neighbours
    sparse = read_parameters(
        round_parameters(_spec(5, reconstruction_threshold=2), {a.address: 10 for a in five}, LAYOUT)
    )
    assert (sparse.config.num_shares, sparse.config.reconstruction_threshold) == (3, 2)
    with pytest.raises(SecAggFailed, match="exceeds the 2 providers"):
        round_parameters(_spec(5, reconstruction_threshold=3), {a.address: 10 for a in five[:2]}, LAYOUT)
    with pytest.raises(SecAggFailed, match="two providers"):
        round_parameters(_spec(3), {five[0].address: 10}, LAYOUT)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"extra": 1}, "unknown fields"),
        ({"participants": {"0x" + "ab" * 20: 0, "0x" + "cd" * 20: 1}}, "not a checksummed address"),
        ({"participants": "everyone"}, "must map 2 to"),
        ({"vector_length": 0}, "vector_length"),
        ({"vector_length": True}, "vector_length"),
        ({"stage_seconds": 1e9}, "stage_seconds"),
    ],
)
def test_round_parameters_another_node_sent_are_held_to_the_rules(
    change: dict[str, Any], refusal: str
) -> None:
    people = _accounts(3)
    params = {**round_parameters(_spec(3), {a.address: 10 for a in people}, LAYOUT), **change}
    with pytest.raises(SecAggRejected, match=refusal):
        read_parameters(params)


def test_the_same_id_twice_and_a_weaker_threshold_are_refused() -> None:
    people = _accounts(3)
    params = round_parameters(_spec(3), {a.address: 10 for a in people}, LAYOUT)
    with pytest.raises(SecAggRejected, match="named twice"):
        read_parameters({**params, "participants": dict.fromkeys((a.address for a in people), 0)})
    with pytest.raises(SecAggRejected, match="from 2 to 3"):
        read_parameters({**params, "config": {**params["config"], "reconstruction_threshold": 1}})
    four = {**params["config"], "num_shares": 4, "reconstruction_threshold": 2}  # half of four
    with pytest.raises(SecAggRejected, match="more than half"):
        read_parameters({**params, "config": four})


def test_a_round_start_must_carry_what_the_invitation_agreed() -> None:
    people = _accounts(3)
    secure = WireSpec.model_validate(_spec(3).wire())
    plain = WireSpec.model_validate({**_spec(3).wire(), "secure_aggregation": {"enabled": False}})
    params = round_parameters(_spec(3), {a.address: 10 for a in people}, LAYOUT)
    with pytest.raises(InvalidInput, match="a round without it is refused"):
        check_start(secure, {}, evaluate_only=False)
    with pytest.raises(InvalidInput, match="agreed without secure aggregation"):
        check_start(plain, {CONFIG: params}, evaluate_only=False)
    with pytest.raises(InvalidInput, match="nothing to aggregate"):
        check_start(secure, {CONFIG: params}, evaluate_only=True)
    wider = round_parameters(_spec(3, clipping_range=100.0), {a.address: 10 for a in people}, LAYOUT)
    with pytest.raises(InvalidInput, match="differ from the federation's spec"):
        check_start(secure, {CONFIG: wider}, evaluate_only=False)
    check_start(secure, {}, evaluate_only=True)
    check_start(plain, {}, evaluate_only=False)


def test_an_advert_is_accepted_only_as_its_provider_signed_it() -> None:
    owner, other = _accounts(2)
    context = round_context(FED, 1)
    advert = _advert(context, 0)
    signature = sign_advert(bytes(owner.key), context, 0, advert)
    check_advert(context, 0, advert, signature, owner.address)
    with pytest.raises(SecAggRejected, match="signed by"):
        check_advert(context, 0, advert, signature, other.address)
    with pytest.raises(SecAggRejected, match="signed by"):  # the same keys claimed for another id
        check_advert(context, 1, advert, signature, owner.address)
    with pytest.raises(SecAggRejected, match="signed by"):  # the same keys in another round
        check_advert(round_context(FED, 2), 0, advert, signature, owner.address)
    with pytest.raises(SecAggRejected, match="signed by"):
        check_advert(
            context, 0, {**advert, "mask_key": _advert(context, 0)["mask_key"]}, signature, owner.address
        )
    with pytest.raises(SecAggRejected, match="well-formed"):
        check_advert(context, 0, advert, signature[:-2], owner.address)


def _advert(context: bytes, pid: int) -> dict[str, str]:
    from federation.secagg import SecAggClient, SecAggConfig

    return SecAggClient(SecAggConfig(3, 2), pid, [0, 1, 2], context).advertise()


# -- a provider's sessions against the library's server ------------------------------------------------


class _Coordinator:
    """The far end of the provider's pushes: the library's server, as the coordinator runs it."""

    def __init__(self, server: SecAggServer, context: bytes, params: Any) -> None:
        self.server, self.context, self.params = server, context, params
        self.signatures: dict[int, str] = {}
        self.inputs: dict[int, bytes] = {}
        self.refuse_inputs: set[int] = set()

    def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], None]:
        pid = body["participant"]
        check_advert(self.context, pid, body["advert"], body["signature"], self.params.address_of(pid))
        self.server.receive_keys(pid, body["advert"])
        self.signatures[pid] = body["signature"]
        return {"state": "TRAINING", "reason": ""}, None

    def post_blob(self, path: str, body: dict[str, Any], blob: bytes) -> dict[str, Any]:
        pid = body["participant"]
        if pid in self.refuse_inputs:  # gone before it was delivered
            from kernel.errors import PeerError

            raise PeerError("the coordinator cannot be reached")
        self.server.receive_masked(pid, blob)
        self.inputs[pid] = blob
        return {"state": RECEIVED, "reason": ""}


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[tuple[SecAggLocal, Any, Any]]]:
    """Three providers, each its own database with the federation and a round-1 contribution."""
    people = _accounts(3)
    params = round_parameters(_spec(3), {a.address: 100 for a in people}, LAYOUT)
    deadline = (utcnow() + timedelta(minutes=5)).isoformat()
    out = []
    for index, person in enumerate(people):
        url = f"sqlite:///{tmp_path / f'p{index}.db'}"
        db.upgrade(url)
        engine = make_engine(url)
        fed = Federation(
            id=FED, role="provider", name="t", coordinator=COORDINATOR.address, spec=_spec(3).wire(),
            layout={k: [s, d] for k, (s, d) in LAYOUT.items()},
        )  # fmt: skip
        row = Contribution(
            federation_id=FED, round_number=1, role="provider", provider=COORDINATOR.address, state=SENDING,
            global_in=tensors.sha256_of(GLOBAL), config={CONFIG: params, "deadline": deadline},
        )  # fmt: skip
        with transaction(engine) as session:
            session.add_all([fed, row])
        out.append((SecAggLocal(engine), person, engine))
    yield out


def _rows(engine: Any) -> tuple[Federation, Contribution]:
    from sqlmodel import Session, select

    with Session(engine) as session:
        fed = session.get(Federation, FED)
        row = session.exec(select(Contribution)).one()
    assert fed is not None
    return fed, row


def test_a_provider_answers_each_stage_once_and_only_its_masked_change_leaves(
    nodes: list[tuple[SecAggLocal, Any, Any]],
) -> None:
    fed, row = _rows(nodes[0][2])
    params = read_parameters(row.config[CONFIG])
    context = round_context(FED, 1)
    server = SecAggServer(params.config, params.participants.values(), context, params.vector_length)
    far = _Coordinator(server, context, params)
    rng = np.random.default_rng(7)
    updates = {}
    for local, person, engine in nodes:
        update = {n: (w + rng.normal(0, 0.1, w.shape)).astype(w.dtype) for n, w in GLOBAL.items()}
        update["steps"] = GLOBAL["steps"] + 1
        updates[person.address] = update
        fed, row = _rows(engine)
        assert local.begin(
            fed, row, address=person.address, private_key=bytes(person.key), global_weights=GLOBAL,
            update=update, num_examples=50 + 25 * params.participants[person.address],
        )  # fmt: skip
        assert local.push(fed, row, far) is False  # type: ignore[arg-type]
    assert sorted(far.signatures) == [0, 1, 2]
    victim = nodes[2][1].address
    far.refuse_inputs.add(params.participants[victim])

    def stage(kind: str, pid: int, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "federation": FED, "round": 1, **fields}

    for local, person, _ in nodes:
        pid = params.participants[person.address]
        signed = {
            p: {"advert": a, "signature": far.signatures[int(p)]} for p, a in server.keys_for(pid).items()
        }
        message = stage("SecAggKeys", pid, keys=signed)
        reply = local.on_stage(COORDINATOR.address, person.address, FED, message)
        assert local.on_stage(COORDINATOR.address, person.address, FED, message) == reply  # asked again
        with pytest.raises(SecAggRejected, match="answered already"):
            local.on_stage(COORDINATOR.address, person.address, FED, stage("SecAggKeys", pid, keys={}))
        server.receive_shares(pid, reply["shares"])
    for local, person, engine in nodes:
        pid = params.participants[person.address]
        message = stage("SecAggShares", pid, shares=server.shares_for(pid))
        assert local.on_stage(COORDINATOR.address, person.address, FED, message) == {"state": "MASKED"}
        fed, row = _rows(engine)
        local.push(fed, row, far)  # type: ignore[arg-type]
        assert _rows(engine)[1].state == (SENDING if person.address == victim else RECEIVED)
    request = server.unmask_request()
    assert request["dropped"] == [params.participants[victim]]
    for local, person, _ in nodes[:2]:
        pid = params.participants[person.address]
        answer = local.on_stage(
            COORDINATOR.address, person.address, FED, stage("SecAggUnmask", pid, **request)
        )
        both = {"survivors": [pid], "dropped": [p for p in range(3) if p != pid]}
        with pytest.raises(SecAggRejected, match="answered already"):  # would yield both secrets
            local.on_stage(COORDINATOR.address, person.address, FED, stage("SecAggUnmask", pid, **both))
        server.receive_unmask(pid, answer["unmask"])
    result = server.aggregate()
    survivors = [p for p in sorted(updates) if p != victim]
    weights = {p: 50 + 25 * params.participants[p] for p in survivors}
    expected = sum(weights[p] * update_vector(GLOBAL, updates[p], list(LAYOUT)) for p in survivors)
    expected = expected / sum(weights.values())
    assert result.num_examples == sum(weights.values())
    assert np.abs(result.mean() - expected).max() <= params.config.step  # the change, not the weights
    for blob in far.inputs.values():  # what left: masked, nothing of an update's own bytes
        for update in updates.values():
            assert update["conv.weight"].tobytes() not in blob


def test_a_provider_without_its_secrets_drops_out_and_says_why(
    nodes: list[tuple[SecAggLocal, Any, Any]],
) -> None:
    local, person, engine = nodes[0]
    fed, row = _rows(engine)
    stranger = Account.create()
    assert not local.begin(
        fed, row, address=stranger.address, private_key=bytes(stranger.key), global_weights=GLOBAL,
        update=GLOBAL, num_examples=10,
    )  # fmt: skip
    assert _rows(engine)[1].state == FAILED and "does not name this node" in _rows(engine)[1].reason
    local, person, engine = nodes[1]
    fed, row = _rows(engine)
    assert local.push(fed, row, None) is True  # type: ignore[arg-type]  # a restart: nothing in memory
    assert "no longer holds" in _rows(engine)[1].reason and _rows(engine)[1].state == FAILED
    with pytest.raises(Exception, match="no securely aggregated round"):
        local.on_stage(
            COORDINATOR.address, person.address, FED, {"type": "SecAggKeys", "round": 1, "keys": {}}
        )


# -- the coordinator's state across changes and restarts ---------------------------------------------


def test_the_coordinators_state_is_kept_replaced_and_restored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    store = LocalObjectStore(tmp_path / "objects")
    people = _accounts(3)
    params = round_parameters(_spec(3), {a.address: 10 for a in people}, LAYOUT)
    with transaction(engine) as session:
        session.add(Federation(id=FED, role="coordinator", name="t", coordinator=COORDINATOR.address))
        session.add(FederationRound(federation_id=FED, number=1, config={CONFIG: params}))
    states = RoundStates(engine, store)
    context = round_context(FED, 1)

    def receive(pid: int) -> Any:
        return lambda state, rnd, session: state.server.receive_keys(pid, _advert(context, pid))

    states.change(FED, 1, receive(0))
    first = states.current(FED, 1).blob
    assert store.exists(first)
    states.change(FED, 1, receive(1))
    second = states.current(FED, 1)
    assert not store.exists(first) and store.exists(second.blob)  # the superseded state is deleted
    assert second.summary["advertised"] == [0, 1]
    kept = second.server.snapshot()

    def half_done(state: Any, rnd: Any, session: Any) -> None:
        state.server.receive_keys(2, _advert(context, 2))
        raise SecAggRejected("refused after the change began")

    with pytest.raises(SecAggRejected):
        states.change(FED, 1, half_done)
    assert sorted(p.name for p in (tmp_path / "objects").glob("*/*")) == [second.blob]
    assert states.current(FED, 1).summary["advertised"] == [0, 1]  # nothing of the failed change

    restarted = RoundStates(engine, store).current(FED, 1)
    assert restarted.server.snapshot() == kept
    from sqlmodel import Session, select

    with Session(engine) as session:
        rnd = session.exec(select(FederationRound)).one()
    assert rnd.config[STATE]["blob"] == second.blob and rnd.config[STATE]["stage"] == "keys"
