"""The coordinator's side of one secure-aggregation round: route, collect, unmask, sum.

The server sees public keys, sealed shares it cannot open, masked vectors that look uniform,
and in the end shares of exactly one secret per participant: the self-mask seed of each
survivor, or the mask key of each participant that dropped before sending its input. From
them it learns the sum and nothing else. Each collection stage closes the moment the server
sends out what the next stage needs (``keys_for``, ``shares_for``, ``unmask_request``): a
late message is refused rather than changing the set of participants behind the server's back.

Everything a participant sends is checked before it is kept: the sender belongs to the stage,
speaks once, names exactly the participants it must (no share for someone else), and every
field has its exact size. A wrong share is caught when the secret it rebuilds does not match
its owner's advert (commitment or public key); the server then tries other subsets of the
shares, so one lying participant cannot spoil the round while enough honest shares remain.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation.secagg import crypto, wire
from federation.secagg.config import (
    MAX_VECTOR,
    SecAggConfig,
    SecAggFailed,
    SecAggRejected,
    check_context,
    neighbours,
)
from federation.secagg.encoding import F64, U64, dequantize_sum, pack, unpack

MAX_SUBSETS = 256  # share subsets tried per secret when a wrong share is among them
_PARTS = ("seeds", "keys")
_SNAPSHOT = ("adverts", "advertised", "sealed", "shared", "sum", "inputs", "survivors", "answers")


@dataclass(frozen=True)
class SecAggResult:
    """What the round revealed: ``Σ nᵢ·xᵢ`` over the survivors (each ``xᵢ`` clipped), ``Σ nᵢ``."""

    weighted_sum: F64
    num_examples: int
    survivors: list[int]
    dropped: list[int]

    def mean(self) -> F64:
        """The example-weighted mean of the survivors' clipped vectors."""
        return self.weighted_sum / self.num_examples


