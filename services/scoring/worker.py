"""Scoring worker: outbox relay, the event consumer, requested and nightly recomputes.

Runnable alone with `crm serve scoring --role worker`. Recomputes run on one replica at a
time (the periodic job's advisory lock); the consumer keeps scoring while they run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from services.scoring import recompute as batch
from services.scoring.config import ScoringSettings
from services.scoring.handlers import HANDLERS, make_process
from shared.db import transaction
from shared.events import registry
from shared.runtime import ServiceRuntime


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    settings = runtime.settings
    assert isinstance(settings, ScoringSettings)
    topics = sorted({registry.topic_for(t) for t in HANDLERS})

    async def recompute() -> int:
        async with transaction(runtime.sessions) as session:
            await batch.schedule_nightly_recompute(
                session, settings=settings, now=runtime.clock.now()
            )
        return await batch.run_pending_recomputes(
            runtime.sessions, settings=settings, clock=runtime.clock
        )

    return [
        runtime.run_relay(),
        runtime.run_consumer(topics=topics, handlers=HANDLERS, process=make_process(settings)),
        runtime.run_periodic("recompute", settings.recompute_poll_seconds, recompute),
    ]
