"""EIP-712 typed data of an agreement: what both parties sign and the registry checks."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

AGREEMENT_TYPES = {
    "Agreement": [
        {"name": "agreementId", "type": "bytes32"},
        {"name": "termsHash", "type": "bytes32"},
        {"name": "provider", "type": "address"},
        {"name": "consumer", "type": "address"},
        {"name": "validUntil", "type": "uint64"},
    ]
}


def agreement_typed_data(
    *,
    chain_id: int,
    registry: str,
    agreement_id: bytes,
    terms_hash: bytes,
    provider: str,
    consumer: str,
    valid_until: int,
) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **AGREEMENT_TYPES,
        },
        "primaryType": "Agreement",
        "domain": {
            "name": "AgoraRegistry",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": registry,
        },
        "message": {
            "agreementId": agreement_id,
            "termsHash": terms_hash,
            "provider": provider,
            "consumer": consumer,
            "validUntil": valid_until,
        },
    }


def sign_agreement(private_key: bytes, typed_data: dict[str, Any]) -> bytes:
    signed = Account.sign_message(encode_typed_data(full_message=typed_data), private_key)
    return bytes(signed.signature)


def recover_agreement_signer(typed_data: dict[str, Any], signature: bytes) -> str:
    return str(Account.recover_message(encode_typed_data(full_message=typed_data), signature=signature))
