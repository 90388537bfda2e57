"""Trust in peers inside one node (in-process, real SQLite): who is listed, how names read,
where the dispatcher and duties may send, what the participants API refuses to call, and
which tokens name a sender (a replayed one, one for another node, one for another body, one
from a stranger, one from a host whose DID document lists a peer's key)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from joserfc.jwk import ECKey
from sqlmodel import Session, select

from connector.dsp.identity import DID_CONTEXT, NodeIdentity, did_for_url, participant_id, read_did_document
from connector.models import Agreement, OutboundMessage, Participant, UsageRecord
from connector.services import labels
from kernel.db import transaction
from tests import dsp_peer
from tests.security.hostile import DidHost, InternalService

DSP = ["https://w3id.org/dspace/2025/1/context.jsonld"]
ASK = json.dumps({"@context": DSP, "@type": "CatalogRequestMessage"}).encode()


@pytest.fixture
def internal() -> Iterator[InternalService]:
    service = InternalService()
    yield service
    service.stop()


def _participant(
    name: str, *, trusted: bool = True, is_self: bool = False, endpoint: str = ""
) -> Participant:
    address = Account.create().address
    return Participant(
        address=address,
        name=name,
        endpoint=endpoint or f"http://{name.lower()}",
        trusted=trusted,
        is_self=is_self,
    )


def test_a_shared_name_shows_the_addresses_and_an_untrusted_one_is_marked() -> None:
    me = _participant("Acme Wind", is_self=True)
    twin = _participant("acme wind ", trusted=True)
    stranger = _participant("Gamma Labs", trusted=False)
    partner = _participant("Beta Analytics")
    names = labels([me, twin, stranger, partner])
    assert names[me.address] == f"Acme Wind ({me.address[:6]}…{me.address[-4:]})"
    assert names[twin.address] == f"acme wind  ({twin.address[:6]}…{twin.address[-4:]})"
    assert (
        names[stranger.address] == f"Gamma Labs ({stranger.address[:6]}…{stranger.address[-4:]}, not a peer)"
    )
    assert names[partner.address] == "Beta Analytics"
    assert len(set(names.values())) == 4


def test_copies_from_providers_that_are_not_peers_are_dropped(runtime: Any) -> None:
    """A node upgraded from when registered senders became peers: their crawled copies go."""
    former = _participant("Registered Only", trusted=False)
    with transaction(runtime.engine) as session:
        session.add(former)
    page = {"dataset": [{"@id": "urn:uuid:11111111-2222-3333-4444-555555555555", "dct:title": "Leaked"}]}
    runtime.catalog.store_peer_page(former.address, page)
    runtime.catalog.record_crawl(former.address, former.endpoint, ok=True)
    assert [i["title"] for i in runtime.catalog.search(_filters())["items"]] == ["Leaked"]
    assert runtime.crawler.crawl_all() == {}, "an untrusted participant is not crawled"
    assert runtime.catalog.search(_filters())["items"] == []
    assert runtime.catalog.freshness() == []


def _filters() -> Any:
    from marketplace.catalog import CatalogFilters

    return CatalogFilters()


def test_the_dispatcher_sends_only_to_the_recipients_verified_origin(
    runtime: Any, internal: InternalService
) -> None:
    peer = _participant("Peer", endpoint="http://127.0.0.1:9")
    stranger = Account.create().address
    with transaction(runtime.engine) as session:
        session.add(peer)
        session.add(
            OutboundMessage(recipient=peer.address, url=f"{internal.url}/dsp/negotiations/x/events", body={})
        )
        session.add(
            OutboundMessage(recipient=stranger, url=f"{internal.url}/dsp/negotiations/y/events", body={})
        )
    assert runtime.dispatcher.deliver_due() == 0
    with Session(runtime.engine) as session:
        rows = {m.recipient: m for m in session.exec(select(OutboundMessage)).all()}
    assert rows[peer.address].status == "FAILED"
    assert "is refused: it is not on" in rows[peer.address].last_error
    assert "http://127.0.0.1:9" in rows[peer.address].last_error
    assert rows[stranger].status == "FAILED" and "has no verified endpoint" in rows[stranger].last_error
    assert internal.hits == []


def _agreement(runtime: Any, target: str) -> tuple[str, str]:
    agreement_id = "0x" + secrets.token_hex(32)
    consumer = Account.create().address
    policy = {"template": "usage-notification", "params": {"target": target}}
    with transaction(runtime.engine) as session:
        session.add(
            Agreement(
                id=agreement_id,
                negotiation_id="urn:uuid:n",
                role="provider",
                provider=runtime.address,
                consumer=consumer,
                offering_id="o",
                terms={"purpose": "research", "accessMode": "download", "policy": policy},
                terms_hash="00" * 32,
                provider_signature="0x",
                chain_id=1,
                registry_address="0x" + "00" * 20,
                tx_hash="0x" + "11" * 32,
            )
        )
    return agreement_id, consumer


def test_a_notify_duty_is_sent_only_to_this_nodes_own_origin(runtime: Any, internal: InternalService) -> None:
    elsewhere, consumer = _agreement(runtime, f"{internal.url}/collect")
    grant = runtime.agreements.use(elsewhere, consumer=consumer, mode="download")
    assert grant.uses == 1
    own, own_consumer = _agreement(runtime, f"{runtime.settings.public_url}/dsp/notifications")
    runtime.agreements.use(own, consumer=own_consumer, mode="download")
    with Session(runtime.engine) as session:
        queued = session.exec(select(OutboundMessage)).all()
        logged = {u.agreement_id: u.reason for u in session.exec(select(UsageRecord)).all()}
    assert [m.url for m in queued] == [f"{runtime.settings.public_url}/dsp/notifications"]
    assert "notification not sent: the notify duty's target" in logged[elsewhere]
    assert f"{internal.url}/collect is refused" in logged[elsewhere]
    assert "not sent" not in logged[own]
    assert internal.hits == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254", "link-local address"),
        ("http://2852039166:80", "the cloud metadata address"),
        ("http://10.0.0.5:8000", "private address (AGORA_OUTBOUND_ALLOW_PRIVATE)"),
        ("http://[fd00::5]:8000", "private address"),
        ("http://0.0.0.0:8000", "unspecified address"),
    ],
)
def test_adding_a_peer_at_an_internal_address_is_refused(
    client: Any, auth: Any, url: str, reason: str
) -> None:
    r = client.post("/api/v1/participants", json={"url": url}, headers=auth("admin"))
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"] and r.json()["errors"][0]["path"] == "url"
    assert [p for p in client.get("/api/v1/participants", headers=auth()).json() if not p["is_self"]] == []


def test_a_transfer_request_with_a_callback_elsewhere_is_refused_and_recorded(
    runtime: Any, internal: InternalService
) -> None:
    from connector.models import TransferProcess
    from connector.transfers import TransferRefused

    agreement_id, consumer = _agreement(runtime, f"{runtime.settings.public_url}/dsp/notifications")
    body = {
        "@type": "TransferRequestMessage",
        "consumerPid": "urn:uuid:c-1",
        "agreementId": agreement_id,
        "format": "HttpData-PULL",
        "callbackAddress": f"{internal.url}/dsp",
    }
    with pytest.raises(TransferRefused, match=f"callbackAddress {internal.url}/dsp is refused"):
        runtime.transfers.on_request(consumer, "http://consumer.example:8000", body)
    with Session(runtime.engine) as session:
        row = session.exec(select(TransferProcess)).one()
        agreement = session.get(Agreement, agreement_id)
    assert row.state == "TERMINATED" and "is refused" in row.reason
    assert agreement is not None and agreement.uses == 0, "a refused request takes no use"
    assert internal.hits == []


# Tokens ----------------------------------------------------------------------------------


def _peer(runtime: Any, url: str = "http://127.0.0.1:9") -> NodeIdentity:
    """A peer as ``agora peers add`` records it (its DID and the keys of its document)."""
    me = dsp_peer.identity(url, Account.create().key, "Peer")
    keys = read_did_document(me.did, me.document()).keys
    with transaction(runtime.engine) as session:
        session.add(
            Participant(
                address=me.address,
                name="Peer",
                endpoint=url,
                trusted=True,
                did=me.did,
                kind="agora",
                dsp_url=f"{url}/dsp",
                keys=keys,
            )
        )
    return me


CATALOG = "/dsp/catalog/request"


def _ask(client: Any, headers: dict[str, str], body: bytes = ASK) -> Any:
    return client.post(CATALOG, content=body, headers=headers)


def _refusal(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["@type"] == "CatalogError" and error["code"] == code, error
    return " ".join(error["reason"])


def test_a_replayed_token_is_refused(runtime: Any, client: Any) -> None:
    peer = _peer(runtime)
    headers = dsp_peer.headers(peer, runtime.settings.public_url, ASK, CATALOG)
    assert _ask(client, headers).status_code == 200
    reason = _refusal(_ask(client, headers), 409, "replayed-message")
    assert "was already received" in reason and peer.address in reason
    fresh = dsp_peer.headers(peer, runtime.settings.public_url, ASK, CATALOG)
    assert _ask(client, fresh).status_code == 200, "a new token (another jti) is taken"


def test_a_token_for_another_node_is_refused(runtime: Any, client: Any) -> None:
    peer = _peer(runtime)
    elsewhere = "http://127.0.0.1:8001"
    reason = _refusal(_ask(client, dsp_peer.headers(peer, elsewhere, ASK, CATALOG)), 401, "token-rejected")
    assert (
        reason
        == f"the token is meant for {did_for_url(elsewhere)}, not for this node ({runtime.identity.did})"
    )


def test_a_token_bound_to_another_body_is_refused(runtime: Any, client: Any) -> None:
    peer = _peer(runtime)
    signed = dsp_peer.headers(peer, runtime.settings.public_url, ASK, CATALOG)
    other = json.dumps({"@context": DSP, "@type": "CatalogRequestMessage", "filter": [{"x": 1}]}).encode()
    reason = _refusal(_ask(client, signed, other), 401, "token-rejected")
    assert reason == "the request's body is not the one the token was signed for"


def test_a_stranger_is_refused_without_a_request_to_its_host(
    runtime: Any, client: Any, internal: InternalService
) -> None:
    """The token names a DID whose host is the internal service: nothing asks for its document."""
    stranger = dsp_peer.stranger(internal.url)
    reason = _refusal(
        _ask(client, dsp_peer.headers(stranger, runtime.settings.public_url, ASK, CATALOG)), 403, "not-a-peer"
    )
    assert reason.startswith(f"{stranger.did} is not a peer of this node")
    with Session(runtime.engine) as session:
        assert session.exec(select(Participant).where(Participant.did == stranger.did)).first() is None
    assert internal.hits == []


def test_a_document_listing_a_peers_key_does_not_make_its_host_that_peer(
    runtime: Any, client: Any, auth: Any
) -> None:
    """A stranger's DID document lists a peer's public key and address beside its own P-256
    key: it can sign only with its own key, so it may at most be a participant of its own."""
    peer = _peer(runtime)
    host = DidHost()
    try:
        did = did_for_url(host.url)
        own = ECKey.generate_key("P-256", private=True)
        mine = {k: v for k, v in own.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
        borrowed = peer.document()["verificationMethod"][0]
        host.document = {
            "@context": DID_CONTEXT,
            "id": did,
            "verificationMethod": [
                {"id": f"{did}#key-1", "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": mine},
                {**borrowed, "id": f"{did}#org", "controller": did},
            ],
        }
        added = client.post("/api/v1/participants", json={"url": host.url}, headers=auth("admin"))
        print(f"\nadding the stranger: {added.status_code} {added.text[:300]}")
        kept = client.get("/api/v1/participants", headers=auth()).json()
        rows = {p["address"]: p for p in kept}
        assert (rows[peer.address]["did"], rows[peer.address]["endpoint"]) == (peer.did, peer.url), (
            "the peer's record is not the stranger's to change"
        )
        if added.status_code == 201:
            assert added.json()["address"] == participant_id(did) != peer.address
            assert rows[participant_id(did)]["did"] == did
        else:
            assert added.status_code == 400, added.text
        # signing with its own key, it is never taken for the peer
        answer = _ask(
            client, dsp_peer.key_headers(did, f"{did}#key-1", own, runtime.settings.public_url, ASK)
        )
        assert answer.status_code in (200, 401, 403), answer.text
        with Session(runtime.engine) as session:
            sender = session.exec(select(Participant).where(Participant.did == did)).first()
        assert sender is None or sender.address != peer.address
        # and the peer itself still is
        assert (
            _ask(client, dsp_peer.headers(peer, runtime.settings.public_url, ASK, CATALOG)).status_code == 200
        )
    finally:
        host.stop()
