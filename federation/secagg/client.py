"""A provider's side of one secure-aggregation round.

The client answers each of the coordinator's four requests once, in order, and keeps its secrets
(two private keys, the self-mask seed, the shares others gave it) in memory only: a provider
that restarts mid-round is a drop-out of that round, which is what the shares are for.

It refuses what would let a coordinator see its vector: keys of participants that are not its
neighbours this round, too few neighbours to hide among, shares that fail their tag, an unmask
request that names it as dropped, lists a participant in both roles, has fewer survivors than
the threshold, or comes a second time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from federation.secagg import crypto, wire
from federation.secagg.config import SecAggConfig, SecAggFailed, SecAggRejected, check_context, neighbours
from federation.secagg.encoding import check_vector, pack, quantize

_STAGES = ("advertise", "share_keys", "masked_input", "unmask", "done")


class SecAggClient:
    """One participant of one round: ``advertise → share_keys → masked_input → unmask``."""

    def __init__(
        self, config: SecAggConfig, my_id: int, participants: Iterable[object], round_context: bytes
    ) -> None:
        self.config = config
        self.ids = config.check_participants(participants)
        self.me = wire.participant(my_id, "this participant's id")
        if self.me not in self.ids:
            raise SecAggRejected(f"participant {self.me} is not in this round")
        self.context = check_context(round_context)
        self.neighbourhood = neighbours(config, self.ids, self.context)[self.me]
        self._mask_key = crypto.new_key()
        self._share_key = crypto.new_key()
        self._seed = os.urandom(crypto.SEED_BYTES)
        self._peers: dict[int, wire.Advert] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (share of its seed, of its mask key)
        self._stage = 0

    @property
    def stage(self) -> str:
        """The request this client answers next (``done`` after its unmask answer)."""
        return _STAGES[self._stage]

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggRejected(
                f"participant {self.me} is at stage {self.stage} of the round; the {stage} request is refused"
            )

    def advertise(self) -> dict[str, str]:
        """The two public keys and the seed commitment, for the coordinator to pass on.

        Asked again before keys are shared, it answers the same (the coordinator may resend)."""
        if self._stage > 1:
            self._expect("advertise")
        self._stage = 1
        return self._advert().wire()

    def share_keys(self, public_keys: Mapping[Any, Any]) -> dict[str, str]:
        """Shamir shares of the seed and the mask key, sealed for each neighbour whose keys came."""
        self._expect("share_keys")
        what = f"the public keys sent to participant {self.me}"
        peers = {
            pid: wire.Advert.read(advert, f"{what}: participant {pid}")
            for pid, advert in wire.by_participant(public_keys, what).items()
        }
        outsiders = sorted(set(peers) - (self.neighbourhood - {self.me}))
        if outsiders:
            raise SecAggRejected(
                f"{what} name participants that are not its neighbours this round: {outsiders[:8]}"
            )
        holders = sorted({*peers, self.me})
        threshold = self.config.reconstruction_threshold
        if len(holders) < threshold:
            raise SecAggFailed(
                f"only {len(holders)} of participant {self.me}'s neighbourhood (itself included) advertised "
                f"keys; {threshold} are needed to hold its shares"
            )
        wire.distinct_keys({**peers, self.me: self._advert()}, what)
        keys = {
            pid: crypto.share_key(self._share_key, p.share_key, self.context, self.me, pid, sending=True)
            for pid, p in peers.items()
        }
        seed_shares = crypto.split_secret(self._seed, threshold, len(holders))
        key_shares = crypto.split_secret(crypto.private_raw(self._mask_key), threshold, len(holders))
        sealed: dict[str, str] = {}
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            if holder == self.me:
                self._held[self.me] = (seed_share, key_share)
                continue
            plaintext = seed_share + key_share[2:]
            sealed[str(holder)] = wire.b64(
                crypto.seal(keys[holder], self.context, self.me, holder, plaintext)
            )
        self._peers = peers
        self._stage = 2
        return sealed

    def masked_input(
        self, shares_for_me: Mapping[Any, Any], vector: np.ndarray, num_examples: int = 1
    ) -> bytes:
        """The packed masked vector: ``num_examples·q(vector) ‖ num_examples`` plus every mask.

        ``shares_for_me`` are the sealed shares the neighbours sent this client; it adds a
        pairwise mask with each of them and keeps their shares for the unmask request."""
        self._expect("masked_input")
        what = f"the shares sent to participant {self.me}"
        sealed = wire.by_participant(shares_for_me, what)
        strangers = sorted(set(sealed) - set(self._peers))
        if strangers:
            raise SecAggRejected(
                f"{what} come from participants whose keys it was not given: {strangers[:8]}"
            )
        held: dict[int, tuple[bytes, bytes]] = {}
        for src, value in sealed.items():
            blob = wire.unb64(value, crypto.SEALED_BYTES, f"{what}: the share from participant {src}")
            key = crypto.share_key(
                self._share_key, self._peers[src].share_key, self.context, self.me, src, sending=False
            )
            plaintext = crypto.unseal(key, self.context, src, self.me, blob)
            held[src] = (plaintext[:34], plaintext[:2] + plaintext[34:])
        threshold = self.config.reconstruction_threshold
        if len(held) + 1 < threshold:
            raise SecAggFailed(
                f"participant {self.me} received shares from {len(held)} neighbours; it needs at least "
                f"{threshold - 1} to hide its input among them"
            )
        values = check_vector(vector)
        examples = _examples(num_examples, self.config.max_examples)
        total = np.concatenate([quantize(values, self.config) * np.uint64(examples), [np.uint64(examples)]])
        count, bits = total.size, self.config.modulus_bits
        total = total + crypto.mask(self._seed, count, bits)
        for peer in sorted(held):
            seed = crypto.pairwise_seed(
                self._mask_key, self._peers[peer].mask_key, self.context, self.me, peer
            )
            pairwise = crypto.mask(seed, count, bits)
            total = total + pairwise if self.me < peer else total - pairwise
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)
        self._held.update(held)
        self._stage = 3
        return pack(total, self.config)

    def unmask(self, dropped: Sequence[object], survivors: Sequence[object]) -> dict[str, dict[str, str]]:
        """Shares of the survivors' seeds and of the dropped participants' mask keys, once.

        Never both for one participant: a participant in both lists, or this one among the
        dropped, is refused, and so is a second request (which could name other survivors)."""
        self._expect("unmask")
        gone = wire.ids(dropped, "the dropped participants")
        alive = wire.ids(survivors, "the surviving participants")
        both = sorted(set(gone) & set(alive))
        if both:
            raise SecAggRejected(
                f"the unmask request lists participants both as dropped and as surviving: {both[:8]}"
            )
        if self.me not in alive:
            raise SecAggRejected(
                f"the unmask request does not list participant {self.me} among the survivors"
            )
        threshold = self.config.reconstruction_threshold
        if len(alive) < threshold:
            raise SecAggRejected(
                f"the unmask request names {len(alive)} survivors; at least {threshold} must have sent inputs"
            )
        outsiders = sorted(set(gone + alive) - set(self.ids))
        if outsiders:
            raise SecAggRejected(f"the unmask request names participants outside this round: {outsiders[:8]}")
        self._stage = 4
        return {
            "seeds": {str(p): wire.b64(self._held[p][0]) for p in sorted(alive) if p in self._held},
            "keys": {str(p): wire.b64(self._held[p][1]) for p in sorted(gone) if p in self._held},
        }

    def _advert(self) -> wire.Advert:
        return wire.Advert(
            crypto.public_raw(self._mask_key),
            crypto.public_raw(self._share_key),
            crypto.commitment(self.context, self.me, self._seed),
        )


def _examples(value: object, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= int(value) <= cap:
        raise SecAggRejected(
            f"secure aggregation: num_examples must be an integer from 1 to {cap}, not {value!r}"
        )
    return int(value)
