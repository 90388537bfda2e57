"""Merkle batches of asset anchors, hashed exactly as the registry checks them.

A leaf is ``keccak(keccak(abi.encode(owner, kind, contentHash, metadataHash)))`` (double
hashing keeps a leaf from posing as an inner node); inner nodes hash their two children in
sorted order, so a proof is just the list of siblings. Leaves are sorted before the tree is
built: the same set of assets always gives the same root.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi.abi import encode
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak


def leaf(owner: str, kind: int, content_hash: bytes, metadata_hash: bytes) -> bytes:
    inner = keccak(
        encode(
            ["address", "uint8", "bytes32", "bytes32"],
            [to_canonical_address(owner), kind, content_hash, metadata_hash],
        )
    )
    return keccak(inner)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True)
class MerkleTree:
    root: bytes
    proofs: dict[bytes, list[bytes]]

    @classmethod
    def build(cls, leaves: list[bytes]) -> MerkleTree:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        layer = sorted(set(leaves))
        proofs: dict[bytes, list[bytes]] = {lf: [] for lf in layer}
        members: dict[bytes, list[bytes]] = {lf: [lf] for lf in layer}
        while len(layer) > 1:
            nxt: list[bytes] = []
            for i in range(0, len(layer), 2):
                if i + 1 == len(layer):
                    nxt.append(layer[i])  # odd one out moves up unchanged
                    continue
                left, right = layer[i], layer[i + 1]
                for lf in members[left]:
                    proofs[lf].append(right)
                for lf in members[right]:
                    proofs[lf].append(left)
                parent = _pair(left, right)
                members[parent] = members.pop(left) + members.pop(right)
                nxt.append(parent)
            layer = nxt
        return cls(root=layer[0], proofs=proofs)


def verify(root: bytes, leaf_hash: bytes, proof: list[bytes]) -> bool:
    node = leaf_hash
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root
