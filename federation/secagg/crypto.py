"""The cryptography of secure aggregation, all from well-kept libraries.

* key agreement: X25519 (``cryptography``); a fresh pair for masks and one for shares each round;
* key derivation: HKDF-SHA256 whose ``info`` names the purpose, the round context and both ids,
  so a secret of one round, pair or direction is never the secret of another;
* share encryption: AES-256-GCM with a random nonce; the associated data repeats the round
  context and both ids, so a share moved to another recipient or round fails its tag;
* masks: the ChaCha20 keystream of a 32-byte seed (a CSPRNG), cut into ``modulus_bits`` values;
* secret sharing: Shamir over GF(2^128) (pycryptodome), a 32-byte secret as two 16-byte halves
  split with the same holder indices; a share is ``index (2 bytes) || half₁ || half₂``.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import numpy.typing as npt
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation.secagg.config import SecAggRejected, framed

KEY_BYTES = 32
SEED_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SHARE_BYTES = 2 + 32
SHARE_PLAINTEXT = 2 + 32 + 32  # holder index, share of the seed, share of the mask key
SEALED_BYTES = NONCE_BYTES + SHARE_PLAINTEXT + TAG_BYTES

_MASK_INFO = b"agora-secagg pairwise-mask v1"
_SHARE_INFO = b"agora-secagg share-key v1"
_SHARE_AAD = b"agora-secagg share v1"
_COMMIT = b"agora-secagg seed-commitment v1"


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def private_raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def load_private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def public_of(private: bytes) -> bytes:
    """The public key of a raw private key (to check a reconstructed one against its advert)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


_PROBE = X25519PrivateKey.generate()  # only to test points: what it computes is thrown away


def is_low_order(public: bytes) -> bool:
    """Whether a public key is a low-order point (every shared secret with it is all zeros)."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False


def _exchange(private: X25519PrivateKey, peer_public: bytes, peer: int) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # cryptography refuses an all-zero shared secret: the peer sent a low-order point
        raise SecAggRejected(f"the public key of participant {peer} is a low-order point") from None


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pairwise_seed(
    private: X25519PrivateKey, peer_public: bytes, round_context: bytes, me: int, peer: int
) -> bytes:
    """The seed both ends of a pair derive for their mask (ids in ascending order: symmetric)."""
    low, high = sorted((me, peer))
    return _hkdf(_exchange(private, peer_public, peer), _MASK_INFO + framed(round_context, low, high))


def share_key(
    private: X25519PrivateKey, peer_public: bytes, round_context: bytes, me: int, peer: int, *, sending: bool
) -> bytes:
    """The AES key of the shares one end sends the other this round (one direction only)."""
    src, dst = (me, peer) if sending else (peer, me)
    return _hkdf(_exchange(private, peer_public, peer), _SHARE_INFO + framed(round_context, src, dst))


def seal(key: bytes, round_context: bytes, src: int, dst: int, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _SHARE_AAD + framed(round_context, src, dst))


def unseal(key: bytes, round_context: bytes, src: int, dst: int, sealed: bytes) -> bytes:
    """The plaintext of a sealed share, or a refusal if it was altered or is not for ``dst`` now."""
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _SHARE_AAD + framed(round_context, src, dst))
    except InvalidTag:
        raise SecAggRejected(
            f"the share participant {src} sent to participant {dst} fails its authentication tag: "
            "altered, or not meant for this recipient in this round"
        ) from None


def mask(seed: bytes, count: int, bits: int) -> npt.NDArray[np.uint64]:
    """``count`` uniform values below ``2**bits`` from the ChaCha20 keystream of ``seed``.

    A zero nonce is safe: every seed is used for one stream only (it is fresh per round, or
    derived with the round context and the pair's ids).
    """
    stream = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    values = np.frombuffer(stream.update(b"\x00" * (8 * count)), dtype="<u8").astype(np.uint64)
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    return values


def commitment(round_context: bytes, owner: int, seed: bytes) -> bytes:
    """A binding, hiding commitment to a self-mask seed: the server checks what it reconstructs."""
    return hashlib.sha256(_COMMIT + framed(round_context, owner) + seed).digest()


def split_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """``holders`` Shamir shares of a 32-byte secret, any ``threshold`` of which rebuild it."""
    halves = [Shamir.split(threshold, holders, secret[i : i + 16], ssss=False) for i in (0, 16)]
    return [struct.pack(">H", a[0]) + a[1] + b[1] for a, b in zip(*halves, strict=True)]


def share_index(share: bytes) -> int:
    return int(struct.unpack(">H", share[:2])[0])


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret behind ``shares`` (distinct indices): right only if they are enough and honest."""
    parts = [(share_index(s), s[2:18], s[18:34]) for s in shares]
    first = Shamir.combine([(i, a) for i, a, _ in parts], ssss=False)
    second = Shamir.combine([(i, b) for i, _, b in parts], ssss=False)
    return bytes(first) + bytes(second)
