"""Secure aggregation between real nodes: three providers and a coordinator on loopback, every
node behind a recording proxy, so the test counts each HTTP body and can hold one provider's
inbound messages at a moment it chooses."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connector import blobs
from federation import tensors
from federation.rounds import merkle_root
from tests.federation.wire import exchanges
from tests.fl_orgs import FlOrgs, accuracy_curve, create, fl_orgs, follow, kill, restart, run, spec
from tests.services import wait_until

pytestmark = [pytest.mark.slow]

SECURE = {"enabled": True}


def test_secure_aggregation_trains_as_plain_fedavg_does_and_the_coordinator_holds_no_update(
    tmp_path: Path,
) -> None:
    runs: dict[str, dict[str, Any]] = {}
    for name, secure_aggregation in (("secure", SECURE), ("plain", {"enabled": False})):
        # each run on nodes of its own: both start from the same initial weights on the same
        # rows, so a plain run on these nodes would leave the very same round-1 updates behind
        with fl_orgs(tmp_path / name, 3, iid=True, proxied=True) as orgs:
            document = spec(orgs, rounds=5, min_participants=3, secure_aggregation=secure_aggregation)
            fed = run(orgs, document)
            assert fed["state"] == "COMPLETED", fed["reason"]
            runs[name] = {
                "fed": fed,
                "found": _updates_on_the_coordinator(orgs, fed["id"]),
                "states": _state_objects(orgs),
                "wire": _bytes_per_round(orgs, fed["id"]),
                "providers": sorted(o.address for o in orgs.providers),
                "records": [
                    orgs.coordinator.api("GET", f"/provenance/{r['asset_id']}").json()["asset"]["metadata"]
                    for r in fed["rounds_detail"][:5]
                ],
            }
    secure, plain = runs["secure"]["fed"], runs["plain"]["fed"]
    curves = {"plain": accuracy_curve(plain), "secure": accuracy_curve(secure)}
    print("held-out accuracy per round:", curves)
    assert len(curves["secure"]) == 5 and curves["plain"][-1] > 0.85, curves
    assert abs(curves["secure"][-1] - curves["plain"][-1]) <= 0.02, curves

    providers = runs["secure"]["providers"]
    for rnd, record in zip(secure["rounds_detail"][:5], runs["secure"]["records"], strict=True):
        view = rnd["secure_aggregation"]
        assert rnd["state"] == "DONE" and sorted(rnd["participants"]) == providers, rnd
        assert view["stage"] == "unmask" and sorted(view["survivors"]) == providers, view
        assert all(p["update_sha256"] == "" for p in rnd["contributions"]), rnd["contributions"]
        part = record["secure_aggregation"]
        assert part["enabled"] and part["dropouts_recovered"] == 0, part
        assert sorted(part["survivors"]) == providers, part
        assert all(u["masked"] for u in record["updates"]) and len(record["updates"]) == 3
        assert merkle_root([u["sha256"] for u in record["updates"]]) == rnd["merkle_root"]
    assert plain["rounds_detail"][0]["secure_aggregation"] is None
    assert all("secure_aggregation" not in record for record in runs["plain"]["records"])

    hidden, control = runs["secure"]["found"], runs["plain"]["found"]
    print("provider updates found on the coordinator (by sha256, tensor bytes, values, in its DB):")
    print("  secure run:", hidden, " plain run (the control):", control)
    assert control["updates"] == 15 and control["by_name"] == 15 and control["by_values"] == 15
    assert hidden == {"updates": 15, "by_name": 0, "by_bytes": 0, "by_values": 0, "in_db": 0}
    states = runs["secure"]["states"]
    assert sorted(states) == [(secure["id"], n) for n in range(1, 6)], states  # superseded ones deleted
    assert runs["plain"]["states"] == []

    wire = {name: r["wire"] for name, r in runs.items()}
    per_round = {name: sum(w[n][0] for n in range(1, 6)) / 5 for name, w in wire.items()}
    messages = {name: sum(w[n][1] for n in range(1, 6)) / 5 for name, w in wire.items()}
    print(
        f"HTTP bodies per training round: plain {per_round['plain']:.0f} bytes in {messages['plain']:.0f} "
        f"exchanges, secure {per_round['secure']:.0f} bytes in {messages['secure']:.0f} exchanges; "
        f"expansion {per_round['secure'] / per_round['plain']:.3f}x"
    )
    assert messages["plain"] == 6 and messages["secure"] == 3 * 6  # start, keys, shares, input, unmask
    assert 1.0 < per_round["secure"] / per_round["plain"] < 1.5


def test_a_provider_killed_after_its_shares_is_recovered_and_the_federation_completes(
    tmp_path: Path,
) -> None:
    """The victim is killed once the coordinator holds its shares and before it could mask: a
    second provider's inbound messages are held at its proxy from its round start on, so the share
    stage cannot close (and the victim receive the shares it masks with) before the kill."""
    with fl_orgs(tmp_path, 3, iid=True, proxied=True) as orgs:
        document = spec(orgs, rounds=3, min_participants=2, round_deadline="40s", secure_aggregation=SECURE)
        document["recipe"]["local_epochs"] = 8  # a round start the test can see before the keys go out
        fed = create(orgs, document)
        assert orgs.coordinator.api("POST", f"/federations/{fed['id']}/start").status_code == 200
        victim, slow, other = orgs.providers
        held = orgs.extra["proxies"][slow.address]
        wait_until(
            lambda: _part(orgs, fed["id"], 2, slow.address) == "TRAINING", "round 2 to reach", timeout=180
        )
        held.hold()
        try:
            wait_until(
                lambda: victim.address in _secagg(orgs, fed["id"], 2)["shared"],
                "the coordinator to record the victim's shares",
                timeout=60,
            )
            assert _secagg(orgs, fed["id"], 2)["masked"] == []
            kill(victim)
        finally:
            held.release()
        ended = follow(orgs, fed["id"], timeout=300)
        assert ended["state"] == "COMPLETED", ended["reason"]
        rounds = ended["rounds_detail"]
        survivors = sorted([slow.address, other.address])
        second = rounds[1]
        print(
            "round 2:", second["reason"], {p["provider"][:10]: p["reason"] for p in second["contributions"]}
        )
        assert second["state"] == "DONE" and sorted(second["participants"]) == survivors, second
        assert "securely, 1 drop-out recovered" in second["reason"]
        dropped = next(p for p in second["contributions"] if p["provider"] == victim.address)
        assert dropped["state"] == "DROPPED" and "masks" in dropped["reason"], dropped
        record = orgs.coordinator.api("GET", f"/provenance/{second['asset_id']}").json()["asset"]["metadata"]
        assert record["secure_aggregation"]["recovered"] == [victim.address], record["secure_aggregation"]
        assert rounds[2]["state"] == "DONE" and sorted(rounds[2]["participants"]) == survivors, rounds[2]
        curve = accuracy_curve(ended)
        print("held-out accuracy per round:", curve)
        assert curve[-1] > 0.8, curve  # a mask left in the sum would leave a model of noise


def test_a_coordinator_killed_between_two_stages_resumes_the_secure_round(tmp_path: Path) -> None:
    """Killed once two providers' shares are in and the third's keys are still held at its proxy:
    the restarted coordinator reads the round's state back from its object store, pushes the keys
    again (the provider answers with the shares it gave the first time) and the round completes
    with all three."""
    with fl_orgs(tmp_path, 3, iid=True, proxied=True) as orgs:
        # a stage lasts a quarter of the round's deadline and the coordinator's downtime counts
        # against it: 240 s leaves a loaded machine a minute to restart the node; a stage
        # closes as soon as all three answered, so the case takes no longer for it
        document = spec(orgs, rounds=3, min_participants=3, round_deadline="240s", secure_aggregation=SECURE)
        document["recipe"]["local_epochs"] = 8
        fed = create(orgs, document)
        assert orgs.coordinator.api("POST", f"/federations/{fed['id']}/start").status_code == 200
        slow = orgs.providers[1]
        held = orgs.extra["proxies"][slow.address]
        wait_until(
            lambda: _part(orgs, fed["id"], 2, slow.address) == "TRAINING", "round 2 to reach", timeout=180
        )
        held.hold()
        try:
            wait_until(
                lambda: len(_secagg(orgs, fed["id"], 2)["shared"]) == 2, "two providers' shares", timeout=60
            )
            kill(orgs.coordinator)
        finally:
            held.release()
        restart(orgs, orgs.coordinator, "Beta Analytics")
        ended = follow(orgs, fed["id"], timeout=300)
        assert ended["state"] == "COMPLETED", ended["reason"]
        providers = sorted(o.address for o in orgs.providers)
        for rnd in ended["rounds_detail"][:3]:
            assert rnd["state"] == "DONE" and sorted(rnd["participants"]) == providers, rnd
            assert "securely, 0 drop-outs recovered" in rnd["reason"], rnd["reason"]
        print("held-out accuracy per round:", accuracy_curve(ended))
        assert accuracy_curve(ended)[-1] > 0.85


# -- reading what the nodes hold and sent ------------------------------------------------------------


def _rounds(orgs: FlOrgs, federation_id: str) -> list[dict[str, Any]]:
    return list(orgs.coordinator.api("GET", f"/federations/{federation_id}/rounds").json())


def _part(orgs: FlOrgs, federation_id: str, number: int, provider: str) -> str | None:
    for rnd in _rounds(orgs, federation_id):
        if rnd["round"] == number:
            return next((p["state"] for p in rnd["contributions"] if p["provider"] == provider), None)
    return None


def _secagg(orgs: FlOrgs, federation_id: str, number: int) -> dict[str, Any]:
    rnd = next(r for r in _rounds(orgs, federation_id) if r["round"] == number)
    return dict(rnd["secure_aggregation"])


def _objects(home: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (home / "objects").glob("*/*") if path.is_file()}


def _updates_on_the_coordinator(orgs: FlOrgs, federation_id: str) -> dict[str, int]:
    """Each provider's own updates of the federation, looked for on the coordinator: by object name,
    by the raw bytes of their largest tensor, by values (any safetensors object close to one),
    and by their sha256 in the coordinator's database file."""
    updates: list[tuple[str, tensors.Weights]] = []
    for provider in orgs.providers:
        with sqlite3.connect(f"file:{provider.node.home / 'agora.db'}?mode=ro", uri=True) as db:
            shas = [
                row[0]
                for row in db.execute(
                    "SELECT update_sha256 FROM federation_contribution WHERE federation_id = ? AND "
                    "role = 'provider' AND update_sha256 != ''",
                    (federation_id,),
                )
            ]
        mine = _objects(provider.node.home)
        updates += [(sha, tensors.decode(mine[sha])) for sha in shas]
    held = _objects(orgs.coordinator.node.home)
    decoded = {}
    for name, data in held.items():
        try:
            decoded[name] = tensors.decode(data)
        except tensors.UpdateRejected:
            continue
    database = b"".join(
        path.read_bytes() for path in orgs.coordinator.node.home.glob("agora.db*") if path.is_file()
    )
    found = {"updates": len(updates), "by_name": 0, "by_bytes": 0, "by_values": 0, "in_db": 0}
    for sha, weights in updates:
        largest = max(weights.values(), key=lambda w: w.nbytes).tobytes()
        found["by_name"] += sha in held
        found["by_bytes"] += any(largest in data for data in held.values())
        found["in_db"] += sha.encode() in database
        found["by_values"] += any(
            set(other) == set(weights)
            and all(np.allclose(other[n], weights[n], rtol=0, atol=1e-6) for n in weights)
            for other in decoded.values()
        )
    return found


