"""The Agora registry contract, run as one suite against two chains.

Every test gets a fresh registry on the embedded py-evm chain (a new chain in a temporary
directory) and on a real anvil node (a new deployment on the session's anvil). Reverts are
checked by the name of the registry's custom error, writes by the events in their receipts,
and the gas of every successful write is kept in ``test-artifacts/gas-<chain>.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from contracts import eip712, merkle
from contracts.chain import EMBEDDED_CHAIN_ID, Chain, EmbeddedChain, RpcChain, TxResult
from contracts.errors import ChainReverted, ChainUnavailable, RegistryMissing, WrongChain
from contracts.registry import KINDS, Registry, asset_id, kind_code
from tests import services

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ZERO = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20
ANCHOR_GAS_LIMIT = 150_000
BATCH_GAS_LIMIT = 100_000


def h(label: str) -> bytes:
    """A distinct, non-zero 32-byte hash per label."""
    return keccak(text=label)


# fixtures -----------------------------------------------------------------------------------


@dataclass
class Party:
    account: Any
    chain: Chain
    reg: Registry

    @property
    def address(self) -> str:
        return str(self.account.address)


@dataclass
class Env:
    name: str
    chain: Chain
    admin: Party
    gas: dict[str, int]

    def party(self, name: str | None = None) -> Party:
        """A new funded account with its own connection; registered as a participant if named."""
        account = Account.create()
        self.chain.fund(account.address)
        chain = self.chain.as_account(account)
        party = Party(account, chain, Registry(chain))
        if name is not None:
            self.record("registerParticipant(new)", party.reg.register_participant(name, f"https://{name}"))
        return party

    def record(self, operation: str, result: TxResult) -> TxResult:
        self.gas[operation] = max(self.gas.get(operation, 0), result.gas_used)
        return result

    def receipt(self, result: TxResult) -> Any:
        return self.chain.w3.eth.get_transaction_receipt(result.tx_hash)

    def events(self, result: TxResult, event: str) -> list[Any]:
        """The registry's ``event`` logs of a transaction, decoded, after checking they are all of it."""
        receipt = self.receipt(result)
        logs = [log for log in receipt["logs"] if log["address"] == self.admin.reg.address]
        decoded = getattr(self.admin.reg.contract.events, event)().process_receipt(receipt)
        assert len(decoded) == len(logs), f"the transaction emitted other events than {event}"
        return [e["args"] for e in decoded]

    def block_time(self, result: TxResult) -> int:
        return int(self.chain.w3.eth.get_block(result.block_number)["timestamp"])


@pytest.fixture(scope="module")
def gas_table() -> Iterator[dict[str, dict[str, int]]]:
    table: dict[str, dict[str, int]] = {}
    yield table
    out = services.REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    for chain_name, gas in table.items():
        path = out / f"gas-{chain_name}.json"
        path.write_text(json.dumps(dict(sorted(gas.items())), indent=2) + "\n")


@pytest.fixture(params=["embedded", "anvil"])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, gas_table: dict[str, dict[str, int]]
) -> Iterator[Env]:
    admin = Account.create()
    chain: Chain
    if request.param == "embedded":
        chain = EmbeddedChain(tmp_path / "chain", admin)
    else:
        anvil = request.getfixturevalue("anvil")
        chain = RpcChain(anvil.url, admin, registry=None)
        chain.fund(admin.address)
        address, _ = chain.deploy("AgoraRegistry", False)
        chain.registry_address = address
    gas = gas_table.setdefault(request.param, {})
    yield Env(request.param, chain, Party(admin, chain, Registry(chain)), gas)
    chain.close()


@contextmanager
def reverts(reason: str, *args: Any) -> Iterator[None]:
    """The block must revert with the registry's custom error ``reason`` (and ``args`` if given)."""
    with pytest.raises(ChainReverted) as exc:
        yield
    assert exc.value.reason == reason, f"reverted with {exc.value.reason}{exc.value.reason_args}"
    if args:
        assert _norm(exc.value.reason_args) == _norm(args)


