"""Secure aggregation under attack: hostile providers send junk or lies, a hostile coordinator asks
for what it should not have.

Channels, as the messages flow: a provider's keys, its sealed shares, its masked input and its
unmask reply reach the coordinator; the coordinator's routed keys, routed shares and unmask
request reach a provider. For each, a battery of malformed or lying messages: every one must be
refused with a one-line reason (an ``InvalidInput``, a 4xx) and change nothing, so the honest
round that follows still gives the right sum. Counted per channel and printed: messages tried,
refused, and anything else (an exception that is not a refusal would be a 5xx).

Against the coordinator, the measure is secrets collected: for one provider it may obtain
shares of its self-mask seed or of its mask key, never ``t`` of both (either together with
the masked input reveals the vector). Every way of telling the providers who dropped is tried.
The limit is shown too: one provider colluding with an active coordinator breaks that.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from federation.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggFailed,
    SecAggRejected,
    SecAggServer,
    advert_statement,
    crypto,
)
from kernel.errors import InvalidInput

IDS = [1, 2, 3, 4, 5]
CONFIG = SecAggConfig(num_shares=5, reconstruction_threshold=3, modulus_bits=44, max_examples=64)
LENGTH = 1_000
CONTEXT = b"federation-9:round-4"
FIGURES: dict[str, dict[str, int]] = {}


def wire(message: Any) -> Any:
    return json.loads(json.dumps(message))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inputs(seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0.0, 0.5, LENGTH) for i in IDS}


def tally(channel: str, attempts: list[Callable[[], object]]) -> None:
    """Run every attempt; each must be refused as bad input. Record the figures per channel."""
    refused = other = 0
    for attempt in attempts:
        try:
            attempt()
        except InvalidInput:
            refused += 1
        except Exception:  # anything else would reach the caller as an internal error
            other += 1
    FIGURES[channel] = {"tried": len(attempts), "refused": refused, "other": other}
    assert refused == len(attempts), f"{channel}: {FIGURES[channel]}"


def b64_junk(size: int) -> list[object]:
    good = b64(b"\x01" * size)
    return [
        None,
        7,
        [good],
        "",
        good[:-4],
        good + "AAAA",
        good.replace("A", "*", 1),
        " " + good[1:],
        good[:-1] + "\n",
        "é" * len(good),
        b64(b"\x01" * (size - 1)),
        b64(b"\x01" * (size + 1)),
        "A" * 10_000_000,
    ]


def id_junk() -> list[object]:
    return [True, -1, 65_536, "01", " 1", "1.0", 1.0, None, "x", [1], 9, "٣"]


def test_junk_from_providers_is_refused_and_the_round_still_sums() -> None:
    server = SecAggServer(CONFIG, IDS, CONTEXT, LENGTH)
    clients = {i: SecAggClient(CONFIG, i, IDS, CONTEXT) for i in IDS}
    adverts = {i: wire(c.advertise()) for i, c in clients.items()}

    early = [
        lambda: server.receive_shares(1, {}),
        lambda: server.receive_masked(1, b""),
        server.unmask_request,
    ]
    keys: list[Callable[[], object]] = [lambda s=s: server.receive_keys(s, adverts[1]) for s in id_junk()]
    keys += [lambda a=a: server.receive_keys(1, a) for a in (None, [], "x", {}, {**adverts[1], "extra": "1"})]
    for field in ("mask_key", "share_key", "seed_commitment"):
        keys += [lambda f=field, v=v: server.receive_keys(1, {**adverts[1], f: v}) for v in b64_junk(32)]
        keys.append(lambda f=field: server.receive_keys(1, {k: v for k, v in adverts[1].items() if k != f}))
    keys.append(lambda: server.receive_keys(1, {**adverts[1], "share_key": adverts[1]["mask_key"]}))
    tally("provider keys", early + keys)
    server.receive_keys(1, adverts[1])
    copied = [
        lambda: server.receive_keys(1, adverts[1]),  # a second time
        lambda: server.receive_keys(2, adverts[1]),  # another's keys
        lambda: server.receive_keys(2, {**adverts[2], "mask_key": adverts[1]["share_key"]}),
    ]
    tally("provider keys, copied", copied)
    for i in IDS[1:]:
        server.receive_keys(i, adverts[i])

    sealed = {i: wire(c.share_keys(wire(server.keys_for(i)))) for i, c in clients.items()}
    mine = sealed[1]
    shares: list[Callable[[], object]] = [lambda: server.receive_keys(1, adverts[1])]  # stage closed
    shares += [lambda s=s: server.receive_shares(s, mine) for s in id_junk()]
    shares += [lambda v=v: server.receive_shares(1, v) for v in (None, [], "x", {}, {"2": mine["2"]})]
    shares += [lambda v=v: server.receive_shares(1, {**mine, "2": v}) for v in b64_junk(crypto.SEALED_BYTES)]
    shares += [
        lambda: server.receive_shares(1, {**mine, "1": mine["2"]}),  # one for itself
        lambda: server.receive_shares(1, {**mine, "9": mine["2"]}),  # one for a stranger
        lambda: server.receive_shares(1, {**mine, 2: mine["2"]}),  # "2" and 2: the same recipient twice
        lambda: server.receive_shares(1, {str(i): mine["2"] for i in range(2_000)}),
    ]
    tally("provider shares", shares)
    for i in IDS:
        server.receive_shares(i, sealed[i])

    values = inputs()
    masked = {i: c.masked_input(wire(server.shares_for(i)), values[i], 10 + i) for i, c in clients.items()}
    width = CONFIG.width
    over = bytearray(masked[1])
    over[width - 1] |= 0xF0  # a value of more than 44 bits
    blobs: list[Callable[[], object]] = [lambda: server.receive_shares(1, mine)]  # stage closed
    blobs += [lambda s=s: server.receive_masked(s, masked[1]) for s in id_junk()]
    blobs += [
        lambda v=v: server.receive_masked(1, v)
        for v in (
            None,
            "x",
            b64(masked[1]),
            list(masked[1]),
            b"",
            masked[1][:-1],
            masked[1] + b"\x00",
            bytes(over),
        )
    ]
    blobs.append(lambda: server.receive_masked(1, bytes(100 * 1024 * 1024)))
    tally("provider masked input", blobs)
    for i in IDS:
        server.receive_masked(i, masked[i])

    request = wire(server.unmask_request())
    replies = {i: wire(clients[i].unmask(**request)) for i in IDS}
    good = replies[1]
    unmask: list[Callable[[], object]] = [
        lambda: server.receive_masked(1, masked[1]),  # a second time, and the stage is closed
        lambda: server.receive_keys(3, adverts[3]),
    ]
    unmask += [lambda s=s: server.receive_unmask(s, good) for s in id_junk()]
    unmask += [lambda v=v: server.receive_unmask(1, v) for v in (None, [], {}, {"seeds": good["seeds"]})]
    unmask += [
        lambda: server.receive_unmask(1, {**good, "extra": {}}),
        lambda: server.receive_unmask(1, {**good, "keys": {"2": good["seeds"]["2"]}}),  # a survivor's key
        lambda: server.receive_unmask(1, {**good, "seeds": {**good["seeds"], "9": good["seeds"]["2"]}}),
        lambda: server.receive_unmask(1, {**good, "seeds": {"2": good["seeds"]["2"]}}),  # some missing
        lambda: server.receive_unmask(1, {**good, "seeds": {**good["seeds"], "2": replies[2]["seeds"]["2"]}}),
    ]
    unmask += [
        lambda v=v: server.receive_unmask(1, {**good, "seeds": {**good["seeds"], "3": v}})
        for v in b64_junk(crypto.SHARE_BYTES)
    ]
    tally("provider unmask reply", unmask)
    for i in IDS:
        server.receive_unmask(i, replies[i])
    tally("provider unmask reply, again", [lambda: server.receive_unmask(1, good)])

    result = server.aggregate()
    total = sum(10 + i for i in IDS)
    expected = sum((10 + i) * values[i] for i in IDS)
    assert result.num_examples == total
    assert float(np.abs(result.weighted_sum - expected).max()) <= total * CONFIG.step
    print("\nrefusals per channel, provider -> coordinator:", FIGURES)


def prepared(
    config: SecAggConfig = CONFIG, ids: list[int] = IDS
) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    server = SecAggServer(config, ids, CONTEXT, LENGTH)
    clients = {i: SecAggClient(config, i, ids, CONTEXT) for i in ids}
    for i, c in clients.items():
        server.receive_keys(i, wire(c.advertise()))
    return server, clients


def test_junk_from_the_coordinator_is_refused_and_the_provider_still_answers() -> None:
    ids = list(range(1, 10))
    ring = SecAggConfig(num_shares=5, reconstruction_threshold=3, modulus_bits=44, max_examples=64)
    server, clients = prepared(ring, ids)
    target = clients[1]
    keys = wire(server.keys_for(1))
    stranger = next(i for i in ids if i not in target.neighbourhood)
    some = next(iter(keys))
    own = wire(target.advertise())
    zero = {**keys[some], "mask_key": b64(bytes(32))}  # a low-order point
    routed_keys: list[Callable[[], object]] = [lambda: target.masked_input({}, np.zeros(LENGTH))]  # too early
    routed_keys += [
        lambda v=v: target.share_keys(v)
        for v in (
            None,
            [],
            {some: None},
            {**keys, str(stranger): wire(clients[stranger].advertise())},  # not a neighbour this round
            {**keys, "1": own},  # its own id
            {**keys, some: own},  # its own keys, reflected
            {**keys, some: keys[next(k for k in keys if k != some)]},  # one advert for two neighbours
            {**keys, some: zero},
        )
    ]
    tally("coordinator routed keys", routed_keys)
    with pytest.raises(SecAggFailed, match=r"only 2 of participant 1's neighbourhood"):
        target.share_keys({some: keys[some]})
    for i, c in clients.items():
        server.receive_shares(i, wire(c.share_keys(wire(server.keys_for(i)))))

    mine = wire(server.shares_for(1))
    other = next(iter(mine))
    flipped = bytearray(base64.b64decode(mine[other]))
    flipped[-1] ^= 1
    vector = np.zeros(LENGTH)
    routed: list[Callable[[], object]] = [
        lambda v=v: target.masked_input(v, vector)
        for v in (
            None,
            {**mine, str(stranger): mine[other]},
            {**mine, other: b64(bytes(flipped))},
            {**mine, other: mine[other][:-4]},
        )
    ]
    routed += [
        lambda v=v: target.masked_input(mine, v)
        for v in (
            np.full(LENGTH, np.nan),
            np.zeros((10, 100)),
            np.array(["1"] * LENGTH),
            np.zeros(0),
            [0.0] * LENGTH,
        )
    ]
    routed += [lambda n=n: target.masked_input(mine, vector, n) for n in (0, -1, True, 65, 1.5, "3")]  # type: ignore[arg-type]
    tally("coordinator routed shares", routed)
    for i, c in clients.items():
        server.receive_masked(i, c.masked_input(wire(server.shares_for(i)), vector + i, 1))

    request = wire(server.unmask_request())
    survivors, others = request["survivors"], [i for i in ids if i != 1]
    asks: list[Callable[[], object]] = [
        lambda d=d, s=s: target.unmask(d, s)
        for d, s in (
            ([2], survivors),  # both dropped and surviving
            ([1], others),  # the asked provider itself as dropped
            ([], [1, 2]),  # fewer survivors than the threshold
            ([], [*survivors, 99]),  # a stranger
            ("1", survivors),
            ([], [True, 2, 3]),
            ([], [1, 1, 2, 3]),
        )
    ]
    tally("coordinator unmask request", asks)
    reply = target.unmask(**request)
    tally("coordinator unmask request, again", [lambda: target.unmask(**request)])
    server.receive_unmask(1, wire(reply))
    for i in ids[1:]:
        server.receive_unmask(i, wire(clients[i].unmask(**request)))
    expected = sum(np.clip(vector + i, -8, 8) for i in ids)
    assert float(np.abs(server.aggregate().weighted_sum - expected).max()) <= len(ids) * ring.step
    print("\nrefusals per channel, coordinator -> provider:", FIGURES)


def _split_brain(told_dropped: set[int], colluders: set[int]) -> tuple[int, int]:
    """Shares of provider 1's seed and mask key a coordinator collects when it tells the
    providers in ``told_dropped`` that 1 dropped and the others that it survived."""
    server, clients = prepared()
    for i, c in clients.items():
        server.receive_shares(i, wire(c.share_keys(wire(server.keys_for(i)))))
    for i, c in clients.items():
        c.masked_input(wire(server.shares_for(i)), np.zeros(LENGTH))
    seeds = keys = 0
    for i, c in clients.items():
        if i in colluders:  # hands over whatever it holds
            seeds, keys = seeds + 1, keys + 1
            continue
        lists = ([1], [j for j in IDS if j != 1]) if i in told_dropped else ([], IDS)
        try:
            reply = c.unmask(*lists)
        except SecAggRejected:
            continue
        seeds += "1" in reply["seeds"]
        keys += "1" in reply["keys"]
    return seeds, keys


def test_an_active_coordinator_never_collects_both_secrets_of_one_provider() -> None:
    t = CONFIG.reconstruction_threshold
    collected = [_split_brain(set(told), set()) for n in range(5) for told in itertools.combinations(IDS, n)]
    both = sum(1 for seeds, keys in collected if seeds >= t and keys >= t)
    FIGURES["coordinator split survivor lists"] = {"tried": len(collected), "both secrets": both}
    assert len(collected) == 31 and both == 0, FIGURES
    assert max(k for _, k in collected) >= t  # it can have the key alone, which the masked seed still hides
    with pytest.raises(SecAggRejected, match="more than half"):
        SecAggConfig(num_shares=5, reconstruction_threshold=2)  # where splitting would have worked


def test_one_colluding_provider_lets_an_active_coordinator_rebuild_a_victims_secrets() -> None:
    """The stated limit (SECURITY.md): no signed consistency round, so collusion breaks the split."""
    t = CONFIG.reconstruction_threshold
    seeds, keys = _split_brain({4, 5}, colluders={2})
    assert seeds >= t and keys >= t


def test_a_wrong_share_is_outvoted_while_enough_honest_ones_remain() -> None:
    values = inputs(1)
    for responders, outcome in (([1, 2, 3, 4, 5], "sum"), ([2, 3, 4], "fail")):
        server, clients = prepared()
        for i, c in clients.items():
            server.receive_shares(i, wire(c.share_keys(wire(server.keys_for(i)))))
        for i, c in clients.items():
            server.receive_masked(i, c.masked_input(wire(server.shares_for(i)), values[i]))
        request = wire(server.unmask_request())
        for i in responders:
            reply = wire(clients[i].unmask(**request))
            if i == 2:  # right index, wrong share of provider 1's seed
                share = base64.b64decode(reply["seeds"]["1"])
                reply["seeds"]["1"] = b64(share[:2] + bytes(32))
            server.receive_unmask(i, reply)
        if outcome == "sum":
            expected = sum(np.clip(v, -8, 8) for v in values.values())
            assert float(np.abs(server.aggregate().weighted_sum - expected).max()) <= 5 * CONFIG.step
        else:
            with pytest.raises(SecAggFailed, match="participant 1's self-mask seed do not rebuild it"):
                server.aggregate()


@pytest.mark.parametrize("lie", ["other seed", "replayed input"])
def test_an_input_that_does_not_match_its_shares_fails_the_round_instead_of_the_model(lie: str) -> None:
    server, clients = prepared()
    for i, c in clients.items():
        server.receive_shares(i, wire(c.share_keys(wire(server.keys_for(i)))))
    if lie == "other seed":
        clients[3]._seed = bytes(32)  # masks with a seed other than the one it shared and committed to
    sent = {i: c.masked_input(wire(server.shares_for(i)), np.zeros(LENGTH)) for i, c in clients.items()}
    if lie == "replayed input":
        sent[3] = sent[1]  # provider 3 passes off provider 1's masked vector as its own
    for i in IDS:
        server.receive_masked(i, sent[i])
    request = wire(server.unmask_request())
    for i in IDS:
        server.receive_unmask(i, wire(clients[i].unmask(**request)))
    with pytest.raises(SecAggFailed, match="outside what honest inputs give"):
        server.aggregate()


def test_the_advert_statement_binds_round_participant_and_every_key() -> None:
    advert = wire(SecAggClient(CONFIG, 1, IDS, CONTEXT).advertise())
    base = advert_statement(CONTEXT, 1, advert)
    variants = {
        advert_statement(CONTEXT + b"x", 1, advert),
        advert_statement(CONTEXT, 2, advert),
        *(
            advert_statement(CONTEXT, 1, {**advert, f: b64(crypto.public_raw(crypto.new_key()))})
            for f in advert
        ),
    }
    assert base not in variants and len(variants) == 2 + len(advert)
    with pytest.raises(SecAggRejected):
        advert_statement(CONTEXT, 1, {**advert, "mask_key": "x"})