class SecAggServer:
    """One round's aggregation over ``participants`` and vectors of ``vector_length`` values."""

    def __init__(
        self, config: SecAggConfig, participants: Iterable[object], round_context: bytes, vector_length: int
    ) -> None:
        self.config = config
        self.ids = config.check_participants(participants)
        self.context = check_context(round_context)
        if (
            isinstance(vector_length, bool)
            or not isinstance(vector_length, int)
            or not 1 <= vector_length <= MAX_VECTOR
        ):
            raise SecAggRejected(f"secure aggregation: vector_length must be from 1 to {MAX_VECTOR}")
        self.count = vector_length + 1  # the example count rides in the last slot
        self.graph = neighbours(config, self.ids, self.context)
        self._adverts: dict[int, wire.Advert] = {}
        self._advertised: frozenset[int] | None = None  # U1, closed by keys_for
        self._sealed: dict[int, dict[int, str]] = {}
        self._shared: frozenset[int] | None = None  # U2, closed by shares_for
        self._sum: U64 = np.zeros(self.count, dtype=np.uint64)
        self._inputs: set[int] = set()
        self._survivors: frozenset[int] | None = None  # U3, closed by unmask_request
        self._answers: dict[int, tuple[dict[int, bytes], dict[int, bytes]]] = {}
        self._result: SecAggResult | None = None

    # -- stage 1: public keys ------------------------------------------------------------------

    def receive_keys(self, sender: object, advert: object) -> None:
        pid = self._sender(sender, self.ids, self._advertised is None, "keys", set(self._adverts))
        what = f"the keys of participant {pid}"
        keys = wire.Advert.read(advert, what)
        wire.distinct_keys({**self._adverts, pid: keys}, what)
        self._adverts[pid] = keys

    def keys_for(self, recipient: object) -> dict[str, dict[str, str]]:
        """The adverts of ``recipient``'s neighbours; the first call closes the key stage."""
        if self._advertised is None:
            self._advertised = self._enough(frozenset(self._adverts), "advertised keys")
        pid = self._member(recipient, self._advertised, "keys")
        return {str(p): self._adverts[p].wire() for p in sorted(self._holders(pid, self._advertised) - {pid})}

    # -- stage 2: sealed shares ----------------------------------------------------------------

    def receive_shares(self, sender: object, sealed: object) -> None:
        advertised = self._stage_set(self._advertised, "shares", "before the keys went out")
        pid = self._sender(sender, advertised, self._shared is None, "shares", set(self._sealed))
        what = f"the shares of participant {pid}"
        items = wire.by_participant(sealed, what)
        wire.exactly(items, self._holders(pid, advertised) - {pid}, what)
        self._sealed[pid] = {
            dst: wire.b64(wire.unb64(v, crypto.SEALED_BYTES, f"{what}: for participant {dst}"))
            for dst, v in items.items()
        }

    def shares_for(self, recipient: object) -> dict[str, str]:
        """The sealed shares for ``recipient``; the first call closes the share stage."""
        if self._shared is None:
            self._shared = self._enough(frozenset(self._sealed), "sent their shares")
        pid = self._member(recipient, self._shared, "shares")
        return {str(src): self._sealed[src][pid] for src in sorted(self._holders(pid, self._shared) - {pid})}

    # -- stage 3: masked inputs ----------------------------------------------------------------

    def receive_masked(self, sender: object, data: object) -> None:
        shared = self._stage_set(self._shared, "a masked input", "before the shares went out")
        pid = self._sender(sender, shared, self._survivors is None, "masked input", self._inputs)
        values = unpack(data, self.count, self.config, what=f"the masked input of participant {pid}")
        self._sum = self._reduce(self._sum + values)
        self._inputs.add(pid)

    def dropped(self) -> list[int]:
        """Participants that shared their keys but sent no masked input (so far, or in the end)."""
        return sorted((self._shared or frozenset()) - self._inputs)

    def unmask_request(self) -> dict[str, list[int]]:
        """``{"survivors", "dropped"}`` for every survivor; the first call closes the input stage."""
        self._stage_set(self._shared, "an unmask request", "before the masked inputs")
        if self._survivors is None:
            threshold = self.config.reconstruction_threshold
            if len(self._inputs) < threshold:
                raise SecAggFailed(
                    f"{len(self._inputs)} masked inputs arrived; at least {threshold} are needed to unmask"
                )
            self._survivors = frozenset(self._inputs)
        return {"survivors": sorted(self._survivors), "dropped": self.dropped()}

    # -- stage 4: shares of the secrets --------------------------------------------------------

    def receive_unmask(self, sender: object, reply: object) -> None:
        survivors = self._stage_set(self._survivors, "an unmask reply", "before the unmask request")
        pid = self._sender(sender, survivors, self._result is None, "unmask reply", set(self._answers))
        what = f"the unmask reply of participant {pid}"
        body = wire.fields(reply, ("seeds", "keys"), what)
        shared = self._shared or frozenset()
        held = self._holders(pid, shared)
        parts = []
        for name, owners in zip(_PARTS, (held & survivors, held - survivors), strict=True):
            items = wire.by_participant(body[name], f"{what}: {name}")
            wire.exactly(items, owners, f"{what}: {name}")
            parts.append(
                {o: self._share(o, pid, v, f"{what}: {name} of participant {o}") for o, v in items.items()}
            )
        self._answers[pid] = (parts[0], parts[1])

    def aggregate(self) -> SecAggResult:
        """Remove every mask and return the survivors' weighted sum and example count."""
        if self._result is not None:
            return self._result
        survivors = self._stage_set(self._survivors, "the aggregation", "before the unmask request")
        dropped = self.dropped()
        bits, total = self.config.modulus_bits, self._sum.copy()
        for owner in sorted(survivors):
            seed = self._rebuild(owner, 0, "self-mask seed")
            total = total - crypto.mask(seed, self.count, bits)
        for owner in dropped:
            key = crypto.load_private(self._rebuild(owner, 1, "mask key"))
            for peer in sorted(self._holders(owner, survivors) - {owner}):
                seed = crypto.pairwise_seed(key, self._adverts[peer].mask_key, self.context, owner, peer)
                pairwise = crypto.mask(seed, self.count, bits)
                # the survivor added the mask if its id was the lower one, and subtracted it if not
                total = total - pairwise if peer < owner else total + pairwise
        self._result = self._reveal(self._reduce(total), sorted(survivors), dropped)
        return self._result

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the server holds, as JSON-safe values, so a restarted coordinator resumes
        the round with the providers still holding theirs. It holds nothing the server may not
        know: public keys, shares sealed for others, the masked sum (no single masked input), and
        the shares returned for unmasking."""

        def ids(members: frozenset[int] | None) -> list[int] | None:
            return None if members is None else sorted(members)

        return {
            "adverts": {str(p): a.wire() for p, a in self._adverts.items()},
            "advertised": ids(self._advertised),
            "sealed": {str(p): {str(d): v for d, v in m.items()} for p, m in self._sealed.items()},
            "shared": ids(self._shared),
            "sum": wire.b64(pack(self._sum, self.config)),
            "inputs": sorted(self._inputs),
            "survivors": ids(self._survivors),
            "answers": {
                str(p): {
                    name: {str(o): wire.b64(v) for o, v in part.items()}
                    for name, part in zip(_PARTS, a, strict=True)
                }
                for p, a in self._answers.items()
            },
        }

    @classmethod
    def restore(
        cls,
        config: SecAggConfig,
        participants: Iterable[object],
        round_context: bytes,
        vector_length: int,
        snapshot: object,
    ) -> SecAggServer:
        """The server of :meth:`snapshot`, each part read back through the same checks."""
        server = cls(config, participants, round_context, vector_length)
        data = wire.fields(snapshot, _SNAPSHOT, "the secure-aggregation snapshot")

        def members(name: str) -> frozenset[int] | None:
            value = data[name]
            found = None if value is None else frozenset(wire.ids(value, f"the snapshot's {name}"))
            if found is not None and not found <= set(server.ids):
                raise SecAggRejected(f"the snapshot's {name} names participants outside this round")
            return found

        for pid, advert in wire.by_participant(data["adverts"], "the snapshot's adverts").items():
            server.receive_keys(pid, advert)
        server._advertised = members("advertised")
        for pid, sealed in wire.by_participant(data["sealed"], "the snapshot's shares").items():
            server.receive_shares(pid, sealed)
        server._shared = members("shared")
        server._sum = unpack(
            wire.unb64(data["sum"], server.count * config.width, "the snapshot's sum"),
            server.count,
            config,
            what="the snapshot's sum",
        )
        server._inputs = set(members("inputs") or ())
        server._survivors = members("survivors")
        nested = (
            (server._advertised or frozenset()) <= set(server._adverts)
            and (server._shared or frozenset()) <= set(server._sealed)
            and server._inputs <= (server._shared or frozenset())
            and server._survivors in (None, server._inputs)
        )
        if not nested:
            raise SecAggRejected("the snapshot's stages do not nest (keys, shares, inputs, survivors)")
        for pid, reply in wire.by_participant(data["answers"], "the snapshot's unmask replies").items():
            server.receive_unmask(pid, reply)
        return server

    # -- helpers -------------------------------------------------------------------------------

    def _reduce(self, values: U64) -> U64:
        bits = self.config.modulus_bits
        return values & np.uint64((1 << bits) - 1) if bits < 64 else values

    def _reveal(self, total: U64, survivors: list[int], dropped: list[int]) -> SecAggResult:
        examples = int(total[-1])
        most = len(survivors) * self.config.max_examples
        if not len(survivors) <= examples <= most:
            raise SecAggFailed(
                f"the unmasked example count is {examples}: outside what honest inputs give "
                f"({len(survivors)} to {most}); a participant sent a malformed input"
            )
        if int(total[:-1].max()) > examples * (self.config.quantization_range - 1):
            raise SecAggFailed(
                "the unmasked sum lies outside what honest inputs give: a participant sent a malformed input"
            )
        return SecAggResult(dequantize_sum(total[:-1], examples, self.config), examples, survivors, dropped)

    def _rebuild(self, owner: int, which: int, what: str) -> bytes:
        """The owner's secret from the shares that came in, checked against its advert."""
        shares = [answer[which][owner] for answer in self._answers.values() if owner in answer[which]]
        threshold = self.config.reconstruction_threshold
        if len(shares) < threshold:
            raise SecAggFailed(
                f"{len(shares)} shares of participant {owner}'s {what} arrived; {threshold} are needed"
            )
        advert = self._adverts[owner]
        for subset in itertools.islice(itertools.combinations(shares, threshold), MAX_SUBSETS):
            secret = crypto.combine_secret(list(subset))
            if which == 0 and crypto.commitment(self.context, owner, secret) == advert.seed_commitment:
                return secret
            if which == 1 and crypto.public_of(secret) == advert.mask_key:
                return secret
        raise SecAggFailed(
            f"the shares of participant {owner}'s {what} do not rebuild it: a participant sent a wrong share"
        )

    def _share(self, owner: int, holder: int, value: object, what: str) -> bytes:
        share = wire.unb64(value, crypto.SHARE_BYTES, what)
        index = sorted(self._holders(owner, self._advertised or frozenset())).index(holder) + 1
        if crypto.share_index(share) != index:
            raise SecAggRejected(f"{what} carries holder index {crypto.share_index(share)}, not {index}")
        return share

    def _holders(self, owner: int, among: frozenset[int]) -> frozenset[int]:
        return self.graph[owner] & among

    def _enough(self, members: frozenset[int], did: str) -> frozenset[int]:
        threshold = self.config.reconstruction_threshold
        for pid in sorted(members):
            count = len(self._holders(pid, members))
            if count < threshold:
                raise SecAggFailed(
                    f"only {count} of participant {pid}'s neighbourhood (itself included) {did}; "
                    f"{threshold} are needed"
                )
        return members

    def _member(self, value: object, members: frozenset[int], stage: str) -> int:
        pid = wire.participant(value, f"the recipient of the {stage}")
        if pid not in members:
            raise SecAggRejected(f"participant {pid} is not in the {stage} stage of this round")
        return pid

    @staticmethod
    def _stage_set(members: frozenset[int] | None, stage: str, early: str) -> frozenset[int]:
        if members is None:
            raise SecAggRejected(f"{stage} cannot come {early}")
        return members

    @staticmethod
    def _sender(value: object, members: Iterable[int], open_: bool, stage: str, done: set[int]) -> int:
        pid = wire.participant(value, f"the sender of the {stage}")
        if pid not in set(members):
            raise SecAggRejected(f"participant {pid} may not send its {stage} in this round")
        if not open_:
            raise SecAggRejected(f"the {stage} of participant {pid} came after that stage closed")
        if pid in done:
            raise SecAggRejected(f"participant {pid} already sent its {stage}")
        return pid
