"""Secure aggregation's round protocol under attack, between real nodes.

Both channels are attacked while a federation runs, with messages signed by the organisation
keys the nodes themselves use:

* provider → coordinator, while the honest adverts wait in the coordinator's proxy (its key
  stage is open): forged and malformed adverts, a masked update before its time, a plain update
  in a secure round, strangers. Each must be refused with a 4xx, and nothing kept.
* coordinator → provider, while a provider holds its secrets: a second, different unmask request
  after it answered one (the request that would give the coordinator both secrets of a
  participant), keys substituted under another provider's id, stage messages out of order, a
  round start without secure aggregation or with weaker parameters, and strangers.

The federation must then complete as if nothing had been sent: every round with all three."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from connector import blobs
from connector.dsp.identity import NodeIdentity
from federation.secagg import SecAggClient, SecAggConfig
from federation.secagg_protocol import round_context, sign_advert
from tests import dsp_peer
from tests.fl_orgs import FlOrgs, accuracy_curve, create, fl_orgs, follow, spec
from tests.services import Org, wait_until

pytestmark = [pytest.mark.slow]


def _send(
    to: Org, path: str, body: dict[str, Any], signer: NodeIdentity, blob: bytes | None = None
) -> tuple[int, str]:
    """One protocol message with ``signer``'s token, straight to a node's own port (around its
    proxy, whose URL is the node's DID): the status and the refusal's words."""
    public = to.node.env["AGORA_PUBLIC_URL"]
    if blob is None:
        raw, media = json.dumps(body).encode(), "application/json"
    else:
        raw, media = blobs.pack(blobs.bind(body, blob), blob), blobs.MEDIA_TYPE
    response = dsp_peer.post_raw(signer, public, to.node.url + path, raw, content_type=media)
    if response.status_code < 400:
        return response.status_code, ""
    error = response.json()
    return response.status_code, str(error.get("detail") or " ".join(error.get("reason") or []))


def _round(orgs: FlOrgs, federation_id: str, number: int) -> dict[str, Any] | None:
    rounds = orgs.coordinator.api("GET", f"/federations/{federation_id}/rounds").json()
    return next((r for r in rounds if r["round"] == number), None)


def _state(orgs: FlOrgs, federation_id: str, number: int, provider: str) -> str | None:
    rnd = _round(orgs, federation_id, number)
    return (
        next((p["state"] for p in rnd["contributions"] if p["provider"] == provider), None) if rnd else None
    )


def _stage(orgs: FlOrgs, federation_id: str, number: int) -> str | None:
    rnd = _round(orgs, federation_id, number)
    return str(rnd["secure_aggregation"]["stage"]) if rnd else None


def _objects(home: Path) -> set[str]:
    return {path.name for path in (home / "objects").glob("*/*") if path.is_file()}


def test_forged_and_out_of_turn_secure_aggregation_messages_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    with fl_orgs(tmp_path, 3, iid=True, proxied=True) as orgs:
        document = spec(orgs, rounds=2, min_participants=3, round_deadline="90s")
        document.update(secure_aggregation={"enabled": True})
        document["recipe"]["local_epochs"] = 10  # rounds long enough to attack in
        fed = create(orgs, document)
        fid = fed["id"]
        assert orgs.coordinator.api("POST", f"/federations/{fid}/start").status_code == 200
        a, b, c = orgs.providers
        key = {org.address: org.node.org_key() for org in (orgs.coordinator, *orgs.providers)}
        stranger = bytes(Account.create().key)
        front = orgs.extra["proxies"]
        # who signs a message's token: each organisation at its public URL (its proxy), and a
        # stranger no node knows
        sender = {
            key[o.address]: dsp_peer.identity(front[o.address].url, key[o.address])
            for o in (orgs.coordinator, *orgs.providers)
        }
        sender[stranger] = dsp_peer.identity("http://127.0.0.1:9", stranger, "stranger")
        results: dict[str, Counter[int]] = {"to the coordinator": Counter(), "to a provider": Counter()}

        # -- provider to coordinator, while the honest adverts wait -----------------------------
        wait_until(
            lambda: all(_state(orgs, fid, 1, p.address) == "TRAINING" for p in orgs.providers),
            "round 1 to reach every provider",
            timeout=180,
        )
        front[orgs.coordinator.address].hold()
        try:
            rnd = _round(orgs, fid, 1)
            assert rnd is not None
            ids = rnd["secure_aggregation"]["participants"]
            context = round_context(fid, 1)
            before = _objects(orgs.coordinator.node.home)
            base = {"federation": fid, "round": 1, "global_sha256": rnd["global_in"]}

            def advert_of(pid: int) -> dict[str, str]:
                client = SecAggClient(SecAggConfig(3, 2), pid, [0, 1, 2], context)
                return client.advertise()

            def advert(pid: int, signer: bytes, **change: Any) -> dict[str, Any]:
                keys = advert_of(pid)
                body = {**base, "type": "SecAggAdvert", "participant": pid, "advert": keys}
                body["signature"] = sign_advert(signer, context, pid, keys)
                return {**body, **change}

            me, other = ids[a.address], ids[b.address]
            elsewhere = "urn:uuid:00000000-0000-0000-0000-000000000000"
            zero = base64.b64encode(bytes(32)).decode()
            good = advert_of(me)
            weights_in = orgs.coordinator.node.home / "objects" / rnd["global_in"][:2] / rnd["global_in"]
            mine = key[a.address]
            junk = [  # (path, body, signed by, bytes, what the refusal says)
                ("/secagg", advert(me, key[b.address]), mine, None, "are signed by"),
                ("/secagg", advert(other, mine), mine, None, "is participant"),
                ("/secagg", advert(me, mine, global_sha256="0" * 64), mine, None, "other global weights"),
                (
                    "/secagg",
                    advert(me, mine, advert={**good, "mask_key": zero}),
                    mine,
                    None,
                    "low-order point",
                ),
                (
                    "/secagg",
                    advert(me, mine, advert={**good, "share_key": good["mask_key"]}),
                    mine,
                    None,
                    "both purposes",
                ),
                ("/secagg", advert(me, mine, advert={**good, "extra": zero}), mine, None, "unknown fields"),
                ("/secagg", advert(me, mine, advert="keys"), mine, None, "must be an object"),
                ("/secagg", advert(me, mine, participant=True), mine, None, "is not a participant id"),
                ("/secagg", advert(me, mine, type="SecAggInput"), mine, None, "expected a SecAggAdvert"),
                ("/secagg", advert(me, mine, round=99), mine, None, "not securely aggregated here"),
                ("/secagg", advert(me, mine, federation=elsewhere), mine, None, "another federation"),
                ("/secagg", advert(me, stranger), stranger, None, "peer"),
                (
                    "/secagg/input",  # the right size, before the shares went out
                    {**base, "type": "SecAggInput", "participant": me, "num_examples": 100},
                    mine,
                    bytes(9931 * 5),
                    "cannot come before",
                ),
                (
                    "/secagg/input",
                    {**base, "type": "SecAggInput", "participant": me, "num_examples": 0},
                    mine,
                    bytes(9931 * 5),
                    "num_examples",
                ),
                ("/secagg/input", {**base, "type": "SecAggInput", "participant": me}, stranger, b"0", "peer"),
                (
                    "/updates",  # weights in the clear, in a secure round
                    {**base, "type": "RoundUpdate", "state": "SENDING", "num_examples": 100},
                    mine,
                    weights_in.read_bytes(),
                    "only masked",
                ),
            ]
            for path, body, signer, blob, expected in junk:
                status, detail = _send(
                    orgs.coordinator, f"/dsp/federations/{fid}{path}", body, sender[signer], blob
                )
                print("to the coordinator:", path, status, detail)
                results["to the coordinator"][status] += 1
                assert expected in detail, (path, expected, detail)
            after = _objects(orgs.coordinator.node.home)
            progress = _round(orgs, fid, 1)
            assert progress is not None
            assert progress["secure_aggregation"]["advertised"] == [], progress["secure_aggregation"]
            assert after == before, "a refused message left an object on the coordinator"
        finally:
            front[orgs.coordinator.address].release()

        # -- coordinator to provider: a second unmask after the first was answered --------------
        wait_until(lambda: (_round(orgs, fid, 1) or {}).get("state") == "DONE", "round 1 to end", timeout=120)
        survivors = sorted(ids.values())
        ask = {"federation": fid, "round": 1, "type": "SecAggUnmask"}
        stage = f"/dsp/federations/{fid}/secagg/stage"
        as_coordinator = key[orgs.coordinator.address]
        status, _ = _send(b, stage, {**ask, "survivors": survivors, "dropped": []}, sender[as_coordinator])
        assert status == 200, status  # the very same request: the same answer again, nothing more
        for body, expected in (
            (
                {**ask, "survivors": [ids[a.address], ids[b.address]], "dropped": [ids[c.address]]},
                "answered already",
            ),
            ({"federation": fid, "round": 1, "type": "SecAggKeys", "keys": {}}, "answered already"),
        ):
            status, detail = _send(b, stage, body, sender[as_coordinator])
            print("to a provider:", body["type"], status, detail)
            results["to a provider"][status] += 1
            assert expected in detail, (body, detail)

        # -- coordinator to provider, while one provider waits for its keys ---------------------
        wait_until(lambda: _state(orgs, fid, 2, b.address) == "TRAINING", "round 2 to reach", timeout=120)
        front[b.address].hold()
        try:
            wait_until(lambda: _stage(orgs, fid, 2) == "shares", "round 2's keys to go out", timeout=120)
            context = round_context(fid, 2)
            fake = SecAggClient(SecAggConfig(3, 2), ids[a.address], [0, 1, 2], context).advertise()
            substituted = {
                str(ids[a.address]): {
                    "advert": fake,
                    "signature": sign_advert(as_coordinator, context, ids[a.address], fake),
                }
            }
            second = {"federation": fid, "round": 2}
            second_round = _round(orgs, fid, 2)
            assert second_round is not None
            global_in = second_round["global_in"]
            weights = (orgs.coordinator.node.home / "objects" / global_in[:2] / global_in).read_bytes()
            weaker = {  # each value clipped to ±100 where the spec agreed ±8
                "config": SecAggConfig.fitted(3, 2, clipping_range=100.0, max_examples=479).wire(),
                "participants": second_round["secure_aggregation"]["participants"],
                "vector_length": 9930,
                "stage_seconds": 15.0,
            }
            fewer = {  # two participants where the spec needs three: the other could be the coordinator's
                **weaker,
                "config": SecAggConfig.fitted(2, 2, max_examples=479).wire(),
                "participants": {b.address: 0, orgs.coordinator.address: 1},
            }
            start = {"type": "RoundStart", "federation": fid, "round": 2, "evaluate_only": False}
            rounds = f"/dsp/federations/{fid}/rounds"
            keys = {**second, "type": "SecAggKeys"}
            junk = [  # (path, body, signed by, bytes, what the refusal says)
                (stage, {**keys, "keys": substituted}, as_coordinator, None, "are signed by"),
                (
                    stage,
                    {**keys, "keys": {"7": {"advert": fake, "signature": "0x" + "00" * 65}}},
                    as_coordinator,
                    None,
                    "id map does not",
                ),
                (
                    stage,
                    {**keys, "keys": {str(ids[a.address]): {"advert": fake, "signature": "no"}}},
                    as_coordinator,
                    None,
                    "well-formed signature",
                ),
                (
                    stage,
                    {**second, "type": "SecAggShares", "shares": {}},
                    as_coordinator,
                    None,
                    "stage share_keys",
                ),
                (
                    stage,
                    {**second, "type": "SecAggUnmask", "survivors": survivors, "dropped": []},
                    as_coordinator,
                    None,
                    "stage share_keys",
                ),
                (stage, {**keys, "keys": substituted}, key[a.address], None, "peer"),
                (stage, {**second, "type": "SecAggDump"}, as_coordinator, None, "a stage message is one of"),
                (
                    stage,
                    {**keys, "round": 5, "keys": {}},
                    as_coordinator,
                    None,
                    "no securely aggregated round",
                ),
                (rounds, {**start, "config": {}}, as_coordinator, weights, "a round without it is refused"),
                (
                    rounds,
                    {**start, "config": {"secure_aggregation": weaker}},
                    as_coordinator,
                    weights,
                    "differ from the federation's spec",
                ),
                (
                    rounds,
                    {**start, "config": {"secure_aggregation": fewer}},
                    as_coordinator,
                    weights,
                    "names 2 participants",
                ),
            ]
            for path, body, signer, blob, expected in junk:
                status, detail = _send(b, path, body, sender[signer], blob)
                print("to a provider:", path, status, detail)
                results["to a provider"][status] += 1
                assert expected in detail, (path, expected, detail)
        finally:
            front[b.address].release()

        ended = follow(orgs, fid, timeout=300)
        print("refused, by channel and status:", {k: dict(v) for k, v in results.items()})
        print("held-out accuracy per round:", accuracy_curve(ended))
        assert ended["state"] == "COMPLETED", ended["reason"]
        for rnd in ended["rounds_detail"][:2]:
            assert rnd["state"] == "DONE" and len(rnd["participants"]) == 3, json.dumps(rnd)[:2000]
        for channel, statuses in results.items():
            assert all(400 <= s < 500 for s in statuses), (channel, statuses)
        assert (
            sum(results["to the coordinator"].values()) == 16 and sum(results["to a provider"].values()) == 13
        )
