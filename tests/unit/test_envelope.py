"""Signed envelopes: form, signature, recipient, clock skew; and the gate's sender and replay checks."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from eth_account import Account

from connector.envelope import (
    EnvelopeRejected,
    NotAPeer,
    ReplayedMessage,
    UnknownSender,
    open_envelope,
    seal,
)
from connector.models import Participant
from connector.protocol import ProtocolGate
from kernel.db import make_engine, transaction
from node import db

ALICE = Account.create()
BOB = Account.create()
MALLORY = Account.create()


def test_round_trip() -> None:
    env = seal({"@type": "CatalogRequestMessage", "filter": []}, private_key=ALICE.key, recipient=BOB.address)
    opened = open_envelope(env, recipient=BOB.address)
    assert opened.sender == ALICE.address
    assert opened.body == {"@type": "CatalogRequestMessage", "filter": []}


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda e: e["body"].update(filter=["x"]), "bad signature"),
        (lambda e: e.update(sender=MALLORY.address), "bad signature"),
        (lambda e: e.update(nonce="f" * 32), "bad signature"),
        (lambda e: e.update(signature="0x1234"), "malformed"),
        (lambda e: e.pop("nonce"), "lacks nonce"),
        (lambda e: e.update(format="other/1"), "not a signed protocol envelope"),
        (lambda e: e.update(body="text"), "body must be a JSON object"),
        (lambda e: e.update(sender="not-an-address"), "must be Ethereum addresses"),
    ],
)
def test_tampering_is_refused(tamper, reason: str) -> None:  # type: ignore[no-untyped-def]
    env = seal({"@type": "CatalogRequestMessage", "filter": []}, private_key=ALICE.key, recipient=BOB.address)
    bad = copy.deepcopy(env)
    tamper(bad)
    with pytest.raises(EnvelopeRejected, match=reason):
        open_envelope(bad, recipient=BOB.address)


def test_signed_by_someone_else() -> None:
    env = seal({"x": 1}, private_key=MALLORY.key, recipient=BOB.address)
    env["sender"] = ALICE.address  # claims to be Alice, signature is Mallory's
    with pytest.raises(EnvelopeRejected, match=f"bad signature.*not by the sender {ALICE.address}"):
        open_envelope(env, recipient=BOB.address)


def test_wrong_recipient() -> None:
    env = seal({"x": 1}, private_key=ALICE.key, recipient=MALLORY.address)
    with pytest.raises(EnvelopeRejected, match="addressed to"):
        open_envelope(env, recipient=BOB.address)


def test_stale_and_future_timestamps() -> None:
    old = seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address, now=time.time() - 3600)
    with pytest.raises(EnvelopeRejected, match="away from this node's clock"):
        open_envelope(old, recipient=BOB.address)
    future = seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address, now=time.time() + 3600)
    with pytest.raises(EnvelopeRejected, match="away from this node's clock"):
        open_envelope(future, recipient=BOB.address)


def _gate(tmp_path: Path, *, accept_registered: bool) -> ProtocolGate:
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    with transaction(engine) as session:
        session.add(Participant(address=ALICE.address, name="Alice", endpoint="http://alice", trusted=True))
    on_chain = {MALLORY.address: ("Mallory Inc", "http://mallory")}
    return ProtocolGate(
        engine,
        address=BOB.address,
        private_key=lambda: bytes(BOB.key),
        registry_lookup=on_chain.get,
        accept_registered=accept_registered,
    )


@pytest.fixture
def gate(tmp_path: Path) -> ProtocolGate:
    return _gate(tmp_path, accept_registered=False)


def test_gate_accepts_known_peer_once(gate: ProtocolGate) -> None:
    env = seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address)
    opened = gate.accept(env)
    assert (opened.sender, opened.sender_trusted, opened.sender_endpoint) == (
        ALICE.address,
        True,
        "http://alice",
    )
    with pytest.raises(ReplayedMessage):
        gate.accept(env)
    assert gate.accept(seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address)).sender == ALICE.address


def test_gate_refuses_unknown_sender(gate: ProtocolGate) -> None:
    stranger = Account.create()
    with pytest.raises(
        NotAPeer, match="not a peer of this node; the operator adds peers with agora peers add"
    ):
        gate.accept(seal({"x": 1}, private_key=stranger.key, recipient=BOB.address))


def test_registration_on_chain_does_not_make_a_peer(gate: ProtocolGate) -> None:
    """Anyone may register on chain: by default that is no reason to answer, nor to record."""
    from sqlmodel import Session

    with pytest.raises(NotAPeer, match="not a peer"):
        gate.accept(seal({"x": 1}, private_key=MALLORY.key, recipient=BOB.address))
    with Session(gate.engine) as session:
        assert session.get(Participant, MALLORY.address) is None


def test_registered_participants_when_the_operator_opts_in(tmp_path: Path) -> None:
    from sqlmodel import Session

    gate = _gate(tmp_path, accept_registered=True)
    opened = gate.accept(seal({"x": 1}, private_key=MALLORY.key, recipient=BOB.address))
    assert (opened.sender, opened.sender_trusted) == (MALLORY.address, False)
    assert opened.sender_endpoint == "http://mallory"
    with Session(gate.engine) as session:
        row = session.get(Participant, MALLORY.address)
    assert row is not None and row.name == "Mallory Inc" and row.trusted is False
    stranger = Account.create()
    with pytest.raises(UnknownSender, match="neither a peer of this node nor a participant in the registry"):
        gate.accept(seal({"x": 1}, private_key=stranger.key, recipient=BOB.address))


def test_reply_is_sealed_for_the_sender(gate: ProtocolGate) -> None:
    reply = gate.seal({"ok": True}, ALICE.address)
    assert open_envelope(reply, recipient=ALICE.address).sender == BOB.address
