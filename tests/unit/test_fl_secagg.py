"""Secure aggregation, message by message: the sum comes out, drop-outs are recovered, one vector does not.

Every message crosses a JSON round trip (and RFC 8785 canonicalisation) on its way, as it does
between nodes; vectors have about the FL CNN's 9,930 values.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from typing import Any

import numpy as np
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from federation.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggFailed,
    SecAggRejected,
    SecAggResult,
    SecAggServer,
    crypto,
    expansion,
    from_vector,
    neighbours,
    to_vector,
)
from federation.secagg.encoding import pack, quantize, unpack
from kernel.errors import InvalidInput

LENGTH = 9_930
IDS = [1, 2, 3, 4, 5]
CONFIG = SecAggConfig(num_shares=5, reconstruction_threshold=3)


def wire(message: Any) -> Any:
    """The message as the peer receives it: canonical JSON text, parsed again."""
    return json.loads(rfc8785.dumps(message))


class Round:
    """One round driven by hand, so each test chooses who drops out when."""

    def __init__(
        self,
        config: SecAggConfig = CONFIG,
        ids: list[int] = IDS,
        context: bytes = b"federation-7:round-1",
        length: int = LENGTH,
    ) -> None:
        self.config, self.ids, self.length = config, ids, length
        self.server = SecAggServer(config, ids, context, length)
        self.clients = {i: SecAggClient(config, i, ids, context) for i in ids}
        self.sent: dict[int, bytes] = {}

    def keys(self, absent: Collection[int] = ()) -> None:
        for i, client in self.clients.items():
            if i not in absent:
                self.server.receive_keys(i, wire(client.advertise()))

    def shares(self, absent: Collection[int] = ()) -> None:
        for i, client in self.clients.items():
            if i not in absent and client.stage == "share_keys":
                self.server.receive_shares(i, wire(client.share_keys(wire(self.server.keys_for(i)))))

    def inputs(
        self,
        vectors: dict[int, np.ndarray],
        examples: dict[int, int] | None = None,
        absent: Collection[int] = (),
    ) -> None:
        for i, client in self.clients.items():
            if i not in absent and client.stage == "masked_input":
                masked = client.masked_input(
                    wire(self.server.shares_for(i)), vectors[i], (examples or {}).get(i, 1)
                )
                self.sent[i] = masked
                self.server.receive_masked(i, masked)

    def unmask(self, absent: Collection[int] = ()) -> dict[str, list[int]]:
        request = wire(self.server.unmask_request())
        for i in request["survivors"]:
            if i not in absent:
                self.server.receive_unmask(i, wire(self.clients[i].unmask(**request)))
        return dict(request)

    def run(
        self,
        vectors: dict[int, np.ndarray],
        examples: dict[int, int] | None = None,
        *,
        no_input: Collection[int] = (),
        no_unmask: Collection[int] = (),
    ) -> SecAggResult:
        self.keys()
        self.shares()
        self.inputs(vectors, examples, no_input)
        self.unmask(no_unmask)
        return self.server.aggregate()


def vectors(
    ids: list[int] = IDS, length: int = LENGTH, seed: int = 0, scale: float = 1.0
) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0.0, scale, length) for i in ids}


def clipped(vector: np.ndarray, config: SecAggConfig = CONFIG) -> np.ndarray:
    return np.clip(vector, -config.clipping_range, config.clipping_range)


def test_five_clients_without_drop_outs_give_the_sum_within_the_quantization_error() -> None:
    inputs = vectors(scale=4.0)  # some values beyond ±8: they are clipped, as documented
    result = Round().run(inputs)
    expected = sum(clipped(v) for v in inputs.values())
    error = float(np.abs(result.weighted_sum - expected).max())
    assert result.num_examples == 5 and result.survivors == IDS and result.dropped == []
    assert error <= 5 * CONFIG.step, f"error {error:.3g} over 5 steps of {CONFIG.step:.3g}"
    assert error > 0  # it is a quantized sum, not the plain one passed through
    assert bool((np.abs(inputs[1]) > 8).any())


def test_the_weighted_mean_weighs_by_examples_and_counts_them_exactly() -> None:
    inputs, examples = vectors(), {1: 17, 2: 300, 3: 45, 4: 1_000, 5: 2}
    result = Round().run(inputs, examples)
    total = sum(examples.values())
    expected = sum(examples[i] * clipped(inputs[i]) for i in IDS) / total
    assert result.num_examples == total
    assert float(np.abs(result.mean() - expected).max()) <= CONFIG.step


@pytest.mark.parametrize("gone", [{4}, {2, 5}], ids=["one", "two"])
def test_drop_outs_after_their_masked_input_are_recovered(gone: set[int]) -> None:
    inputs = vectors(seed=1)
    result = Round().run(inputs, no_unmask=gone)
    expected = sum(clipped(v) for v in inputs.values())  # their inputs still count
    assert result.survivors == IDS and result.dropped == []
    assert float(np.abs(result.weighted_sum - expected).max()) <= 5 * CONFIG.step


@pytest.mark.parametrize("gone", [{3}, {1, 5}], ids=["one", "two"])
def test_drop_outs_before_their_masked_input_leave_the_survivors_sum(gone: set[int]) -> None:
    inputs = vectors(seed=2)
    rnd = Round()
    result = rnd.run(inputs, no_input=gone)
    alive = [i for i in IDS if i not in gone]
    expected = sum(clipped(inputs[i]) for i in alive)
    assert result.survivors == alive and result.dropped == sorted(gone)
    assert rnd.server.dropped() == sorted(gone)
    assert float(np.abs(result.weighted_sum - expected).max()) <= len(alive) * CONFIG.step


def test_drop_outs_at_every_stage_in_one_round() -> None:
    ids = list(range(1, 10))
    config = SecAggConfig(num_shares=9, reconstruction_threshold=5)
    inputs = vectors(ids, 2_000, seed=3)
    rnd = Round(config, ids, length=2_000)
    rnd.keys(absent={9})  # never advertised
    rnd.shares(absent={8})  # advertised, never shared
    rnd.inputs(inputs, absent={7})  # shared, never sent its input
    request = rnd.unmask(absent={6})  # sent its input, gone before unmasking
    result = rnd.server.aggregate()
    assert request == {"survivors": [1, 2, 3, 4, 5, 6], "dropped": [7]}
    expected = sum(clipped(inputs[i], config) for i in range(1, 7))
    assert float(np.abs(result.weighted_sum - expected).max()) <= 6 * config.step


def test_too_few_masked_inputs_fail_with_the_counts() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    rnd.inputs(vectors(), absent={1, 2, 3})
    with pytest.raises(SecAggFailed, match=r"2 masked inputs arrived; at least 3 are needed"):
        rnd.server.unmask_request()


def test_too_few_unmask_replies_fail_with_the_counts() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    rnd.inputs(vectors())
    rnd.unmask(absent={1, 2, 3})
    with pytest.raises(
        SecAggFailed, match=r"2 shares of participant 1's self-mask seed arrived; 3 are needed"
    ):
        rnd.server.aggregate()


def test_too_few_key_adverts_fail_before_any_secret_is_shared() -> None:
    rnd = Round()
    rnd.keys(absent={1, 2, 3})
    with pytest.raises(SecAggFailed, match=r"only 2 of participant 4's neighbourhood .* 3 are needed"):
        rnd.server.keys_for(4)


def _uniform_p(values: np.ndarray, bits: int) -> float:
    top = (values >> np.uint64(bits - 6)).astype(np.int64)  # 64 bins on the top six bits
    return float(stats.chisquare(np.bincount(top, minlength=64)).pvalue)


def test_a_masked_vector_looks_uniform_whatever_the_input() -> None:
    """The server's view of one vector: the lowest and the highest input give masked values
    indistinguishable from each other and from uniform, while the same test tells the bare
    quantized input apart at once (so it has the power to fail)."""
    low = {i: np.full(LENGTH, -8.0) for i in IDS}
    high = {i: np.full(LENGTH, 8.0) for i in IDS}
    seen = []
    for inputs in (low, high):
        rnd = Round()
        rnd.run(inputs)
        seen.append(unpack(rnd.sent[1], LENGTH + 1, CONFIG, what="masked")[:-1])
    bits = CONFIG.modulus_bits
    for masked in seen:
        assert _uniform_p(masked, bits) > 1e-4
    assert float(stats.ks_2samp(seen[0], seen[1]).pvalue) > 1e-4
    bare = quantize(vectors()[1], CONFIG)  # what the client would send unmasked
    assert _uniform_p(bare, bits) < 1e-10


def test_fewer_than_threshold_shares_do_not_rebuild_a_seed() -> None:
    seed = b"\x5a" * 32
    shares = crypto.split_secret(seed, 3, 5)
    assert crypto.combine_secret(shares[:3]) == seed
    assert crypto.combine_secret(shares[2:]) == seed
    for pair in ([0, 1], [1, 4], [2, 3]):
        assert crypto.combine_secret([shares[i] for i in pair]) != seed


def test_a_tampered_share_fails_its_tag() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    sealed = wire(rnd.server.shares_for(2))
    blob = bytearray(base64.b64decode(sealed["1"]))
    blob[20] ^= 0x01
    sealed["1"] = base64.b64encode(bytes(blob)).decode()
    with pytest.raises(
        SecAggRejected, match="share participant 1 sent to participant 2 fails its authentication tag"
    ):
        rnd.clients[2].masked_input(sealed, np.zeros(LENGTH))
    assert rnd.clients[2].stage == "masked_input"  # refused whole: nothing kept, it can still answer


def test_a_share_routed_to_another_recipient_fails_its_tag() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    for_two, for_three = wire(rnd.server.shares_for(2)), wire(rnd.server.shares_for(3))
    for_three["1"] = for_two["1"]
    with pytest.raises(SecAggRejected, match="not meant for this recipient"):
        rnd.clients[3].masked_input(for_three, np.zeros(LENGTH))


def test_a_participant_speaking_for_another_is_refused() -> None:
    rnd = Round()
    rnd.keys()
    with pytest.raises(SecAggRejected, match="participant 1 already sent its keys"):
        rnd.server.receive_keys(1, wire(rnd.clients[2].advertise()))
    with pytest.raises(SecAggRejected, match="participant 9 may not send its keys"):
        rnd.server.receive_keys(9, wire(rnd.clients[2].advertise()))
    sealed = wire(rnd.clients[1].share_keys(wire(rnd.server.keys_for(1))))
    sealed["1"] = sealed.pop("2")  # a share "for itself" instead of one for participant 2
    with pytest.raises(SecAggRejected, match=r"names participants it may not: \[1\]"):
        rnd.server.receive_shares(1, sealed)


def test_an_unmask_reply_with_a_share_for_someone_else_is_refused() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    rnd.inputs(vectors(), absent={5})
    request = wire(rnd.server.unmask_request())
    reply = wire(rnd.clients[1].unmask(**request))
    reply["keys"]["2"] = reply["seeds"]["2"]  # the mask key of a survivor: never to be revealed
    with pytest.raises(SecAggRejected, match=r"keys names participants it may not: \[2\]"):
        rnd.server.receive_unmask(1, reply)
    reply, other = wire(rnd.clients[2].unmask(**request)), wire(rnd.clients[3].unmask(**request))
    reply["seeds"]["1"] = other["seeds"]["1"]  # participant 3's share of 1's seed, passed off as 2's
    with pytest.raises(SecAggRejected, match="carries holder index 3, not 2"):
        rnd.server.receive_unmask(2, reply)


def test_masks_differ_between_rounds_even_under_the_same_keys() -> None:
    a, b = crypto.new_key(), crypto.new_key()
    pub_b = crypto.public_raw(b)
    one = crypto.pairwise_seed(a, pub_b, b"fed:round-1", 1, 2)
    assert one == crypto.pairwise_seed(b, crypto.public_raw(a), b"fed:round-1", 2, 1)  # both ends agree
    assert one != crypto.pairwise_seed(a, pub_b, b"fed:round-2", 1, 2)
    assert not np.array_equal(crypto.mask(one, 100, 48), crypto.mask(b"\x00" * 32, 100, 48))
    key = crypto.share_key(a, pub_b, b"fed:round-1", 1, 2, sending=True)
    sealed = crypto.seal(key, b"fed:round-1", 1, 2, b"x" * 66)
    assert crypto.unseal(key, b"fed:round-1", 1, 2, sealed) == b"x" * 66
    with pytest.raises(SecAggRejected):
        crypto.unseal(key, b"fed:round-2", 1, 2, sealed)
    inputs = vectors(seed=4)
    first, second = Round(context=b"fed:round-1"), Round(context=b"fed:round-2")
    first.run(inputs)
    second.run(inputs)
    assert first.sent[1] != second.sent[1]


def test_the_masked_vector_size_and_every_message_are_small() -> None:
    config = SecAggConfig.fitted(5, 3, max_examples=2_048)
    rnd = Round(config)
    advert = len(rfc8785.dumps(rnd.clients[1].advertise()))
    rnd.keys()
    rnd.shares()
    rnd.inputs(vectors(seed=5))
    masked = len(rnd.sent[1])
    ratio = expansion(config, LENGTH)
    message = (
        f"SecAgg expansion {ratio:.4f} at {config.modulus_bits} modulus bits: {masked} bytes for "
        f"{LENGTH} float32 values ({4 * LENGTH} bytes)"
    )
    assert masked == round(ratio * 4 * LENGTH), message
    assert ratio == pytest.approx(1.25, abs=1e-3), message
    assert expansion(CONFIG, LENGTH) == pytest.approx(1.5, abs=1e-3), message
    sizes = {
        "advert": advert,
        "keys_for": len(rfc8785.dumps(rnd.server.keys_for(1))),
        "shares_for": len(rfc8785.dumps(rnd.server.shares_for(1))),
        "unmask": len(rfc8785.dumps(rnd.clients[1].unmask(**rnd.server.unmask_request()))),
    }
    assert max(sizes.values()) < 1_024, f"JSON message bytes per participant of 5: {sizes}"


def test_a_sparse_ring_for_many_participants() -> None:
    ids = list(range(20))
    config = SecAggConfig(num_shares=7, reconstruction_threshold=4)
    graph = neighbours(config, ids, b"fed:round-3")
    assert all(len(n) == 7 and i in n for i, n in graph.items())
    assert all(i in graph[j] for i, n in graph.items() for j in n)  # symmetric
    assert graph != neighbours(config, ids, b"fed:round-4")  # a new ring each round
    inputs = vectors(ids, 500, seed=6)
    rnd = Round(config, ids, b"fed:round-3", 500)
    result = rnd.run(inputs, no_input={3, 11}, no_unmask={0})
    alive = [i for i in ids if i not in (3, 11)]
    expected = sum(clipped(inputs[i], config) for i in alive)
    assert result.dropped == [3, 11]
    assert float(np.abs(result.weighted_sum - expected).max()) <= len(alive) * config.step


def test_weights_flatten_in_model_order_and_back() -> None:
    weights = {"conv.weight": np.ones((2, 3), np.float32), "conv.bias": np.arange(3, dtype=np.float32)}
    flat = to_vector(weights)
    assert flat.tolist() == [1.0] * 6 + [0.0, 1.0, 2.0]
    back = from_vector(flat, weights)
    assert list(back) == list(weights) and all(back[k].dtype == np.float32 for k in back)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    with pytest.raises(SecAggRejected, match="8 values cannot fill tensors of 9"):
        from_vector(flat[:8], weights)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"num_shares": 5, "reconstruction_threshold": 2}, "more than half of num_shares 5"),
        (
            {"num_shares": 5, "reconstruction_threshold": 6},
            "reconstruction_threshold must be an integer from 2 to 5",
        ),
        ({"num_shares": 5, "reconstruction_threshold": True}, "reconstruction_threshold must be an integer"),
        ({"num_shares": 3, "reconstruction_threshold": 2, "clipping_range": float("nan")}, "clipping_range"),
        (
            {"num_shares": 3, "reconstruction_threshold": 2, "modulus_bits": 32},
            "does not fit in modulus_bits 32",
        ),
        ({"num_shares": 3, "reconstruction_threshold": 2, "quantization_range": 2**53}, "quantization_range"),
        ({"num_shares": 3, "reconstruction_threshold": 2, "seed": 1}, r"unknown \['seed'\]"),
        ({"reconstruction_threshold": 2}, r"missing \['num_shares'\]"),
    ],
)
def test_a_configuration_from_the_wire_is_held_to_the_rules(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(SecAggRejected, match=reason) as caught:
        SecAggConfig.from_wire(fields)
    assert isinstance(caught.value, InvalidInput) and caught.value.status == 400


def test_the_participants_must_fit_the_configuration() -> None:
    assert SecAggConfig.from_wire(CONFIG.wire()) == CONFIG
    with pytest.raises(SecAggRejected, match="num_shares must be odd"):
        SecAggConfig(num_shares=4, reconstruction_threshold=3).check_participants(range(9))
    with pytest.raises(SecAggRejected, match="exceeds the 3 holders"):
        SecAggConfig(num_shares=5, reconstruction_threshold=4).check_participants([1, 2, 3])
    with pytest.raises(SecAggRejected, match="needs 2 to 1024 participants, not 1"):
        CONFIG.check_participants([1])
    with pytest.raises(SecAggRejected, match="does not fit in modulus_bits 40"):
        SecAggConfig.fitted(5, 3, max_examples=2_048).check_participants(range(200))


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 64), st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50))
def test_packed_values_come_back_exactly(bits: int, raw: list[int]) -> None:
    config = SecAggConfig(
        num_shares=3, reconstruction_threshold=2, modulus_bits=bits, quantization_range=3, max_examples=1
    )
    values = np.array([v % (1 << bits) for v in raw], dtype=np.uint64)
    packed = pack(values, config)
    assert len(packed) == len(raw) * config.width
    assert np.array_equal(unpack(packed, len(raw), config, what="v"), values)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=1, max_size=200))
def test_quantization_stays_in_range_and_within_one_step(raw: list[float]) -> None:
    values = np.array(raw)
    q = quantize(values, CONFIG)
    assert int(q.max()) < CONFIG.quantization_range
    back = q.astype(np.float64) * CONFIG.step - CONFIG.clipping_range
    assert float(np.abs(back - clipped(values)).max()) <= CONFIG.step * (1 + 1e-9)


def test_stochastic_rounding_is_unbiased() -> None:
    """A value a quarter step above a level comes back a quarter step above it on average
    (rounding to the nearest level would lose that quarter in every round's mean)."""
    value = -CONFIG.clipping_range + 0.25 * CONFIG.step
    q = quantize(np.full(100_000, value), CONFIG)
    assert set(np.unique(q).tolist()) == {0, 1}
    assert abs(float(q.mean()) - 0.25) < 0.01


@pytest.mark.parametrize("stage", ["keys", "shares", "inputs", "unmask"])
def test_a_restarted_coordinator_resumes_from_its_snapshot(stage: str) -> None:
    """The server's state survives a JSON round trip at each stage; the providers keep theirs."""
    inputs, context = vectors(seed=7), b"federation-7:round-2"
    rnd = Round(context=context)

    def restart() -> None:
        saved = wire(rnd.server.snapshot())
        rnd.server = SecAggServer.restore(CONFIG, IDS, context, LENGTH, saved)

    rnd.keys()
    if stage == "keys":
        restart()
    rnd.shares()
    if stage == "shares":
        restart()
    rnd.inputs(inputs, absent={5})
    if stage == "inputs":
        restart()
    request = wire(rnd.server.unmask_request())
    for i in (1, 2, 3):
        rnd.server.receive_unmask(i, wire(rnd.clients[i].unmask(**request)))
    if stage == "unmask":
        restart()
    rnd.server.receive_unmask(4, wire(rnd.clients[4].unmask(**request)))
    result = rnd.server.aggregate()
    expected = sum(clipped(inputs[i]) for i in (1, 2, 3, 4))
    assert result.dropped == [5]
    assert float(np.abs(result.weighted_sum - expected).max()) <= 4 * CONFIG.step


def test_a_snapshot_that_does_not_fit_is_refused() -> None:
    rnd = Round()
    rnd.keys()
    rnd.shares()
    saved = wire(rnd.server.snapshot())
    for broken, reason in (
        ({**saved, "inputs": [1]}, "stages do not nest"),
        ({**saved, "adverts": {k: v for k, v in saved["adverts"].items() if k != "3"}}, "stages do not nest"),
        ({**saved, "shared": [1, 2, 99]}, "outside this round"),
        ({**saved, "sum": "AAAA"}, "the snapshot's sum must be base64"),
        ({k: v for k, v in saved.items() if k != "answers"}, r"missing \['answers'\]"),
    ):
        with pytest.raises(SecAggRejected, match=reason):
            SecAggServer.restore(CONFIG, IDS, b"federation-7:round-1", LENGTH, broken)
