"""Signed envelopes: form, signature, recipient, clock skew; and the gate's sender and replay checks."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from eth_account import Account

from connector.envelope import EnvelopeRejected, ReplayedMessage, UnknownSender, open_envelope, seal
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


@pytest.fixture
def gate(tmp_path: Path) -> ProtocolGate:
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    with transaction(engine) as session:
        session.add(Participant(address=ALICE.address, name="Alice", endpoint="http://alice", is_self=False))
    on_chain = {MALLORY.address: ("Mallory Inc", "http://mallory")}
    return ProtocolGate(
        engine, address=BOB.address, private_key=lambda: bytes(BOB.key), registry_lookup=on_chain.get
    )


def test_gate_accepts_known_peer_once(gate: ProtocolGate) -> None:
    env = seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address)
    assert gate.accept(env).sender == ALICE.address
    with pytest.raises(ReplayedMessage):
        gate.accept(env)
    assert gate.accept(seal({"x": 1}, private_key=ALICE.key, recipient=BOB.address)).sender == ALICE.address


def test_gate_refuses_unknown_sender(gate: ProtocolGate) -> None:
    stranger = Account.create()
    with pytest.raises(UnknownSender):
        gate.accept(seal({"x": 1}, private_key=stranger.key, recipient=BOB.address))


def test_gate_learns_registered_participants(gate: ProtocolGate) -> None:
    opened = gate.accept(seal({"x": 1}, private_key=MALLORY.key, recipient=BOB.address))
    assert opened.sender == MALLORY.address
    from sqlmodel import Session

    with Session(gate.engine) as session:
        row = session.get(Participant, MALLORY.address)
    assert row is not None and row.name == "Mallory Inc"


def test_reply_is_sealed_for_the_sender(gate: ProtocolGate) -> None:
    reply = gate.seal({"ok": True}, ALICE.address)
    assert open_envelope(reply, recipient=ALICE.address).sender == BOB.address
