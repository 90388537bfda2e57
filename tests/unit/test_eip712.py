"""EIP-712 agreements without a chain: what a party signs is exactly what the registry recomputes."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import eip712

HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
REGISTRY = "0x" + "5a" * 20
SIGNER = Account.from_key("0x" + "42" * 32)


def typed(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "chain_id": 31337,
        "registry": REGISTRY,
        "agreement_id": keccak(text="agreement"),
        "terms_hash": keccak(text="terms"),
        "provider": SIGNER.address,
        "consumer": "0x" + "c0" * 20,
        "valid_until": 1_900_000_000,
    }
    values.update(changes)
    return eip712.agreement_typed_data(**values)


def solidity_digest(data: dict[str, Any]) -> bytes:
    """The digest as AgoraRegistry.agreementDigest computes it, written out by hand."""
    domain, msg = data["domain"], data["message"]
    domain_typehash = keccak(
        text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                domain_typehash,
                keccak(text=domain["name"]),
                keccak(text=domain["version"]),
                domain["chainId"],
                domain["verifyingContract"],
            ],
        )
    )
    typehash = keccak(
        text="Agreement(bytes32 agreementId,bytes32 termsHash,address provider,address consumer,"
        "uint64 validUntil)"
    )
    struct = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "address", "address", "uint64"],
            [
                typehash,
                msg["agreementId"],
                msg["termsHash"],
                msg["provider"],
                msg["consumer"],
                msg["validUntil"],
            ],
        )
    )
    return keccak(b"\x19\x01" + separator + struct)


def test_sign_and_recover_round_trip() -> None:
    data = typed()
    signature = eip712.sign_agreement(SIGNER.key, data)
    assert eip712.recover_agreement_signer(data, signature) == SIGNER.address


def test_the_domain_is_the_registry_s() -> None:
    data = typed()
    assert data["domain"] == {
        "name": "AgoraRegistry",
        "version": "1",
        "chainId": 31337,
        "verifyingContract": REGISTRY,
    }
    assert data["primaryType"] == "Agreement"


def test_the_signed_digest_is_the_contract_s() -> None:
    data = typed()
    signed = Account.sign_message(encode_typed_data(full_message=data), SIGNER.key)
    assert bytes(signed.message_hash) == solidity_digest(data)


def test_signatures_have_the_form_the_registry_accepts() -> None:
    for i in range(20):
        signature = eip712.sign_agreement(SIGNER.key, typed(agreement_id=keccak(text=f"a{i}")))
        assert len(signature) == 65
        assert signature[64] in (27, 28)
        assert int.from_bytes(signature[32:64], "big") <= HALF_N  # low s (EIP-2)


@pytest.mark.parametrize(
    "change",
    [
        {"agreement_id": keccak(text="another agreement")},
        {"terms_hash": keccak(text="other terms")},
        {"provider": "0x" + "99" * 20},
        {"consumer": "0x" + "98" * 20},
        {"valid_until": 1_900_000_001},
        {"chain_id": 1},
        {"registry": "0x" + "5b" * 20},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_change_in_any_field_changes_the_signer(change: dict[str, Any]) -> None:
    signature = eip712.sign_agreement(SIGNER.key, typed())
    changed = typed(**change)
    assert solidity_digest(changed) != solidity_digest(typed())
    assert eip712.recover_agreement_signer(changed, signature) != SIGNER.address


@settings(max_examples=25, deadline=None)
@given(
    agreement_id=st.binary(min_size=32, max_size=32),
    terms_hash=st.binary(min_size=32, max_size=32),
    valid_until=st.integers(min_value=0, max_value=2**64 - 1),
    chain_id=st.integers(min_value=1, max_value=2**63),
    key=st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < HALF_N * 2),
)
def test_round_trip_for_any_agreement(
    agreement_id: bytes, terms_hash: bytes, valid_until: int, chain_id: int, key: bytes
) -> None:
    signer = Account.from_key(key)
    data = typed(
        agreement_id=agreement_id,
        terms_hash=terms_hash,
        valid_until=valid_until,
        chain_id=chain_id,
        provider=signer.address,
    )
    signature = eip712.sign_agreement(key, data)
    assert eip712.recover_agreement_signer(data, signature) == signer.address
    signed = Account.sign_message(encode_typed_data(full_message=data), key)
    assert bytes(signed.message_hash) == solidity_digest(data)
    other = typed(
        agreement_id=agreement_id,
        terms_hash=terms_hash,
        valid_until=valid_until ^ 1,
        chain_id=chain_id,
        provider=signer.address,
    )
    assert eip712.recover_agreement_signer(other, signature) != signer.address
