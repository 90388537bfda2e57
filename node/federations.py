"""Federated learning's wiring: the coordinator and provider services every node answers
with (:func:`connect_federations`, when the runtime is built), and the two workers ``agora
serve`` runs (:func:`start_federation_workers`): the round driver of the federations this
node coordinates and the local rounds of those it trains in."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from federation import tensors
from federation.coordinator import Coordinator
from federation.provider import ProviderFederations
from federation.spec import FederationSpec
from training_jobs import bundle as bundles
from training_jobs.provider import NodeLimits
from training_jobs.sandbox import Limits

if TYPE_CHECKING:
    from node.runtime import Runtime


def connect_federations(runtime: Runtime) -> None:
    settings = runtime.settings
    assert runtime.agreements is not None

    def wake_driver() -> None:
        if runtime.round_driver is not None:
            runtime.round_driver.wake()

    def wake_local() -> None:
        if runtime.local_rounds is not None:
            runtime.local_rounds.wake()

    runtime.federation_provider = ProviderFederations(
        runtime.engine,
        runtime.store,
        agreements=runtime.agreements,
        offering_modes=lambda offering_id: list(runtime.offerings.get(offering_id).access_modes),
        sandbox=runtime.sandbox,
        workdir=settings.home / "federations",
        holdout_fraction=settings.jobs_holdout_fraction,
        limits=NodeLimits(
            cpu_seconds=settings.jobs_max_cpu_seconds,
            memory_bytes=int(settings.jobs_max_memory),
            wall_seconds=settings.jobs_max_wall_time,
            output_bytes=int(settings.jobs_max_output),
        ),
        wake=wake_local,
    )
    runtime.coordinator = Coordinator(
        runtime.engine,
        runtime.store,
        address=runtime.address,
        peers=runtime.peer_clients,
        outbound=runtime.outbound,
        initial_weights=lambda spec, bundle: factory_weights(runtime, spec, bundle),
        provenance=runtime.provenance.document,
        wake_driver=wake_driver,
    )


def factory_weights(runtime: Runtime, spec: FederationSpec, bundle: bytes) -> tensors.Weights:
    """The bundle factory's initial weights on the spec's seed, built in this node's sandbox."""
    from federation.warm import initial_weights

    with tempfile.TemporaryDirectory(prefix="agora-fl-init-", dir=runtime.settings.home) as tmp:
        code = Path(tmp) / "code"
        bundles.unpack(bundle, code)
        return initial_weights(
            runtime.sandbox(),
            code,
            replace(spec.model.code(), client=None),  # the factory builds them; a client needs rows
            Limits(cpu_seconds=300, memory_bytes=3 * 1024**3, wall_seconds=300),
            Path(tmp) / "warm",
            seed=spec.model.seed,
            on_log=lambda role, line: None,
        )


def start_federation_workers(runtime: Runtime) -> None:
    from federation.final import finish
    from federation.local import LocalRounds
    from federation.rounds import RoundDriver

    assert runtime.coordinator is not None and runtime.federation_provider is not None
    assert runtime.agreements is not None
    coordinator = runtime.coordinator
    runtime.round_driver = RoundDriver(
        coordinator,
        finish=lambda federation_id: finish(
            coordinator, federation_id, _translate(runtime), runtime.notary.wake
        ),
        wake_notary=runtime.notary.wake,
    )
    runtime.local_rounds = LocalRounds(
        runtime.engine,
        runtime.store,
        runtime.federation_provider,
        agreements=runtime.agreements,
        sandbox=runtime.sandbox(),
        outbound=runtime.outbound,
        address=runtime.address,
        private_key=runtime.org_key,
        peers=runtime.peer_clients,
    )
    runtime.round_driver.start()
    runtime.local_rounds.start()


def _translate(runtime: Runtime):  # type: ignore[no-untyped-def]
    try:
        from federation.onnx_export import translator
    except ImportError:
        return None
    return translator(runtime)