def _norm(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Revert arguments decode addresses in lower case: compare them checksummed."""
    return tuple(
        to_checksum_address(v) if isinstance(v, str) and v.startswith("0x") and len(v) == 42 else v
        for v in values
    )


# participants and administration -------------------------------------------------------------------


def test_register_and_update_participant(env: Env) -> None:
    alice = env.party()
    assert alice.reg.participant(alice.address) is None
    assert not alice.reg.is_participant(alice.address)

    first = env.record("registerParticipant(new)", alice.reg.register_participant("Alice", "https://a"))
    assert env.events(first, "ParticipantRegistered") == [
        {"participant": alice.address, "name": "Alice", "endpoint": "https://a"}
    ]
    record = alice.reg.participant(alice.address)
    assert record is not None
    assert (record.name, record.endpoint) == ("Alice", "https://a")
    assert record.registered_at == record.updated_at == env.block_time(first)
    assert alice.reg.is_participant(alice.address)

    second = env.record(
        "registerParticipant(update)", alice.reg.register_participant("Alice B.", "https://b")
    )
    assert env.events(second, "ParticipantUpdated") == [
        {"participant": alice.address, "name": "Alice B.", "endpoint": "https://b"}
    ]
    updated = alice.reg.participant(alice.address)
    assert updated is not None
    assert (updated.name, updated.endpoint) == ("Alice B.", "https://b")
    assert updated.registered_at == record.registered_at
    assert updated.updated_at == env.block_time(second)


def test_register_rejects_an_empty_name(env: Env) -> None:
    bob = env.party()
    with reverts("EmptyName"):
        bob.reg.register_participant("", "https://b")
    assert bob.reg.participant(bob.address) is None


def test_only_the_admin_administers(env: Env) -> None:
    mallory = env.party("mallory")
    reg = env.admin.reg
    assert reg.chain.call(reg.fn.admin()) == env.admin.address
    with reverts("NotAdmin", mallory.address):
        mallory.reg.set_allow_list_mode(True)
    with reverts("NotAdmin", mallory.address):
        mallory.reg.set_allowed(mallory.address, True)
    with reverts("NotAdmin", mallory.address):
        mallory.chain.transact(mallory.reg.fn.transferAdmin(mallory.address))
    assert reg.chain.call(reg.fn.admin()) == env.admin.address
    assert reg.chain.call(reg.fn.allowListMode()) is False
    assert reg.chain.call(reg.fn.allowed(mallory.address)) is False


def test_allow_list_mode(env: Env) -> None:
    reg = env.admin.reg
    early = env.party("early")  # registered before the allow list is switched on
    late = env.party()

    on = env.record("setAllowListMode", reg.set_allow_list_mode(True))
    assert env.events(on, "AllowListModeChanged") == [{"enabled": True}]
    assert reg.chain.call(reg.fn.allowListMode()) is True
    assert reg.participant(early.address) is not None
    assert not reg.is_participant(early.address)  # registered, but not allowed

    with reverts("NotAllowed", late.address):
        late.reg.register_participant("late", "https://late")
    allow = env.record("setAllowed", reg.set_allowed(late.address, True))
    assert env.events(allow, "AllowListChanged") == [{"participant": late.address, "allowed": True}]
    assert reg.chain.call(reg.fn.allowed(late.address)) is True
    late.reg.register_participant("late", "https://late")
    assert reg.is_participant(late.address)
    assert not reg.is_participant(early.address)

    revoke = reg.set_allowed(late.address, False)
    assert env.events(revoke, "AllowListChanged") == [{"participant": late.address, "allowed": False}]
    assert not reg.is_participant(late.address)
    with reverts("NotAllowed", late.address):
        late.reg.register_participant("late again", "https://late")

    # a participant removed from the list can no longer notarize anything
    with reverts("NotAllowed", early.address):
        early.reg.anchor("dataset", h("early-data"), ZERO)
    with reverts("NotAllowed", early.address):
        early.reg.anchor_batch(h("early-root"), 3)

    off = reg.set_allow_list_mode(False)
    assert env.events(off, "AllowListModeChanged") == [{"enabled": False}]
    early.reg.anchor("dataset", h("early-data"), ZERO)
    assert reg.is_participant(early.address)
    assert reg.is_participant(late.address)


def test_transfer_admin(env: Env) -> None:
    reg = env.admin.reg
    heir = env.party()
    result = env.record("transferAdmin", reg.chain.transact(reg.fn.transferAdmin(heir.address)))
    assert env.events(result, "AdminChanged") == [
        {"previousAdmin": env.admin.address, "newAdmin": heir.address}
    ]
    assert reg.chain.call(reg.fn.admin()) == heir.address
    with reverts("NotAdmin", env.admin.address):
        reg.set_allow_list_mode(True)
    heir.reg.set_allow_list_mode(True)
    assert reg.chain.call(reg.fn.allowListMode()) is True


# anchors ------------------------------------------------------------------------------------------


def test_anchor_and_read_back(env: Env) -> None:
    owner = env.party("owner")
    data_id, data_tx = owner.reg.anchor("dataset", h("data"), h("data-meta"))
    env.record("anchor(no parents)", data_tx)
    other_id, _ = owner.reg.anchor("dataset", h("data-2"), ZERO)
    model_id, model_tx = owner.reg.anchor("model", h("model"), h("model-meta"), [data_id, other_id])
    env.record("anchor(2 parents)", model_tx)

    for id_, kind, content in ((data_id, "dataset", h("data")), (model_id, "model", h("model"))):
        assert id_ == asset_id(owner.address, kind, content)
        assert bytes(owner.chain.call(owner.reg.fn.assetId(owner.address, kind_code(kind), content))) == id_

    assert env.events(data_tx, "AssetAnchored") == [
        {
            "id": data_id,
            "contentHash": h("data"),
            "owner": owner.address,
            "kind": 0,
            "metadataHash": h("data-meta"),
            "parents": [],
        }
    ]
    assert env.events(model_tx, "AssetAnchored") == [
        {
            "id": model_id,
            "contentHash": h("model"),
            "owner": owner.address,
            "kind": 1,
            "metadataHash": h("model-meta"),
            "parents": [data_id, other_id],
        }
    ]

    model = env.admin.reg.get_anchor(model_id)
    assert model is not None
    assert model.id == model_id
    assert model.kind == "model"
    assert model.content_hash == h("model")
    assert model.metadata_hash == h("model-meta")
    assert model.owner == owner.address
    assert model.timestamp == env.block_time(model_tx)
    assert model.result_hash is None
    assert model.parents == [data_id, other_id]
    raw = env.chain.call(env.admin.reg.fn.getAnchor(data_id))
    assert list(raw) == [h("data"), h("data-meta"), owner.address, env.block_time(data_tx), 0, ZERO, []]
    assert env.admin.reg.get_anchor(h("never anchored")) is None


def test_anchor_is_write_once(env: Env) -> None:
    owner = env.party("owner")
    id_, _ = owner.reg.anchor("model", h("weights"), h("meta-1"))
    with reverts("AlreadyAnchored", id_):
        owner.reg.anchor("model", h("weights"), h("meta-2"))
    record = owner.reg.get_anchor(id_)
    assert record is not None
    assert record.metadata_hash == h("meta-1")
    # the id is per (owner, kind, content): another kind or another owner is another asset
    onnx_id, _ = owner.reg.anchor("onnx-model", h("weights"), h("meta-1"))
    rival = env.party("rival")
    rival_id, _ = rival.reg.anchor("model", h("weights"), h("meta-1"))
    assert len({id_, onnx_id, rival_id}) == 3
    rival_record = rival.reg.get_anchor(rival_id)
    assert rival_record is not None
    assert rival_record.owner == rival.address


def test_anchor_rejects_bad_input(env: Env) -> None:
    owner = env.party("owner")
    with reverts("BadKind", 9):
        owner.chain.transact(owner.reg.fn.anchor(9, h("x"), ZERO, []))
    with reverts("BadKind", len(KINDS)):
        owner.chain.transact(owner.reg.fn.anchor(len(KINDS), h("x"), ZERO, []))
    with reverts("EmptyHash"):
        owner.reg.anchor("dataset", ZERO, h("meta"))
    parents = [h(f"parent-{i}") for i in range(33)]
    with reverts("TooManyParents", 33):
        owner.reg.anchor("model", h("x"), ZERO, parents)
    id_, result = owner.reg.anchor("model", h("x"), ZERO, parents[:32])  # the limit itself is fine
    env.record("anchor(32 parents)", result)
    record = owner.reg.get_anchor(id_)
    assert record is not None
    assert record.parents == parents[:32]
    fl_id, _ = owner.reg.anchor("fl-round", h("round"), ZERO)
    fl = owner.reg.get_anchor(fl_id)
    assert fl is not None
    assert fl.kind == "fl-round"
    alias_id, _ = owner.reg.anchor("alias", h("alias"), ZERO, [id_])  # the highest kind is accepted
    alias = owner.reg.get_anchor(alias_id)
    assert alias is not None
    assert (alias.kind, alias.parents) == ("alias", [id_])


def test_anchor_requires_registration(env: Env) -> None:
    stranger = env.party()
    with reverts("NotRegistered", stranger.address):
        stranger.reg.anchor("dataset", h("data"), ZERO)
    assert env.admin.reg.get_anchor(asset_id(stranger.address, "dataset", h("data"))) is None


# result attestations -------------------------------------------------------------------------------


def test_attest_result_once(env: Env) -> None:
    owner = env.party("owner")
    for kind in ("model", "onnx-model", "job-result"):
        id_, _ = owner.reg.anchor(kind, h(kind), ZERO)
        result = env.record("attestResult", owner.reg.attest_result(id_, h(f"{kind}-result")))
        assert env.events(result, "ResultAttested") == [
            {"id": id_, "resultHash": h(f"{kind}-result"), "owner": owner.address}
        ]
        record = owner.reg.get_anchor(id_)
        assert record is not None
        assert record.result_hash == h(f"{kind}-result")
        with reverts("AlreadyAttested", id_):
            owner.reg.attest_result(id_, h("another result"))
    record = owner.reg.get_anchor(asset_id(owner.address, "job-result", h("job-result")))
    assert record is not None
    assert record.result_hash == h("job-result-result")


def test_attest_result_rejections(env: Env) -> None:
    owner = env.party("owner")
    model_id, _ = owner.reg.anchor("model", h("model"), ZERO)
    unknown = h("unknown asset")
    with reverts("UnknownAsset", unknown):
        owner.reg.attest_result(unknown, h("result"))
    intruder = env.party("intruder")
    with reverts("NotOwner", model_id, intruder.address):
        intruder.reg.attest_result(model_id, h("result"))
    with reverts("EmptyHash"):
        owner.reg.attest_result(model_id, ZERO)
    for kind in ("dataset", "agreement", "fl-round"):
        id_, _ = owner.reg.anchor(kind, h(kind), ZERO)
        with reverts("NotAttestable", id_, kind_code(kind)):
            owner.reg.attest_result(id_, h("result"))
    record = owner.reg.get_anchor(model_id)
    assert record is not None
    assert record.result_hash is None


# batches ------------------------------------------------------------------------------------------


def _batch(size: int, tag: str = "") -> list[tuple[str, bytes, bytes]]:
    return [(KINDS[i % len(KINDS)], h(f"{tag}content-{i}"), h(f"{tag}meta-{i}")) for i in range(size)]


def _leaves(owner: str, assets: list[tuple[str, bytes, bytes]]) -> list[bytes]:
    return [merkle.leaf(owner, kind_code(k), c, m) for k, c, m in assets]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_every_member_of_a_batch_verifies(env: Env, size: int) -> None:
    owner = env.party("owner")
    assets = _batch(size)
    leaves = _leaves(owner.address, assets)
    tree = merkle.MerkleTree.build(leaves)
    result = env.record(f"anchorBatch(count={size})", owner.reg.anchor_batch(tree.root, size))
    assert env.events(result, "BatchAnchored") == [{"root": tree.root, "owner": owner.address, "count": size}]
    batch = owner.reg.get_batch(tree.root)
    assert batch is not None
    assert (batch.owner, batch.count, batch.timestamp) == (owner.address, size, env.block_time(result))
    for (kind, content, meta), lf in zip(assets, leaves, strict=True):
        proof = tree.proofs[lf]
        assert merkle.verify(tree.root, lf, proof)
        stamp = env.admin.reg.verify_batch_member(tree.root, owner.address, kind, content, meta, proof)
        assert stamp == batch.timestamp


def test_python_leaf_equals_the_contract_leaf(env: Env) -> None:
    reg = env.admin.reg
    for i, kind in enumerate(KINDS):
        owner = Account.create().address
        content, meta = h(f"c{i}"), (ZERO if i % 2 else h(f"m{i}"))
        contract_leaf = bytes(env.chain.call(reg.fn.batchLeaf(owner, kind_code(kind), content, meta)))
        assert merkle.leaf(owner, kind_code(kind), content, meta) == contract_leaf


def test_forged_batch_proofs_are_rejected(env: Env) -> None:
    owner = env.party("owner")
    assets = _batch(7)
    leaves = _leaves(owner.address, assets)
    tree = merkle.MerkleTree.build(leaves)
    owner.reg.anchor_batch(tree.root, 7)
    reg = env.admin.reg
    i = next(i for i, lf in enumerate(leaves) if len(tree.proofs[lf]) == 3)  # one with a full-depth proof
    (kind, content, meta), lf = assets[i], leaves[i]
    proof = tree.proofs[lf]
    assert reg.verify_batch_member(tree.root, owner.address, kind, content, meta, proof) > 0

    wrong_sibling = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    other_proof = tree.proofs[leaves[(i + 1) % 7]]
    assert other_proof != proof
    for forged in (wrong_sibling, proof[:-1], [], other_proof, [*proof, h("extra")]):
        with reverts("InvalidProof", tree.root, lf):
            reg.verify_batch_member(tree.root, owner.address, kind, content, meta, forged)

    changed = [
        (kind, content, h("other metadata")),
        (kind, h("other content"), meta),
        (KINDS[(kind_code(kind) + 1) % len(KINDS)], content, meta),
    ]
    for k, c, m in changed:
        forged_leaf = merkle.leaf(owner.address, kind_code(k), c, m)
        with reverts("InvalidProof", tree.root, forged_leaf):
            reg.verify_batch_member(tree.root, owner.address, k, c, m, proof)

    unknown = h("unknown root")
    with reverts("UnknownBatch", unknown):
        reg.verify_batch_member(unknown, owner.address, kind, content, meta, proof)
    # the same assets claimed under another owner: the batch is not theirs
    impostor = env.party().address
    with reverts("NotOwner", tree.root, impostor):
        reg.verify_batch_member(tree.root, impostor, kind, content, meta, proof)


def test_anchor_batch_rejections(env: Env) -> None:
    owner = env.party("owner")
    root = merkle.MerkleTree.build(_leaves(owner.address, _batch(3))).root
    with reverts("EmptyBatch"):
        owner.reg.anchor_batch(root, 0)
    with reverts("EmptyHash"):
        owner.reg.anchor_batch(ZERO, 3)
    stranger = env.party()
    with reverts("NotRegistered", stranger.address):
        stranger.reg.anchor_batch(root, 3)
    assert owner.reg.get_batch(root) is None

    owner.reg.anchor_batch(root, 3)
    with reverts("BatchExists", root):
        owner.reg.anchor_batch(root, 4)
    rival = env.party("rival")
    with reverts("BatchExists", root):
        rival.reg.anchor_batch(root, 3)
    batch = owner.reg.get_batch(root)
    assert batch is not None
    assert (batch.owner, batch.count) == (owner.address, 3)


# agreements ---------------------------------------------------------------------------------------


@dataclass
class Deal:
    agreement_id: bytes
    terms_hash: bytes
    provider: Any
    consumer: Any
    valid_until: int

    def values(self, **changes: Any) -> dict[str, Any]:
        return {
            "agreement_id": self.agreement_id,
            "terms_hash": self.terms_hash,
            "provider": self.provider.address,
            "consumer": self.consumer.address,
            "valid_until": self.valid_until,
            **changes,
        }

    def typed_data(self, env: Env, **changes: Any) -> dict[str, Any]:
        return eip712.agreement_typed_data(
            chain_id=env.chain.chain_id, registry=env.admin.reg.address, **self.values(**changes)
        )

    def sign(self, env: Env, signer: Any, **changes: Any) -> bytes:
        return eip712.sign_agreement(signer.key, self.typed_data(env, **changes))

    def record(self, party: Party, provider_sig: bytes, consumer_sig: bytes, **changes: Any) -> TxResult:
        v = self.values(**changes)
        return party.reg.record_agreement(
            v["agreement_id"],
            v["terms_hash"],
            v["provider"],
            v["consumer"],
            v["valid_until"],
            provider_sig,
            consumer_sig,
        )


def _deal(label: str) -> Deal:
    return Deal(h(label), h(f"{label}-terms"), Account.create(), Account.create(), int(time.time()) + 86_400)


def test_record_agreement(env: Env) -> None:
    deal = _deal("deal")
    typed = deal.typed_data(env)
    python_digest = bytes(
        Account.sign_message(encode_typed_data(full_message=typed), deal.provider.key).message_hash
    )
    contract_digest = env.admin.reg.agreement_digest(
        deal.agreement_id, deal.terms_hash, deal.provider.address, deal.consumer.address, deal.valid_until
    )
    assert python_digest == contract_digest

    provider_sig, consumer_sig = deal.sign(env, deal.provider), deal.sign(env, deal.consumer)
    assert eip712.recover_agreement_signer(typed, provider_sig) == deal.provider.address
    relayer = env.party()  # anyone may submit an agreement both parties signed
    result = env.record("recordAgreement", deal.record(relayer, provider_sig, consumer_sig))
    assert env.events(result, "AgreementRecorded") == [
        {
            "agreementId": deal.agreement_id,
            "provider": deal.provider.address,
            "consumer": deal.consumer.address,
            "termsHash": deal.terms_hash,
            "validUntil": deal.valid_until,
        }
    ]
    stored = env.admin.reg.get_agreement(deal.agreement_id)
    assert stored is not None
    assert stored.agreement_id == deal.agreement_id
    assert stored.terms_hash == deal.terms_hash
    assert (stored.provider, stored.consumer) == (deal.provider.address, deal.consumer.address)
    assert stored.valid_until == deal.valid_until
    assert stored.timestamp == env.block_time(result)
    assert env.admin.reg.get_agreement(h("no such agreement")) is None

    with reverts("AgreementExists", deal.agreement_id):
        deal.record(relayer, provider_sig, consumer_sig)

    # v may also be given as 0/1 instead of 27/28
    second = _deal("second")
    p_sig, c_sig = second.sign(env, second.provider), second.sign(env, second.consumer)
    p_sig = p_sig[:64] + bytes([p_sig[64] - 27])
    second.record(relayer, p_sig, c_sig)
    assert env.admin.reg.get_agreement(second.agreement_id) is not None


def test_agreement_signature_rejections(env: Env) -> None:
    deal = _deal("deal")
    provider, consumer = deal.provider, deal.consumer
    p_sig, c_sig = deal.sign(env, provider), deal.sign(env, consumer)
    relayer = env.party()

    with reverts("BadSignature", provider.address, consumer.address):
        deal.record(relayer, c_sig, p_sig)  # swapped
    third = Account.create()
    with reverts("BadSignature", provider.address, third.address):
        deal.record(relayer, deal.sign(env, third), c_sig)
    with reverts("BadSignature", consumer.address, third.address):
        deal.record(relayer, p_sig, deal.sign(env, third))
    with pytest.raises(ChainReverted) as exc:
        deal.record(relayer, p_sig, c_sig, terms_hash=h("tampered terms"))  # signed other terms
    assert exc.value.reason == "BadSignature"
    assert _norm(exc.value.reason_args)[0] == provider.address
    assert _norm(exc.value.reason_args)[1] not in (provider.address, consumer.address)
    data = deal.typed_data(env)
    other_domain = eip712.sign_agreement(provider.key, {**data, "domain": {**data["domain"], "chainId": 1}})
    with reverts("BadSignature"):
        deal.record(relayer, other_domain, c_sig)  # signed for another chain

    with reverts("MalformedSignature"):
        deal.record(relayer, p_sig[:64], c_sig)
    with reverts("MalformedSignature"):
        deal.record(relayer, p_sig, c_sig + b"\x00")
    with reverts("MalformedSignature"):
        deal.record(relayer, p_sig[:64] + b"\x1d", c_sig)  # v = 29

    # the malleated twin (s' = n - s, v flipped) is a valid ECDSA signature of the same digest ...
    r, s, v = p_sig[:32], int.from_bytes(p_sig[32:64], "big"), p_sig[64]
    digest = bytes(
        Account.sign_message(encode_typed_data(full_message=deal.typed_data(env)), provider.key).message_hash
    )
    twin = keys.Signature(vrs=((v - 27) ^ 1, int.from_bytes(r, "big"), SECP256K1_N - s))
    assert twin.recover_public_key_from_msg_hash(digest).to_checksum_address() == provider.address
    # ... which the registry refuses (EIP-2)
    with reverts("MalformedSignature"):
        deal.record(relayer, r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]), c_sig)

    assert env.admin.reg.get_agreement(deal.agreement_id) is None
    deal.record(relayer, p_sig, c_sig)  # the genuine signatures still work
    assert env.admin.reg.get_agreement(deal.agreement_id) is not None


def test_agreement_input_rejections(env: Env) -> None:
    deal = _deal("deal")
    relayer = env.party()
    same = deal.sign(env, deal.provider, consumer=deal.provider.address)
    with reverts("SameParties", deal.provider.address):
        deal.record(relayer, same, same, consumer=deal.provider.address)
    empty_p = deal.sign(env, deal.provider, terms_hash=ZERO)
    empty_c = deal.sign(env, deal.consumer, terms_hash=ZERO)
    with reverts("EmptyHash"):
        deal.record(relayer, empty_p, empty_c, terms_hash=ZERO)
    past = int(time.time()) - 3600
    expired_p = deal.sign(env, deal.provider, valid_until=past)
    expired_c = deal.sign(env, deal.consumer, valid_until=past)
    with reverts("AgreementExpired", deal.agreement_id, past):
        deal.record(relayer, expired_p, expired_c, valid_until=past)
    assert env.admin.reg.get_agreement(deal.agreement_id) is None
    open_p = deal.sign(env, deal.provider, valid_until=0)
    open_c = deal.sign(env, deal.consumer, valid_until=0)
    deal.record(relayer, open_p, open_c, valid_until=0)
    assert env.admin.reg.get_agreement(deal.agreement_id) is not None


# gas ----------------------------------------------------------------------------------------------


def test_gas_bounds(env: Env) -> None:
    owner = env.party("owner")
    _, single = owner.reg.anchor("dataset", h("single"), h("single-meta"))
    env.record("anchor(no parents)", single)
    assert single.gas_used < ANCHOR_GAS_LIMIT

    costs = {}
    for count in (1, 100, 2**32 - 1):
        result = owner.reg.anchor_batch(h(f"root-{count}"), count)
        env.record(f"anchorBatch(count={count})", result)
        costs[count] = result.gas_used
        assert result.gas_used < BATCH_GAS_LIMIT
    # the count is one word: the batch costs the same whatever it covers
    assert max(costs.values()) - min(costs.values()) < 1_000
    assert costs[100] / 100 < 1_000
    assert costs[100] / 100 < single.gas_used / 50

    # the design's alternative, one contract per asset, costs far more than an anchor
    _, deploy = owner.chain.deploy("PerAssetRecord", 0, h("single"), h("single-meta"), "A dataset")
    env.record("deploy PerAssetRecord", deploy)
    assert deploy.gas_used > 2 * single.gas_used


# chain connections ----------------------------------------------------------------------------------


def test_rpc_chain_refuses_an_address_without_the_registry(anvil: services.Anvil) -> None:
    deployer = Account.create()
    chain = RpcChain(anvil.url, deployer, registry=None)
    chain.fund(deployer.address)
    with pytest.raises(RegistryMissing, match="no contract"):
        RpcChain(anvil.url, None, registry="0x" + "12" * 20)
    other, _ = chain.deploy("PerAssetRecord", 0, b"\x11" * 32, b"\x00" * 32, "t")
    with pytest.raises(RegistryMissing, match="not an Agora registry"):
        RpcChain(anvil.url, None, registry=other)
    registry, _ = chain.deploy("AgoraRegistry", False)
    reader = RpcChain(anvil.url, None, registry=registry.lower())
    assert reader.registry_address == registry
    assert reader.call(reader.registry().functions.VERSION()) == "agora-registry/1"


def test_rpc_chain_checks_the_chain_id(anvil: services.Anvil) -> None:
    chain_id = RpcChain(anvil.url, None, registry=None).chain_id
    assert chain_id == 31337
    with pytest.raises(WrongChain, match="expected 1"):
        RpcChain(anvil.url, None, registry=None, expected_chain_id=1)
    assert RpcChain(anvil.url, None, registry=None, expected_chain_id=chain_id).chain_id == chain_id


@pytest.mark.parametrize("retries", [0, 2])
def test_rpc_chain_unavailable(retries: int) -> None:
    url = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    with pytest.raises(ChainUnavailable):
        RpcChain(url, None, registry=None, expected_chain_id=1, retries=retries)


def test_embedded_chain_persists_across_restarts(tmp_path: Path) -> None:
    owner = Account.create()
    chain = EmbeddedChain(tmp_path, owner)
    assert chain.chain_id == EMBEDDED_CHAIN_ID
    registry = Registry(chain)
    registry.register_participant("owner", "https://owner")
    id_, _ = registry.anchor("model", h("persisted"), h("meta"), [h("parent")])
    before = registry.get_anchor(id_)
    address = chain.registry_address
    chain.close()

    reopened = EmbeddedChain(tmp_path, owner)
    try:
        assert reopened.registry_address == address
        again = Registry(reopened)
        assert again.get_anchor(id_) == before
        assert again.is_participant(owner.address)
        # and it keeps going: the next write takes the next nonce
        second, _ = again.anchor("dataset", h("after restart"), ZERO)
        assert again.get_anchor(second) is not None
    finally:
        reopened.close()
    reader = EmbeddedChain(tmp_path, None)  # read-only: finds the registry, deploys nothing
    try:
        assert reader.registry_address == address
        assert Registry(reader).get_anchor(id_) == before
    finally:
        reader.close()


def test_anvil_state_file_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "anvil-state.json"
    node = services.start_anvil(state=state)
    owner = Account.create()
    try:
        chain = RpcChain(node.url, owner, registry=None)
        chain.fund(owner.address)
        address, _ = chain.deploy("AgoraRegistry", False)
        chain.registry_address = address
        registry = Registry(chain)
        registry.register_participant("owner", "https://owner")
        id_, _ = registry.anchor("dataset", h("kept"), ZERO)
    finally:
        node.stop()
    assert state.is_file()
    node = services.start_anvil(state=state)
    try:
        reader = Registry(RpcChain(node.url, None, registry=address))
        record = reader.get_anchor(id_)
        assert record is not None
        assert record.owner == owner.address
    finally:
        node.stop()
