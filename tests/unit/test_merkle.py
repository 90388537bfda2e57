"""Merkle batches without a chain: every member proves, nothing else does, and the root is a set's."""

from __future__ import annotations

import math

import pytest
from eth_abi import encode
from eth_utils import keccak
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from contracts import merkle

hashes = st.binary(min_size=32, max_size=32)
leaf_sets = st.lists(hashes, min_size=1, max_size=70, unique=True)
OWNER = "0x" + "ab" * 20


@settings(max_examples=60, deadline=None)
@given(leaf_sets)
def test_every_leaf_verifies_with_its_own_proof(leaves: list[bytes]) -> None:
    tree = merkle.MerkleTree.build(leaves)
    assert set(tree.proofs) == set(leaves)
    depth = math.ceil(math.log2(len(leaves))) if len(leaves) > 1 else 0
    for lf in leaves:
        proof = tree.proofs[lf]
        assert len(proof) <= depth
        assert merkle.verify(tree.root, lf, proof)


@settings(max_examples=60, deadline=None)
@given(st.lists(hashes, min_size=2, max_size=40, unique=True), st.data())
def test_a_leaf_fails_with_the_proof_of_another(leaves: list[bytes], data: st.DataObject) -> None:
    tree = merkle.MerkleTree.build(leaves)
    a = data.draw(st.sampled_from(leaves))
    b = data.draw(st.sampled_from([lf for lf in leaves if lf != a]))
    assert not merkle.verify(tree.root, a, tree.proofs[b])


@settings(max_examples=60, deadline=None)
@given(leaf_sets, hashes)
def test_a_non_member_does_not_verify(leaves: list[bytes], stranger: bytes) -> None:
    tree = merkle.MerkleTree.build(leaves)
    assume(stranger not in leaves)
    assert all(not merkle.verify(tree.root, stranger, proof) for proof in tree.proofs.values())


@settings(max_examples=60, deadline=None)
@given(leaf_sets, st.randoms(use_true_random=False))
def test_the_root_does_not_depend_on_leaf_order_or_repeats(leaves: list[bytes], rnd: object) -> None:
    shuffled = list(leaves)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    tree = merkle.MerkleTree.build(leaves)
    assert merkle.MerkleTree.build(shuffled).root == tree.root
    assert merkle.MerkleTree.build(shuffled + leaves[:3]).root == tree.root


@settings(max_examples=40, deadline=None)
@given(st.lists(hashes, min_size=2, max_size=30, unique=True))
def test_the_root_changes_with_the_set(leaves: list[bytes]) -> None:
    root = merkle.MerkleTree.build(leaves).root
    assert merkle.MerkleTree.build(leaves[:-1]).root != root
    altered = [bytes([leaves[0][0] ^ 1]) + leaves[0][1:], *leaves[1:]]
    if len(set(altered)) == len(altered):
        assert merkle.MerkleTree.build(altered).root != root


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError):
        merkle.MerkleTree.build([])


def test_one_leaf_is_its_own_root() -> None:
    lf = keccak(text="only")
    tree = merkle.MerkleTree.build([lf])
    assert tree.root == lf
    assert tree.proofs == {lf: []}
    assert merkle.verify(lf, lf, [])


def test_two_leaves_hash_in_sorted_order() -> None:
    a, b = sorted([keccak(text="a"), keccak(text="b")])
    tree = merkle.MerkleTree.build([b, a])
    assert tree.root == keccak(a + b)
    assert tree.proofs == {a: [b], b: [a]}


def test_leaf_is_the_double_hash_of_the_abi_encoding() -> None:
    content, meta = keccak(text="content"), keccak(text="meta")
    expected = keccak(keccak(encode(["address", "uint8", "bytes32", "bytes32"], [OWNER, 2, content, meta])))
    assert merkle.leaf(OWNER, 2, content, meta) == expected


def test_every_field_of_a_leaf_matters() -> None:
    content, meta = keccak(text="content"), keccak(text="meta")
    base = merkle.leaf(OWNER, 1, content, meta)
    variants = [
        merkle.leaf("0x" + "ac" * 20, 1, content, meta),
        merkle.leaf(OWNER, 2, content, meta),
        merkle.leaf(OWNER, 1, meta, content),
        merkle.leaf(OWNER, 1, content, b"\x00" * 32),
    ]
    assert len({base, *variants}) == 5
