"""Federations between real node processes on loopback, on one devchain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fl_orgs import accuracy_curve, create, fl_orgs, follow, kill, restart, run, spec
from tests.services import wait_until

pytestmark = [pytest.mark.slow]


def test_three_providers_train_the_cnn_iid(tmp_path: Path) -> None:
    with fl_orgs(tmp_path, 3, iid=True) as orgs:
        fed = run(orgs, spec(orgs, rounds=5, min_participants=3))
        assert fed["state"] == "COMPLETED", fed["reason"]
        curve = accuracy_curve(fed)
        print("held-out accuracy per round:", curve)
        assert len(curve) == 5
        assert curve[-1] > 0.85, curve
        rounds = fed["rounds_detail"]
        assert [r["state"] for r in rounds] == ["DONE"] * 6
        for r in rounds[:5]:
            assert (
                len(r["participants"]) == 3 and len(r["merkle_root"]) == 64 and r["asset_id"].startswith("0x")
            )
        assert fed["result"]["model_sha256"] == rounds[4]["global_out"]


def _mean_accuracy(fed: dict[str, Any], providers: list[str]) -> float:
    """The final model's held-out accuracy averaged over ``providers`` (the honest ones)."""
    final = fed["rounds_detail"][-1]["metrics"]["providers"]
    return sum(final[p]["accuracy"] for p in providers) / len(providers)


def test_a_poisoning_provider_drags_fedavg_down_and_the_median_holds(tmp_path: Path) -> None:
    """Three honest providers and one whose node sends every update sign-flipped and x10."""
    with fl_orgs(tmp_path, 4, iid=True, hostile={3: "flip"}) as orgs:
        honest = [o.address for o in orgs.providers[:3]]
        clean = run(orgs, spec(orgs, rounds=5, min_participants=3, providers=_agreements(orgs, 3)))
        attacked = run(orgs, spec(orgs, rounds=5, min_participants=4))
        robust = run(orgs, spec(orgs, rounds=5, min_participants=4, strategy={"name": "fedmedian"}))
        for fed in (clean, attacked, robust):
            assert fed["state"] == "COMPLETED", fed["reason"]
        figures = {
            k: _mean_accuracy(f, honest)
            for k, f in (("clean", clean), ("fedavg", attacked), ("median", robust))
        }
        print("honest providers' held-out accuracy of the final model:", figures)
        assert figures["clean"] > 0.85, figures
        assert figures["median"] >= figures["clean"] - 0.02, figures
        assert figures["fedavg"] < figures["clean"] - 0.2, figures


def _agreements(orgs: Any, count: int) -> list[dict[str, str]]:
    return [{"agreement": a} for a in orgs.agreements[:count]]


def test_a_provider_that_dies_mid_round_is_dropped_and_the_federation_goes_on(tmp_path: Path) -> None:
    with fl_orgs(tmp_path, 3) as orgs:
        document = spec(orgs, rounds=6, min_participants=2, round_deadline="20s")
        document["recipe"]["local_epochs"] = 8  # rounds long enough to die in
        fed = create(orgs, document)
        orgs.coordinator.api("POST", f"/federations/{fed['id']}/start")
        victim = orgs.providers[2]
        wait_until(lambda: _round_open(orgs, fed["id"], 3), "round 3 to open", timeout=120)
        kill(victim)
        ended = follow(orgs, fed["id"])
        assert ended["state"] == "COMPLETED", ended["reason"]
        parts = {p["provider"]: p for p in ended["rounds_detail"][2]["contributions"]}
        assert parts[victim.address]["state"] == "DROPPED", parts
        # killed after the round start reached it (dropped at the deadline) or before (unreachable)
        reason = parts[victim.address]["reason"]
        assert "deadline" in reason or reason.startswith("unreachable"), reason
        assert len(ended["rounds_detail"][2]["participants"]) == 2
        later = ended["rounds_detail"][5]
        assert victim.address not in later["participants"] or later["state"] == "DONE"


