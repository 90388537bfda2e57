"""Secure aggregation (SecAgg+): the coordinator learns the sum of the providers' updates, not one.

Message-level only: no network, no database. The round protocol carries these messages in
signed envelopes; every message is JSON-safe (objects keyed by id strings, base64, ints, lists)
and small, except the masked vector, which is packed bytes sent as a binary body.

One round, after Bell et al. 2020 (SecAgg+), with the coordinator as server::

    server = SecAggServer(config, ids, round_context, vector_length)     # coordinator
    client = SecAggClient(config, my_id, ids, round_context)             # each provider

    1 advertise   client.advertise()                  → server.receive_keys(id, advert)
    2 share keys  client.share_keys(server.keys_for(id))      → server.receive_shares(id, sealed)
    3 masked input client.masked_input(server.shares_for(id), vector, num_examples)
                                                      → server.receive_masked(id, packed bytes)
    4 unmask      client.unmask(**server.unmask_request()) → server.receive_unmask(id, reply)
    5             server.aggregate() → SecAggResult(weighted_sum, num_examples, survivors, dropped)

Each provider draws two X25519 key pairs (pairwise masks, share encryption) and a self-mask seed
``b``, splits ``b`` and its mask key into Shamir shares for its neighbours (a threshold ``t`` of
them rebuilds either), seals each neighbour's shares with AES-GCM under an HKDF key from their
X25519 secret, and masks its quantized vector with ChaCha20 streams: ``+PRG(b)`` and ``±PRG(s_uv)``
for each neighbour ``v``, modulo ``2**modulus_bits``. Pairwise masks cancel in the sum; the
server removes the self masks of the survivors and the pairwise masks of the drop-outs from the
shares the survivors return (each gives, per participant, a share of ``b`` or of the mask key,
never both, and only once; with ``t`` above half the neighbourhood no coordinator can collect
``t`` of both for one participant).

Weighting: a provider with ``n`` examples masks ``n·q(x) ‖ n`` (``q`` the quantization of its
vector clipped to ±clipping_range, ``n ≤ max_examples``), so the coordinator gets
``Σ nᵢ·xᵢ`` and ``Σ nᵢ`` and divides (:meth:`SecAggResult.mean`). The quantization error of the
weighted mean is at most one step ``2·clipping_range / (quantization_range - 1)`` per value;
``modulus_bits`` must hold ``participants · max_examples · (quantization_range - 1)`` (checked).

Threat model: providers may drop out at any stage and may send malformed or lying messages;
the coordinator may be curious and may act within the protocol (drop, reorder, replay or alter
what it routes; ask for shares it should not have). Alone, it learns the sum and nothing more.
Not covered: a coordinator that substitutes public keys (each advert must reach the other
providers signed by its own provider, over :func:`advert_statement`); a coordinator acting
together with one or more providers (a passive one with up to ``t - 1`` learns only the sum,
but an active one with a colluder can tell the others different survivor lists and rebuild
both secrets of a victim: SecAgg's signed consistency round is not implemented); and a
provider's choice of its own input (secure aggregation cannot check what it hides: a poisoned
update within the clipping range passes).
"""

from federation.secagg.client import SecAggClient
from federation.secagg.config import SecAggConfig, SecAggFailed, SecAggRejected, neighbours
from federation.secagg.encoding import expansion, from_vector, to_vector
from federation.secagg.server import SecAggResult, SecAggServer
from federation.secagg.wire import advert_statement

__all__ = [
    "SecAggClient",
    "SecAggConfig",
    "SecAggFailed",
    "SecAggRejected",
    "SecAggResult",
    "SecAggServer",
    "advert_statement",
    "expansion",
    "from_vector",
    "neighbours",
    "to_vector",
]
