"""Typed access to the Agora registry contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

from contracts.chain import Chain, TxResult

# Gas limits of the fixed-cost calls: about twice what they cost (recorded by the contract
# tests), so a transaction needs no estimate round trip; anything unused is not charged.
GAS = {
    "registerParticipant": 250_000,
    "anchorBatch": 120_000,
    "attestResult": 120_000,
    "recordAgreement": 300_000,
    "admin": 100_000,
}
ANCHOR_GAS, ANCHOR_GAS_PER_PARENT = 200_000, 40_000

KINDS = (
    "dataset",
    "model",
    "onnx-model",
    "agreement",
    "job-result",
    "fl-round",
    "validation",  # a dataset version's quality validation result (parent: the version)
    "alias",  # a model offering's alias moved to a version (parent: the version)
)
ZERO_ADDRESS = "0x" + "00" * 20


def kind_code(kind: str) -> int:
    try:
        return KINDS.index(kind)
    except ValueError:
        raise ValueError(f"unknown asset kind {kind!r}; known: {', '.join(KINDS)}") from None


def asset_id(owner: str, kind: str, content_hash: bytes) -> bytes:
    """The registry's id of an asset: one owner anchors one (kind, content) once."""
    return keccak(
        encode(["address", "uint8", "bytes32"], [to_canonical_address(owner), kind_code(kind), content_hash])
    )


@dataclass(frozen=True)
class ParticipantRecord:
    address: str
    name: str
    endpoint: str
    registered_at: int
    updated_at: int


@dataclass(frozen=True)
class AnchorRecord:
    id: bytes
    kind: str
    content_hash: bytes
    metadata_hash: bytes
    owner: str
    timestamp: int
    result_hash: bytes | None
    parents: list[bytes]


@dataclass(frozen=True)
class BatchRecord:
    root: bytes
    owner: str
    timestamp: int
    count: int


@dataclass(frozen=True)
class AgreementRecord:
    agreement_id: bytes
    terms_hash: bytes
    provider: str
    consumer: str
    valid_until: int
    timestamp: int


class Registry:
    def __init__(self, chain: Chain, address: str | None = None) -> None:
        """The registry at ``address``, or the one the chain connection is configured with."""
        self.chain = chain
        self.contract = chain.contract(address) if address else chain.registry()
        self.address = str(self.contract.address)

    @property
    def fn(self) -> Any:
        return self.contract.functions

    # participants -----------------------------------------------------------------

    def register_participant(self, name: str, endpoint: str) -> TxResult:
        return self.chain.transact(
            self.fn.registerParticipant(name, endpoint), gas=GAS["registerParticipant"]
        )

    def participant(self, address: str) -> ParticipantRecord | None:
        name, endpoint, registered_at, updated_at = self.chain.call(
            self.fn.getParticipant(to_checksum_address(address))
        )
        if registered_at == 0:
            return None
        return ParticipantRecord(to_checksum_address(address), name, endpoint, registered_at, updated_at)

    def is_participant(self, address: str) -> bool:
        return bool(self.chain.call(self.fn.isParticipant(to_checksum_address(address))))

    def set_allow_list_mode(self, enabled: bool) -> TxResult:
        return self.chain.transact(self.fn.setAllowListMode(enabled), gas=GAS["admin"])

    def set_allowed(self, address: str, allowed: bool) -> TxResult:
        return self.chain.transact(
            self.fn.setAllowed(to_checksum_address(address), allowed), gas=GAS["admin"]
        )

    # anchors ------------------------------------------------------------------------

    def anchor(
        self, kind: str, content_hash: bytes, metadata_hash: bytes, parents: list[bytes] | None = None
    ) -> tuple[bytes, TxResult]:
        parents = parents or []
        result = self.chain.transact(
            self.fn.anchor(kind_code(kind), content_hash, metadata_hash, parents),
            gas=ANCHOR_GAS + ANCHOR_GAS_PER_PARENT * len(parents),
        )
        return asset_id(self.chain.sender, kind, content_hash), result

    def attest_result(self, id_: bytes, result_hash: bytes) -> TxResult:
        return self.chain.transact(self.fn.attestResult(id_, result_hash), gas=GAS["attestResult"])

    def get_anchor(self, id_: bytes) -> AnchorRecord | None:
        content, metadata, owner, timestamp, kind, result, parents = self.chain.call(self.fn.getAnchor(id_))
        if owner == ZERO_ADDRESS:
            return None
        return AnchorRecord(
            id=id_,
            kind=KINDS[kind],
            content_hash=bytes(content),
            metadata_hash=bytes(metadata),
            owner=to_checksum_address(owner),
            timestamp=timestamp,
            result_hash=bytes(result) if any(result) else None,
            parents=[bytes(p) for p in parents],
        )

    # batches ------------------------------------------------------------------------

    def anchor_batch(self, root: bytes, count: int) -> TxResult:
        return self.chain.transact(self.fn.anchorBatch(root, count), gas=GAS["anchorBatch"])

    def get_batch(self, root: bytes) -> BatchRecord | None:
        owner, timestamp, count = self.chain.call(self.fn.getBatch(root))
        if owner == ZERO_ADDRESS:
            return None
        return BatchRecord(root, to_checksum_address(owner), timestamp, count)

    def verify_batch_member(
        self,
        root: bytes,
        owner: str,
        kind: str,
        content_hash: bytes,
        metadata_hash: bytes,
        proof: list[bytes],
    ) -> int:
        """The batch's block time if the asset is in it; :class:`ChainReverted` with the reason if not."""
        return int(
            self.chain.call(
                self.fn.verifyBatchMember(
                    root, to_checksum_address(owner), kind_code(kind), content_hash, metadata_hash, proof
                )
            )
        )

    # agreements ---------------------------------------------------------------------

    def record_agreement(
        self,
        agreement_id: bytes,
        terms_hash: bytes,
        provider: str,
        consumer: str,
        valid_until: int,
        provider_signature: bytes,
        consumer_signature: bytes,
    ) -> TxResult:
        return self.chain.transact(
            self.fn.recordAgreement(
                agreement_id,
                terms_hash,
                to_checksum_address(provider),
                to_checksum_address(consumer),
                valid_until,
                provider_signature,
                consumer_signature,
            ),
            gas=GAS["recordAgreement"],
        )

    def get_agreement(self, agreement_id: bytes) -> AgreementRecord | None:
        terms, provider, consumer, valid_until, timestamp = self.chain.call(
            self.fn.getAgreement(agreement_id)
        )
        if provider == ZERO_ADDRESS:
            return None
        return AgreementRecord(
            agreement_id,
            bytes(terms),
            to_checksum_address(provider),
            to_checksum_address(consumer),
            valid_until,
            timestamp,
        )

    def agreement_digest(
        self, agreement_id: bytes, terms_hash: bytes, provider: str, consumer: str, valid_until: int
    ) -> bytes:
        return bytes(
            self.chain.call(
                self.fn.agreementDigest(
                    agreement_id,
                    terms_hash,
                    to_checksum_address(provider),
                    to_checksum_address(consumer),
                    valid_until,
                )
            )
        )
