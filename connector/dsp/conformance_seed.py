"""What the Eclipse DSP TCK expects a connector under test to hold before it starts.

The TCK never tells the connector what a case is about: it names a dataset, an offer or an
agreement the connector must already know, by the ids of its sample configuration
(``config/tck/sample.tck.properties``): datasets ``CAT0101``, ``CAT0102`` (``CAT0103``
must not exist) and ``ACN0101`` … ``ACN0304`` that its consumer negotiates for, agreements
``ATP0101`` … ``ATP0306`` its consumer asks transfers under, and agreements ``ATPC0101``
… ``ATPC0306`` under which this node, as consumer, asks the TCK's provider for transfers
(the TCK never negotiated them). :func:`seed` writes them once, idempotently: each dataset a
small CSV offered for download to anyone (``provide-access``), each provider agreement
final, for the test connector, on ``CAT0101``'s bytes, with no limit of uses; each consumer
agreement final with the test connector as provider, named by the TCK's id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.models import Agreement
from kernel.canonical import canonical_hash
from kernel.db import transaction, utcnow
from kernel.errors import NotFound
from marketplace.catalog import dataset_iri
from marketplace.schemas import OfferingMetadata

if TYPE_CHECKING:
    from connector.dsp.gate import TestPeer
    from node.runtime import Runtime

ACTOR = "conformance"
PURPOSE = "unspecified"  # what a request naming no purpose asks for (connector.negotiation.provider)
POLICY: dict[str, Any] = {"template": "provide-access"}


def _ids(prefix: str, groups: dict[int, int]) -> list[str]:
    """``prefix`` + 0x0y for each group x and its cases 1..n (``{1: 4}`` -> 0101 … 0104)."""
    return [
        f"{prefix}{group:02d}{case:02d}" for group, count in groups.items() for case in range(1, count + 1)
    ]


CATALOG_DATASETS = ["CAT0101", "CAT0102"]
CN_DATASETS = _ids("ACN", {1: 4, 2: 7, 3: 4})
CN_CONSUMER_DATASETS = _ids("ACNC", {1: 4, 2: 6, 3: 6})  # the TCK's datasets, not this node's
TP_AGREEMENTS = _ids("ATP", {1: 5, 2: 5, 3: 6})
TP_CONSUMER_AGREEMENTS = _ids("ATPC", {1: 5, 2: 5, 3: 6})
TRANSFERRED = "CAT0101"  # the dataset every provider agreement is on


def seed(runtime: Runtime, peer: TestPeer) -> None:
    """Write the datasets and agreements the TCK names, those not there yet."""
    for dataset in [*CATALOG_DATASETS, *CN_DATASETS]:
        _dataset(runtime, dataset)
    terms = runtime.offerings.terms(TRANSFERRED)
    with transaction(runtime.engine) as session:
        for agreement_id in TP_AGREEMENTS:
            if session.get(Agreement, agreement_id) is None:
                session.add(_provider_agreement(agreement_id, runtime.address, peer.address, terms))
        for agreement_id in TP_CONSUMER_AGREEMENTS:
            if session.get(Agreement, agreement_id) is None:
                session.add(_consumer_agreement(agreement_id, peer.address, runtime.address))


def _dataset(runtime: Runtime, dataset_id: str) -> None:
    try:
        runtime.offerings.get(dataset_id)
        return
    except NotFound:
        pass
    metadata = OfferingMetadata(
        title=f"DSP TCK dataset {dataset_id}",
        name=dataset_id.lower(),
        description="seeded for the Eclipse DSP TCK (the node's conformance profile)",
        media_type="text/csv",
        access_modes=["download"],
        policy=POLICY,
    )
    with runtime.store.stage() as staged:
        staged.write(f"id,dataset\n1,{dataset_id}\n".encode())
        runtime.offerings.register(staged, metadata, ACTOR, offering_id=dataset_id)


def _provider_agreement(agreement_id: str, me: str, peer: str, offering: dict[str, Any]) -> Agreement:
    terms = {
        "agreement": agreement_id,
        "dataset": dataset_iri(TRANSFERRED),
        "offering": TRANSFERRED,
        "version": offering["version"],
        "sha256": offering["sha256"],
        "size": offering["size"],
        "provider": me,
        "consumer": peer,
        "purpose": PURPOSE,
        "accessMode": "download",
        "policy": POLICY,
        "issued": utcnow().isoformat(),
        "validUntil": 0,
    }
    return _agreement(agreement_id, "provider", me, peer, TRANSFERRED, terms)


def _consumer_agreement(agreement_id: str, peer: str, me: str) -> Agreement:
    terms = {
        "agreement": agreement_id,
        "dataset": agreement_id,
        "offering": agreement_id,
        "provider": peer,
        "consumer": me,
        "purpose": PURPOSE,
        "accessMode": "download",
        "policy": None,
        "issued": utcnow().isoformat(),
        "validUntil": 0,
    }
    row = _agreement(agreement_id, "consumer", peer, me, agreement_id, terms)
    row.peer_agreement_id = agreement_id
    return row


def _agreement(
    agreement_id: str, role: str, provider: str, consumer: str, offering_id: str, terms: dict[str, Any]
) -> Agreement:
    return Agreement(
        id=agreement_id,
        negotiation_id=ACTOR,
        role=role,
        provider=provider,
        consumer=consumer,
        offering_id=offering_id,
        terms=terms,
        terms_hash=canonical_hash(terms),
        valid_until=0,
        provider_signature="",
        chain_id=0,
        registry_address="",
        finalized=True,
        max_uses=None,
    )