def test_the_coordinator_killed_mid_round_resumes_where_it_was(tmp_path: Path) -> None:
    with fl_orgs(tmp_path, 3) as orgs:
        document = spec(orgs, rounds=5, min_participants=3, round_deadline="90s")
        document["recipe"]["local_epochs"] = 8
        fed = create(orgs, document)
        orgs.coordinator.api("POST", f"/federations/{fed['id']}/start")
        wait_until(lambda: _round_open(orgs, fed["id"], 3), "round 3 to open", timeout=120)
        kill(orgs.coordinator)
        time.sleep(2)  # the providers train on, and find the coordinator gone when they push
        restart(orgs, orgs.coordinator, "Beta Analytics")
        ended = follow(orgs, fed["id"])
        assert ended["state"] == "COMPLETED", ended["reason"]
        rounds = ended["rounds_detail"]
        assert [r["state"] for r in rounds] == ["DONE"] * 6
        assert all(len(r["participants"]) == 3 for r in rounds[:5]), [r["participants"] for r in rounds]
        assert ended["current_round"] == 5


def _round_open(orgs: Any, federation_id: str, number: int) -> bool:
    rounds = orgs.coordinator.api("GET", f"/federations/{federation_id}/rounds").json()
    return any(r["round"] == number and r["state"] == "OPEN" for r in rounds)


def test_a_policy_cap_on_epsilon_stops_its_provider(tmp_path: Path) -> None:
    cap = {"permissions": [{"action": "federate", "constraints": [
        {"leftOperand": "dpEpsilon", "operator": "lteq", "rightOperand": 1.3},
    ]}]}  # fmt: skip
    with fl_orgs(tmp_path, 3, policies={0: {"policy": cap}}) as orgs:
        capped = orgs.providers[0].address
        # without differential privacy the capped provider does not join
        plain = create(orgs, spec(orgs, rounds=2, min_participants=2))
        member = next(m for m in plain["members"] if m["provider"] == capped)
        assert member["state"] == "REFUSED" and "caps differential privacy" in member["reason"], member
        orgs.coordinator.api("POST", f"/federations/{plain['id']}/cancel")
        private = {"node_clip_norm": 5.0, "node_noise_multiplier": 10.0, "delta": 1e-5}
        fed = run(orgs, spec(orgs, rounds=6, min_participants=2, privacy=private))
        assert fed["state"] == "COMPLETED", fed["reason"]
        member = next(m for m in fed["members"] if m["provider"] == capped)
        assert member["state"] == "STOPPED" and "stops contributing" in member["reason"], member
        parts = [
            next((p for p in r["contributions"] if p["provider"] == capped), None)
            for r in fed["rounds_detail"][:6]
        ]
        states = [p["state"] if p else "not asked" for p in parts]
        print("the capped provider, round by round:", states)
        stopped_at = states.index("STOPPED")
        assert 1 <= stopped_at < 6 and all(s == "RECEIVED" for s in states[:stopped_at]), states
        assert all(s == "not asked" for s in states[stopped_at + 1 :]), (
            states
        )  # a stopped member is not asked again
        spent = [p["privacy"].get("epsilon") for p in parts[:stopped_at] if p]
        assert all(e is not None and e <= 1.3 for e in spent), spent


def test_non_iid_shares_reach_090_with_a_flower_style_client(tmp_path: Path) -> None:
    """Three providers with very different label mixes; the bundle's Flower-style client trains."""
    with fl_orgs(tmp_path, 3, iid=False) as orgs:
        document = spec(orgs, rounds=15, min_participants=3)
        document["model"]["client"] = "client:DigitsClient"
        fed = run(orgs, document)
        assert fed["state"] == "COMPLETED", fed["reason"]
        curve = accuracy_curve(fed)
        print("non-IID held-out accuracy per round (Flower-style client):", curve)
        assert max(curve) > 0.90 and curve[-1] > 0.88, curve
        labels = [np.bincount(np.load(p)["y"], minlength=10) for p in orgs.partitions]
        assert min(int(c.min()) for c in labels) < 10, labels  # the shares really are skewed
