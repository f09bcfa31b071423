"""Lifecycle worker: outbox relay, the consumer, the scheduled sweep of the time rules and the
runs asked for with `Prefer: respond-async` (`crm serve lifecycle --role worker`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from services.lifecycle import service
from services.lifecycle.config import LifecycleSettings
from services.lifecycle.handlers import HANDLERS, PROCESS
from services.lifecycle.schemas import EvaluationRead, EvaluationTrigger
from shared.events import registry
from shared.runtime import ServiceRuntime

SWEEP = "lifecycle-sweep"
REQUESTED = "lifecycle-requested-evaluations"


def sweep_job(runtime: ServiceRuntime) -> Callable[[], Awaitable[EvaluationRead]]:
    """The scheduled sweep: the time rules as of the runtime clock's now, then the retention of
    empty sweeps and of low scores whose customer never came."""
    settings = runtime.settings
    assert isinstance(settings, LifecycleSettings)

    retention = timedelta(hours=settings.empty_sweep_retention_hours)
    low_score_retention = timedelta(days=settings.low_score_retention_days)

    async def sweep() -> EvaluationRead:
        now = runtime.clock.now()
        run = await service.evaluate(
            runtime.sessions,
            as_of=now,
            requested_by=SWEEP,
            now=now,
            trigger=EvaluationTrigger.SCHEDULE,
            chunk_size=settings.sweep_chunk_size,
        )
        await service.prune_empty_sweeps(runtime.sessions, before=now - retention)
        await service.prune_early_low_scores(runtime.sessions, before=now - low_score_retention)
        return run

    return sweep


def requested_evaluations_job(runtime: ServiceRuntime) -> Callable[[], Awaitable[int]]:
    """The runs asked for with `Prefer: respond-async`, paced like the scheduled sweep (nobody
    waits on them, and the consumers keep going)."""
    settings = runtime.settings
    assert isinstance(settings, LifecycleSettings)

    async def requested() -> int:
        return await service.run_requested_evaluations(
            runtime.sessions, clock=runtime.clock, chunk_size=settings.sweep_chunk_size
        )

    return requested


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    settings = runtime.settings
    assert isinstance(settings, LifecycleSettings)
    topics = sorted({registry.topic_for(t) for t in HANDLERS})
    return [
        runtime.run_relay(),
        # Its batches read the policy: the runner takes the policy's lock with the customers'.
        runtime.run_consumer(
            topics=topics, handlers=HANDLERS, process=PROCESS, shared_locks=[service.POLICY_LOCK]
        ),
        runtime.run_periodic(SWEEP, settings.sweep_interval_seconds, sweep_job(runtime)),
        runtime.run_periodic(
            REQUESTED, settings.evaluation_poll_seconds, requested_evaluations_job(runtime)
        ),
    ]
