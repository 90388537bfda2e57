"""The end of a federation on the coordinator: the global model, its ONNX translation, its lineage.

After the final evaluation round, :func:`finish` anchors the final global weights as a
``model`` asset whose parents are the federation's own anchor (round 0: code, initial weights,
each provider's agreement and dataset version) and its rounds, translates the model to ONNX
(``translate``: the bundle's factory with the global weights, exported and checked in this
node's sandbox; see :mod:`federation.onnx_export`) and anchors that as an ``onnx-model`` whose
parent is the model, then tells the providers the federation completed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, col, select

from contracts.notary import enqueue
from federation.coordinator import Coordinator
from federation.models import COMPLETED, DONE, FAILED, FEDERATION, RUNNING, Federation, FederationRound
from federation.rounds import setup_asset
from kernel.db import transaction
from kernel.errors import AgoraError

log = logging.getLogger("agora.federation")
MAX_ROUND_PARENTS = 30  # the registry takes 32 parents; the earliest rounds stay in round 0's record
Translate = Callable[[Federation, bytes], tuple[bytes, dict[str, Any]]]


def finish(
    coordinator: Coordinator, federation_id: str, translate: Translate | None, wake_notary: Callable[[], None]
) -> None:
    engine, store = coordinator.engine, coordinator.store
    with Session(engine) as session:
        fed = session.get(Federation, federation_id)
        rounds = session.exec(
            select(FederationRound)
            .where(FederationRound.federation_id == federation_id, FederationRound.state == DONE)
            .order_by(col(FederationRound.number))
        ).all()
    if fed is None or fed.state != RUNNING:
        return
    trained = [r for r in rounds if not r.config.get("evaluate_only")]
    final_eval = next((r.metrics for r in rounds if r.config.get("evaluate_only")), {})
    blob = b"".join(store.read(fed.global_sha256))
    onnx: tuple[bytes, dict[str, Any]] | None = None
    onnx_error = ""
    if translate is not None:
        try:
            onnx = translate(fed, blob)
        except AgoraError as exc:
            onnx_error = exc.detail
    result: dict[str, Any] = {
        "model_sha256": fed.global_sha256,
        "model_size": len(blob),
        "rounds": len(trained),
        "final_evaluation": final_eval,
    }
    with transaction(engine) as session:
        locked = session.get(Federation, federation_id, with_for_update=True)
        assert locked is not None
        if locked.state != RUNNING:
            return
        setup = setup_asset(session, locked)
        round_ids = [r.asset_id for r in trained if r.asset_id][-MAX_ROUND_PARENTS:]
        accuracy = final_eval.get("accuracy")
        report = {
            "summary": (
                f"federated over {len(trained)} rounds; the providers' held-out accuracy "
                + (f"{accuracy:.4f}" if isinstance(accuracy, float) else "not reported")
                + f" on {final_eval.get('num_examples', 0)} rows"
            ),
            "rounds": len(trained),
            "final_evaluation": {k: v for k, v in final_eval.items() if k != "providers"},
            "per_provider": final_eval.get("providers", {}),
        }
        model = enqueue(
            session,
            kind="model",
            content_hash=fed.global_sha256,
            owner=locked.coordinator,
            metadata={
                "title": f"{locked.name} (federated, {len(trained)} rounds)",
                "federation": locked.id,
                "format": "safetensors",
                "code_digest": locked.code_digest,
                "initial_weights": locked.initial_sha256,
                "rounds": [
                    {"round": r.number, "asset_id": r.asset_id, "global_out": r.global_out} for r in trained
                ],
            },
            parents=[setup, *round_ids],
            result=report,
        )
        result["model_asset_id"] = model.asset_id
        if onnx is not None:
            onnx_bytes, onnx_report = onnx
            info = store.put_bytes(onnx_bytes)
            onnx_row = enqueue(
                session,
                kind="onnx-model",
                content_hash=info.sha256,
                owner=locked.coordinator,
                metadata={
                    "title": f"{locked.name} (ONNX)",
                    "federation": locked.id,
                    "opset": onnx_report.get("opset"),
                },
                parents=[model.asset_id],
                result=onnx_report,
            )
            result.update(
                onnx_sha256=info.sha256,
                onnx_size=len(onnx_bytes),
                onnx_asset_id=onnx_row.asset_id,
                onnx=onnx_report,
            )
        elif onnx_error:
            result["onnx_error"] = onnx_error
        locked.result = {**locked.result, **result}
        FEDERATION.move(
            locked,
            COMPLETED,
            f"completed {len(trained)} rounds"
            + (f"; ONNX translation failed: {onnx_error}" if onnx_error else ""),
        )
        session.add(locked)
    wake_notary()
    coordinator._tell_providers(federation_id, "completed", "the federation completed")


__all__ = ["FAILED", "finish"]
