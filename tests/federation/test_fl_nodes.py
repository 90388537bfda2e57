"""Federations between real node processes on loopback, on one devchain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fl_orgs import accuracy_curve, fl_orgs, run, spec

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