def _state_objects(orgs: FlOrgs) -> list[tuple[str, int]]:
    """The secure-aggregation states kept in the coordinator's object store (federation, round)."""
    out = []
    for data in _objects(orgs.coordinator.node.home).values():
        if data.startswith(b'{"federation":'):
            state = json.loads(data)
            assert set(state) == {"federation", "round", "server", "signatures", "masked"}
            out.append((state["federation"], state["round"]))
    return out


def _bytes_per_round(orgs: FlOrgs, federation_id: str) -> dict[int, tuple[int, int]]:
    """(HTTP body bytes, exchanges) per round number of one federation, both directions, as every
    node's proxy recorded them: a request and its answer count for the round the request names."""
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for proxy in orgs.extra["proxies"].values():
        for connection in proxy.connections:
            for request, response in exchanges(connection):
                if f"/dsp/federations/{federation_id}" not in request.start:
                    continue
                if request.header("content-type").startswith(blobs.MEDIA_TYPE):
                    message, _ = blobs.split(request.body, max_bytes=1 << 30)
                else:
                    message = json.loads(request.body)
                number = message.get("round")
                if isinstance(number, int):
                    totals[number][0] += len(request.body) + (len(response.body) if response else 0)
                    totals[number][1] += 1
    return {n: (t[0], t[1]) for n, t in totals.items()}
