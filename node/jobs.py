"""The training jobs' wiring: the services a node builds for jobs, and the workers that run them.

Kept apart from :mod:`node.runtime` because jobs are the one domain with two lives: every
node answers the job protocol and the users' job API (:func:`connect_jobs`, called when the
runtime is built), while only ``agora serve`` with ``AGORA_JOBS_WORKERS`` or ``agora worker``
runs the queued jobs (:func:`job_pool`), and that needs the sandbox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from marketplace.terms import ComputeTerms
from training_jobs.provider import NodeLimits, ProviderJobs
from training_jobs.services import JobService
from training_jobs.states import JobStates
from training_jobs.worker import JobPool

if TYPE_CHECKING:  # the runtime calls connect_jobs while it is built
    from node.runtime import Runtime


def connect_jobs(runtime: Runtime) -> None:
    """Training jobs: the provider's protocol side and the users' side, sharing one queue."""
    settings = runtime.settings
    assert runtime.agreements is not None
    states = JobStates(runtime.engine)
    runtime.job_provider = ProviderJobs(
        runtime.engine,
        runtime.store,
        states,
        agreements=runtime.agreements,
        offering_modes=lambda offering_id: list(runtime.offerings.get(offering_id).access_modes),
        provenance=runtime.provenance.document,
        sandbox=runtime.sandbox,
        limits=NodeLimits(
            cpu_seconds=settings.jobs_max_cpu_seconds,
            memory_bytes=int(settings.jobs_max_memory),
            wall_seconds=settings.jobs_max_wall_time,
            output_bytes=int(settings.jobs_max_output),
        ),
        # read whenever a consumer reads a job's log: the offering's terms as they are then
        offering_terms=lambda offering_id: ComputeTerms.of(runtime.offerings.compute_terms(offering_id)),
        wake_workers=lambda: runtime.job_pool.wake() if runtime.job_pool else None,
    )
    runtime.jobs = JobService(
        runtime.engine,
        runtime.store,
        states,
        address=runtime.address,
        peers=runtime.peer_clients,
        provenance=runtime.provenance.document,
        outbound=runtime.outbound,
        chain_rpc_url=settings.chain_rpc_url,
    )


def job_pool(runtime: Runtime, size: int, *, label: str = "") -> JobPool:
    """Workers running this node's queued jobs (in ``agora serve`` or ``agora worker``)."""
    from training_jobs.runner import JobRunner, RunnerConfig

    assert runtime.jobs is not None
    agreements = runtime.agreements
    assert agreements is not None
    settings = runtime.settings
    runner = JobRunner(
        runtime.engine,
        runtime.store,
        runtime.sandbox(),
        address=runtime.address,
        config=RunnerConfig(
            jobs_dir=settings.jobs_dir,
            holdout_fraction=settings.jobs_holdout_fraction,
            evaluator_image=settings.sandbox_evaluator_image or None,
        ),
        states=runtime.jobs.states,
        offering_kind=lambda offering_id: str(runtime.offerings.get(offering_id).kind),
        compute_terms=lambda offering_id: ComputeTerms.of(runtime.offerings.compute_terms(offering_id)),
        give_back=lambda agreement, reason: agreements.give_back(agreement, mode="compute", reason=reason),
        wake_notary=runtime.notary.wake,
    )
    return JobPool(runner, runtime.jobs.states, size, label=label)
