"""The demo's Dataspace Protocol chapter: a connector that is not an Agora node.

Gamma Research runs another connector (:mod:`node.plain_peer`: DSP 2025-1 and DCP only, its
own P-256 key and did:web, no chain). Acme's operator adds it by its DID; it reads Acme's
catalog in the DSP context alone, negotiates by echoing an offer, and pulls a model over
``HttpData-PULL``. Its agreement is valid under DSP and enforced by Acme's node (a use is
counted), without the co-signed on-chain record two Agora nodes add.
"""

from __future__ import annotations

import hashlib

from kernel.client import NodeClient
from kernel.errors import AgoraError
from node.demo_kit import say, step
from node.plain_peer import PlainPeer

AGORA_NAME = "https://w3id.org/agora/ns#name"  # Agora's term, as a plain connector reads it


def plain_dsp_peer(acme: NodeClient, acme_url: str, number: int) -> int:
    """Step ``number`` of the story; returns the next step's number."""
    step(number, "Gamma Research runs another DSP connector (DSP + DCP only, no chain) and gets a model")
    with PlainPeer("Gamma Research") as gamma:
        peer = acme.post_json(
            "/api/v1/participants", {"url": gamma.url, "did": gamma.did, "name": gamma.name}
        )
        say(f"$ agora peers add {gamma.url} --did {gamma.did} --name 'Gamma Research'")
        say(f"  → {peer['label']}: a DSP connector (not an Agora node), DSP base {peer['dsp_url']}")
        for row in acme.get("/api/v1/participants"):
            marker = "self" if row["is_self"] else "peer"
            kind = "Agora node" if row["kind"] == "agora" else "DSP connector"
            say(f"  {marker:5} {kind:13} {row['label']}")
        provider = gamma.discover(acme_url)
        catalog = gamma.catalog(provider)
        say(
            f"Gamma: GET /.well-known/dspace-version → DSP base {provider['dsp']}; "
            f"POST /catalog/request → {len(catalog['dataset'])} dataset(s), context {catalog['@context']}"
        )
        model = next((d for d in catalog["dataset"] if d.get(AGORA_NAME) == "digits-logreg"), None)
        if model is None:
            raise AgoraError("Acme's catalog for Gamma lacks the digits-logreg model")
        agreement = gamma.negotiate(provider, model)
        say(
            f"Gamma: ContractRequestMessage (its offer {model['hasPolicy'][0]['@id']}) → agreement "
            f"{agreement['@id'][:18]}… from {agreement['assigner'][:34]}…, verified, FINALIZED"
        )
        data = gamma.transfer(provider, agreement["@id"])
        registered = acme.get(f"/api/v1/offerings/{model['@id'].removeprefix('urn:uuid:')}")
        digest = hashlib.sha256(data).hexdigest()
        same = "identical to" if registered["sha256"].removeprefix("sha256:") == digest else "DIFFERENT from"
        say(f"Gamma: TransferRequestMessage → 201 REQUESTED, a start message, a pull → {len(data)} bytes,")
        say(f"  {same} what Acme registered")
        if same != "identical to":
            raise AgoraError("the model Gamma received differs from the registered one")
    record = acme.get(f"/api/v1/agreements/{agreement['@id']}")
    say(
        f"Acme's record: uses {record['uses']} of {record['max_uses'] or 'unlimited'}, "
        f"on chain: {record['tx_hash'] or 'no (a DSP connector: valid under DSP, enforced by the node)'}"
    )
    return number + 1
