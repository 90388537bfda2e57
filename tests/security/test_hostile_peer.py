"""A hostile organisation on the shared chain against two honest nodes, all real processes.

Acme Wind (a provider that answers registered participants, ``AGORA_ACCEPT_REGISTERED_
PARTICIPANTS=true``) and Beta Analytics (a consumer with default settings and tight outbound
limits) are honest. The hostile node registers itself on the same chain under Beta's name
and sits behind a front (:mod:`tests.security.hostile`) that alters its replies and DID
document and signs the messages it makes up with the hostile organisation's key. It
tries to get listed without being added, to point callbacks, data addresses and its stated
endpoint at an internal service, to redirect the crawler there, and to drown or stall the
crawler. The internal service counts every request: none may reach it, and every refusal
must say why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.dsp.identity import did_for_url
from marketplace.policy.odrl import ACTIONS
from tests import dsp_peer, services
from tests.security.hostile import HostileFront, InternalService

pytestmark = pytest.mark.slow
DSP = ["https://w3id.org/dspace/2025/1/context.jsonld"]


@dataclass
class World:
    acme: services.Org
    beta: services.Org
    hostile: services.Org
    front: HostileFront
    internal: InternalService
    key: bytes  # the hostile organisation's key

    def signed(self, to: services.Org, path: str, body: dict[str, Any]) -> httpx.Response:
        """A protocol message from the hostile organisation (its token, for ``to``), posted
        straight to ``to``."""
        return dsp_peer.post(self.front.identity, to.node.url, path, body)


def reason(response: httpx.Response) -> str:
    """The reason of a DSP error message (a binding route's refusal)."""
    return " ".join(response.json()["reason"])


def transfer_while(world: World, mode: str) -> tuple[dict[str, Any], httpx.Response]:
    """Beta transfers under its agreement with the hostile node while its front is in ``mode``."""
    beta = world.beta
    agreement = next(
        a for a in beta.api("GET", "/agreements").json() if a["provider"] == world.hostile.address
    )
    world.front.mode = mode
    try:
        return agreement, beta.api("POST", "/transfers", json={"agreement_id": agreement["id"]})
    finally:
        world.front.mode = "pass"


def catalog(org: services.Org) -> list[dict[str, Any]]:
    return list(org.api("GET", "/catalog", params={"limit": 200}).json()["items"])


def participants(org: services.Org) -> dict[str, dict[str, Any]]:
    return {p["address"]: p for p in org.api("GET", "/participants").json()}


def crawl_error(world: World) -> str:
    """Beta's last crawl error for the hostile node ("" while it crawls fine)."""
    peers = httpx.get(f"{world.beta.node.url}/health").json()["peers"]
    return next((p["last_error"] or "" for p in peers if p["provider"] == world.hostile.address), "")


def upload(org: services.Org, tmp: Path, name: str, policy: dict[str, Any], **meta: Any) -> str:
    source = tmp / f"{name}.csv"
    source.write_text("t,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(200)))
    metadata = {"title": name, "name": name, "access_modes": ["download"], "policy": policy, **meta}
    with source.open("rb") as f:
        r = org.api(
            "POST", "/offerings", data={"metadata": json.dumps(metadata)}, files={"file": (source.name, f)}
        )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def request_message(offering_id: str, callback: str, pid: str) -> dict[str, Any]:
    return {
        "@context": DSP,
        "@type": "ContractRequestMessage",
        "consumerPid": pid,
        "callbackAddress": callback,
        "offer": {
            "@type": "Offer",
            "@id": "urn:x",
            "target": f"urn:uuid:{offering_id}",
            "permission": [
                {
                    "action": ACTIONS["download"],
                    "constraint": [
                        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": "research"}
                    ],
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from contracts.devchain import DevChainServer

    root = tmp_path_factory.mktemp("hostile")
    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    internal = InternalService()
    front = HostileFront(b"", "", target=internal.url)
    env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
        "AGORA_CATALOG_CRAWL_INTERVAL": "0.5",
    }
    nodes = [
        services.start_node(
            root / "acme", name="Acme Wind", AGORA_ACCEPT_REGISTERED_PARTICIPANTS="true", **env
        ),
        services.start_node(
            root / "beta",
            name="Beta Analytics",
            AGORA_OUTBOUND_READ_TIMEOUT="2",
            AGORA_OUTBOUND_DEADLINE="5",
            AGORA_OUTBOUND_MAX_RESPONSE_BYTES="1MiB",
            **env,
        ),
        # the hostile organisation claims Beta's name; peers reach it through its front
        services.start_node(root / "hostile", name="Beta Analytics", AGORA_PUBLIC_URL=front.url, **env),
    ]
    try:
        acme, beta, hostile = (services.Org(n) for n in nodes)
        front.key, front.address, front.upstream = hostile.node.org_key(), hostile.address, hostile.node.url
        work = root / "data"
        work.mkdir()
        upload(acme, work, "open", {"template": "provide-access"})
        partners = {
            "permissions": [
                {
                    "action": "use",
                    "constraints": [
                        {
                            "leftOperand": "participantName",
                            "operator": "isAnyOf",
                            "rightOperand": ["Beta Analytics"],
                        }
                    ],
                }
            ]
        }
        upload(acme, work, "partners", partners)
        upload(acme, work, "manual", {"template": "provide-access"}, approval="manual")
        bait = upload(hostile, work, "bait", {"template": "provide-access"})
        assert acme.api("POST", "/participants", json={"url": beta.node.url}).status_code == 201
        assert beta.api("POST", "/participants", json={"url": acme.node.url}).status_code == 201
        # the hostile node registers itself on chain with its first anchored offering
        services.wait_until(
            lambda: hostile.api("GET", f"/offerings/{bait}").json()["anchor"]["status"] == "ANCHORED",
            "the hostile node's registration and first anchor",
        )
        yield World(acme, beta, hostile, front, internal, key=front.key)
    finally:
        for node in nodes:
            node.stop()
        front.stop()
        internal.stop()
        chain.stop()


def test_registration_on_the_chain_makes_no_one_a_peer(world: World) -> None:
    refused = world.signed(
        world.beta, "/dsp/catalog/request", {"@context": DSP, "@type": "CatalogRequestMessage"}
    )
    assert refused.status_code == 403 and refused.json()["code"] == "not-a-peer"
    assert reason(refused) == (
        f"{did_for_url(world.front.url)} is not a peer of this node; "
        "the operator adds peers with agora peers add"
    )
    offering = next(i["offering_id"] for i in catalog(world.acme) if i["name"] == "open")
    negotiation = world.signed(
        world.beta,
        "/dsp/negotiations/request",
        request_message(offering, f"{world.front.url}/dsp", "urn:uuid:h-1"),
    )
    assert negotiation.status_code == 403 and "not a peer of this node" in reason(negotiation)
    assert world.hostile.address not in participants(world.beta), "a refused sender leaves no record"
    # Beta's crawler works (it lists Acme's offerings) and never touches the hostile node
    services.wait_until(
        lambda: {"open", "partners"} <= {i["name"] for i in catalog(world.beta)}, "Beta's crawl of Acme"
    )
    time.sleep(2.0)  # four more crawl passes
    assert not [i for i in catalog(world.beta) if i["provider"] == world.hostile.address]
    assert not [i for i in catalog(world.acme) if i["provider"] == world.hostile.address]
    assert world.front.requests["POST catalog"] == 0, "nobody crawled a participant nobody added"


def test_a_registered_participant_may_ask_but_is_never_listed(world: World) -> None:
    answer = world.signed(
        world.acme, "/dsp/catalog/request", {"@context": DSP, "@type": "CatalogRequestMessage"}
    )
    assert answer.status_code == 200, answer.text
    listed = {d["agora:name"] for d in answer.json()["dataset"]}
    assert "open" in listed
    assert "partners" not in listed, "a name claimed on chain does not satisfy participantName"
    known = participants(world.acme)
    hostile, beta = known[world.hostile.address], known[world.beta.address]
    assert hostile["trusted"] is False and beta["trusted"] is True
    short = world.hostile.address[:6]
    assert hostile["label"].startswith(f"Beta Analytics ({short}") and hostile["label"].endswith(
        "not a peer)"
    )
    assert beta["label"].startswith(f"Beta Analytics ({world.beta.address[:6]}"), beta["label"]
    listing = world.acme.node.cli("peers", "list", "--home", str(world.acme.node.home)).stdout
    line = next(x for x in listing.splitlines() if world.hostile.address in x)
    assert line.startswith("registered") and "not a peer" in line
    time.sleep(1.0)
    assert world.front.requests["POST catalog"] == 0, "Acme answers it, but never crawls it"


def test_a_callback_to_another_origin_is_refused_and_recorded(world: World) -> None:
    acme = world.acme
    names = {i["name"]: i["offering_id"] for i in catalog(acme)}
    internal_callback = f"{world.internal.url}/dsp"
    r = world.signed(
        acme, "/dsp/negotiations/request", request_message(names["open"], internal_callback, "urn:uuid:h-2")
    )
    assert r.status_code == 400, r.text
    detail = reason(r)
    assert f"callbackAddress {internal_callback} is refused" in detail
    assert f"verified origin {world.front.url}" in detail
    recorded = [n for n in acme.api("GET", "/negotiations").json() if n["peer_pid"] == "urn:uuid:h-2"]
    assert (
        len(recorded) == 1 and recorded[0]["state"] == "TERMINATED" and "is refused" in recorded[0]["reason"]
    )

    # a negotiation at its own origin is taken (Acme answers registered participants) …
    ok = world.signed(
        acme,
        "/dsp/negotiations/request",
        request_message(names["manual"], f"{world.front.url}/dsp", "urn:uuid:h-3"),
    )
    assert ok.status_code == 201, ok.text
    waiting = next(n for n in acme.api("GET", "/negotiations").json() if n["peer_pid"] == "urn:uuid:h-3")
    assert waiting["state"] == "REQUESTED"
    # … but a later message moving the callback elsewhere is refused and kept in the history
    event = {
        "@context": DSP,
        "@type": "ContractNegotiationEventMessage",
        "providerPid": waiting["id"],
        "consumerPid": "urn:uuid:h-3",
        "eventType": "ACCEPTED",
        "callbackAddress": internal_callback,
    }
    moved = world.signed(acme, f"/dsp/negotiations/{waiting['id']}/events", event)
    assert moved.status_code == 400 and "is refused" in reason(moved)
    history = acme.api("GET", f"/negotiations/{waiting['id']}").json()["history"]
    assert history[-1]["accepted"] is False and "is refused" in history[-1]["reason"]

    # the web UI names the sender so it cannot pass for Beta
    from node.ui.routes import COOKIE

    page = httpx.get(f"{acme.node.url}/ui/negotiations", cookies={COOKIE: acme.node.token("catalog:read")})
    assert page.status_code == 200
    assert f"Beta Analytics ({world.hostile.address[:6]}" in page.text and "not a peer" in page.text
    time.sleep(1.5)  # the dispatcher's passes
    assert world.internal.hits == []


def test_an_identity_statement_naming_another_endpoint_is_refused(world: World) -> None:
    beta = world.beta
    world.front.mode = "identity-elsewhere"
    try:
        r = beta.api("POST", "/participants", json={"url": world.front.url})
    finally:
        world.front.mode = "pass"
    assert r.status_code == 400 and f"says its endpoint is {world.internal.url}" in r.json()["detail"]
    assert world.hostile.address not in participants(beta)
    assert world.internal.hits == []

    # Beta's operator now adds the hostile organisation on purpose (a partner gone rogue)
    assert beta.api("POST", "/participants", json={"url": world.front.url}).status_code == 201
    assert world.hostile.api("POST", "/participants", json={"url": beta.node.url}).status_code == 201
    known = participants(beta)
    mine, theirs = known[beta.address]["label"], known[world.hostile.address]["label"]
    assert (
        mine != theirs and mine.startswith("Beta Analytics (0x") and theirs.startswith("Beta Analytics (0x")
    )
    listing = beta.node.cli("peers", "list", "--home", str(beta.node.home)).stdout
    assert theirs in listing and mine in listing
    services.wait_until(
        lambda: [i for i in catalog(beta) if i["provider"] == world.hostile.address],
        "Beta's crawl of its new peer",
    )


def test_the_crawler_follows_no_redirect(world: World) -> None:
    world.front.mode = "redirect"
    try:
        error = services.wait_until(
            lambda: "follows no redirects" in crawl_error(world) and crawl_error(world), "the refusal"
        )
    finally:
        world.front.mode = "pass"
    assert f"redirecting to {world.internal.url}" in error
    assert world.internal.hits == []


def test_an_oversized_catalog_is_cut_off_while_it_streams(world: World) -> None:
    before = world.front.requests["POST catalog"]
    world.front.oversize_sent = 0
    world.front.mode = "oversize"
    try:
        services.wait_until(lambda: "larger than 1048576 bytes" in crawl_error(world), "the size refusal")
    finally:
        world.front.mode = "pass"
    attempts = world.front.requests["POST catalog"] - before
    per_attempt = world.front.oversize_sent / max(attempts, 1)
    assert per_attempt < 8 * 1024 * 1024, f"{per_attempt:.0f} bytes sent per attempt: not cut off"
    assert httpx.get(f"{world.beta.node.url}/health").status_code == 200
    kept = [i for i in catalog(world.beta) if i["provider"] == world.hostile.address]
    assert kept, "the last good copy is kept"


def test_a_silent_peer_hits_the_read_timeout(world: World) -> None:
    world.front.mode = "slow"
    try:
        services.wait_until(lambda: "read timeout" in crawl_error(world), "the read timeout")
    finally:
        world.front.mode = "pass"
    assert "sent nothing for 2 s" in crawl_error(world)


def test_a_trickling_peer_hits_the_deadline(world: World) -> None:
    world.front.mode = "trickle"
    try:
        services.wait_until(lambda: "total time limit" in crawl_error(world), "the deadline")
    finally:
        world.front.mode = "pass"
    services.wait_until(lambda: not crawl_error(world), "a good crawl again")


def test_a_data_address_on_another_origin_is_refused(world: World) -> None:
    beta, hostile = world.beta, world.hostile
    bait = next(i["offering_id"] for i in catalog(beta) if i["provider"] == hostile.address)
    started = beta.api(
        "POST",
        "/negotiations",
        json={
            "offering_id": bait,
            "provider": world.front.url,
            "purpose": "research",
            "access_mode": "download",
        },
    )
    assert started.status_code == 201, started.text
    done = services.wait_until(
        lambda: (
            (n := beta.api("GET", f"/negotiations/{started.json()['id']}").json())["state"]
            in ("FINALIZED", "TERMINATED")
            and n
        ),
        "the negotiation with the hostile node",
        timeout=60,
    )
    assert done["state"] == "FINALIZED", done
    agreement = done["agreement"]["id"]
    assert done["agreement"]["terms"]["size"] > 0
    control = beta.api("POST", "/transfers", json={"agreement_id": agreement})
    assert control.status_code == 201 and control.json()["state"] == "COMPLETED", control.text

    world.front.mode = "data-elsewhere"
    try:
        r = beta.api("POST", "/transfers", json={"agreement_id": agreement})
    finally:
        world.front.mode = "pass"
    assert r.status_code == 403, r.text
    assert f"the data address {world.internal.url}/steal is refused" in r.json()["detail"]
    assert [s.status_code for s in world.front.sent] == [200], "the start message was taken"
    latest = beta.api("GET", "/transfers").json()[0]
    assert latest["state"] == "TERMINATED" and "is refused" in latest["reason"]
    assert world.internal.hits == []


def test_more_bytes_than_agreed_are_refused(world: World) -> None:
    agreement, r = transfer_while(world, "data-oversize")
    assert r.status_code == 403, r.text
    assert f"the agreed size is {agreement['terms']['size']} bytes" in r.json()["detail"]
    assert world.beta.api("GET", "/transfers").json()[0]["state"] == "TERMINATED"


def test_a_chain_the_provider_picked_elsewhere_is_not_asked(world: World) -> None:
    """Checking the bytes means asking the chain the provenance names: only this node's own
    chain or one at the provider's origin."""
    _, r = transfer_while(world, "chain-elsewhere")
    assert r.status_code == 403, r.text
    assert f"the chain the provenance names {world.internal.url}/rpc is refused" in r.json()["detail"]
    assert world.internal.hits == []


def test_a_chain_at_the_providers_origin_that_redirects_is_not_followed(world: World) -> None:
    """The chain the provenance names is on the provider's origin, and answers every call with
    a 307 to the internal service: the node's outbound client follows no redirect."""
    _, r = transfer_while(world, "chain-redirect")
    assert r.status_code in (403, 502, 503), r.text
    assert "redirect" in r.json()["detail"], r.json()["detail"]
    assert world.front.requests["POST /chain/rpc"] >= 1, "the chain at the provider's origin was asked"
    assert world.internal.hits == []


def test_nothing_reached_the_internal_service_and_nothing_broke(world: World) -> None:
    assert world.internal.hits == []
    for org in (world.acme, world.beta):
        assert httpx.get(f"{org.node.url}/health").status_code == 200
        log = (org.node.home / "serve.log").read_text()
        assert "Traceback" not in log, log[-3000:]
