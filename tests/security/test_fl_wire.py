"""Every byte a provider's node sends during a federation, captured on the wire: no dataset row,
and nothing in the federation's messages but the declared tensors, figures and protocol fields
(the message, its token's claims, and the plain JSON replies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from connector import blobs
from federation import tensors
from tests import services
from tests.federation.wire import RecordingProxy, exchanges
from tests.fl_orgs import EXAMPLE, FlOrgs, run
from tests.job_orgs import agree, register
from training_jobs.datasets import digits_partitions

pytestmark = [pytest.mark.slow]

UPDATE_FIELDS = {
    "type", "federation", "round", "global_sha256", "state", "reason", "num_examples", "fit_metrics",
    "eval_metrics", "privacy", "train_seconds", "blob_sha256", "blob_bytes",
}  # fmt: skip
REPLY_FIELDS = {"federation", "state", "reason", "num_train", "dataset_sha256", "offering", "round"}
TOKEN_CLAIMS = {"iss", "sub", "aud", "jti", "iat", "nbf", "exp", "agora:sha256", "agora:request"}
FIT_METRICS = {"train_loss", "train_accuracy", "loss", "accuracy"}
EVAL_METRICS = {"loss", "accuracy", "num_examples"}


def _row_windows(rows: np.ndarray) -> list[bytes]:
    """Byte patterns that would betray a row: each whole row as float32 and float64, and each
    run of 8 pixels with at least 4 inked ones (float32) — blank runs are in any weight file."""
    patterns = []
    for row in rows.reshape(len(rows), -1):
        patterns += [row.astype(np.float32).tobytes(), row.astype(np.float64).tobytes()]
        for start in range(0, 64 - 8 + 1, 8):
            window = row[start : start + 8]
            if np.count_nonzero(window) >= 4:
                patterns.append(window.astype(np.float32).tobytes())
    return patterns


def test_a_provider_sends_no_row_and_only_declared_fields(tmp_path: Path) -> None:
    from contracts.devchain import DevChainServer

    chain = DevChainServer(tmp_path / "chain", port=services.free_port())
    chain.start()
    env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
    }
    coordinator_port, provider_port = services.free_port(), services.free_port()
    to_coordinator, to_provider = RecordingProxy(coordinator_port), RecordingProxy(provider_port)
    nodes = []
    try:
        coordinator = services.Org(
            services.start_node(
                tmp_path / "beta",
                "Beta Analytics",
                coordinator_port,
                AGORA_PUBLIC_URL=to_coordinator.url,
                **env,
            )
        )
        nodes.append(coordinator.node)
        provider = services.Org(
            services.start_node(
                tmp_path / "acme", "Acme Wind", provider_port, AGORA_PUBLIC_URL=to_provider.url, **env
            )
        )
        nodes.append(provider.node)
        share = digits_partitions(tmp_path / "data", 2, iid=True)[0]
        offering = register(
            provider,
            "digits-share",
            share,
            {"access_modes": ["federate"], "policy": {"template": "provide-access"}},
        )
        assert coordinator.api("POST", "/participants", json={"url": to_provider.url}).status_code == 201
        assert provider.api("POST", "/participants", json={"url": to_coordinator.url}).status_code == 201
        agreement = agree(provider, coordinator, offering, "federate", to_provider.url)
        orgs = FlOrgs(coordinator, [provider], [agreement], [share], chain, tmp_path)
        import yaml

        document = yaml.safe_load((EXAMPLE / "federation.yaml").read_text())
        document.update(providers=[{"agreement": agreement}], rounds=3, min_participants=1)
        fed = run(orgs, document)
        assert fed["state"] == "COMPLETED", fed["reason"]
        layout = {name: (shape, dtype) for name, (shape, dtype) in _layout(fed).items()}

        # everything the provider's node sent: its requests to the coordinator, its answers to the coordinator's
        sent_requests = [x for c in to_coordinator.connections for x in exchanges(c)]
        answered = [x for c in to_provider.connections for x in exchanges(c)]
        wire = b"".join(bytes(c.to_server) for c in to_coordinator.connections) + b"".join(
            bytes(c.to_client) for c in to_provider.connections
        )
        with np.load(share) as data:
            rows = data["X"]
        patterns = _row_windows(rows)
        found = sum(1 for pattern in patterns if pattern in wire)
        # the control: the same search finds the rows where they are, in the dataset's own bytes
        stored = share.read_bytes()
        in_dataset = sum(1 for row in rows if row.astype(np.float32).tobytes() in stored)
        assert in_dataset == len(rows), (in_dataset, len(rows))
        updates = [(req, resp) for req, resp in sent_requests if req.start.endswith("/updates")]
        tensor_bytes = 0
        for request, _ in updates:
            body, blob = blobs.split(request.body, max_bytes=1 << 30)
            claims = _claims(request.header("authorization"))
            assert set(claims) <= TOKEN_CLAIMS, set(claims) - TOKEN_CLAIMS
            assert claims["agora:request"] == request.start.split("?")[0]  # the method and path, no more
            assert set(body) <= UPDATE_FIELDS, set(body) - UPDATE_FIELDS
            assert set(body["fit_metrics"]) <= FIT_METRICS and set(body["eval_metrics"]) <= EVAL_METRICS
            assert all(
                isinstance(v, (int, float))
                for v in [*body["fit_metrics"].values(), *body["eval_metrics"].values()]
            )
            if blob:
                weights = tensors.decode(blob)
                tensors.check_update(weights, layout, max_bytes=len(blob), what="the captured update")
                tensor_bytes += tensors.size_of(weights)
        for request, response in answered:
            if request.start.startswith("POST /dsp/federations") and response is not None:
                reply = json.loads(response.body)
                assert set(reply) <= REPLY_FIELDS, reply
        print(
            f"provider sent {len(wire)} bytes in {len(sent_requests)} requests and {len(answered)} answers; "
            f"{len(updates)} updates carrying {tensor_bytes} bytes of tensors; "
            f"dataset rows (or 8-pixel runs of one) found on the wire: {found} of {len(rows)} rows"
        )
        assert len(updates) == 4  # three rounds and the final evaluation
        assert found == 0
    finally:
        for node in nodes:
            node.stop()
        to_coordinator.stop()
        to_provider.stop()
        chain.stop()


def _claims(authorization: str) -> dict[str, object]:
    """The claims of the token in an ``Authorization`` header (read, not checked)."""
    from connector.dsp.id_tokens import read_token

    return read_token(authorization).claims


def _layout(fed: dict[str, object]) -> dict[str, tuple[list[int], str]]:
    """The federation's tensors: the example model's (the test runs it; it is not a provider's code)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fl_example_model", EXAMPLE / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        name: (list(v.shape), str(v.numpy().dtype)) for name, v in module.make_model().state_dict().items()
    }
