"""Profile worker: outbox relay and consumers (runnable alone with `crm serve profile --role worker`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from services.profile.handlers import HANDLERS
from shared.events import registry, topics
from shared.runtime import ServiceRuntime


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    jobs: list[Awaitable[None]] = [runtime.run_relay()]
    if HANDLERS:
        wanted = sorted({registry.topic_for(t) for t in HANDLERS if t in registry.EVENTS})
        jobs.append(runtime.run_consumer(topics=wanted or [topics.CUSTOMERS], handlers=HANDLERS))
    return jobs
