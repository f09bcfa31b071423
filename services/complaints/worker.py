"""Complaints worker: outbox relay, consumers, the SLA checker (`crm serve complaints --role worker`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from services.complaints import service
from services.complaints.config import ComplaintsSettings
from services.complaints.handlers import HANDLERS, PROCESS
from services.complaints.schemas import SlaRun
from shared.events import registry
from shared.runtime import ServiceRuntime


def sla_job(runtime: ServiceRuntime) -> Callable[[], Awaitable[SlaRun]]:
    """The scheduled SLA checker: escalations due at the runtime clock's now."""
    settings = runtime.settings
    assert isinstance(settings, ComplaintsSettings)

    async def check_sla() -> SlaRun:
        return await service.evaluate_sla(
            runtime.sessions, as_of=runtime.clock.now(), batch_size=settings.sla_check_batch_size
        )

    return check_sla


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    settings = runtime.settings
    assert isinstance(settings, ComplaintsSettings)
    topics = sorted({registry.topic_for(t) for t in HANDLERS})
    return [
        runtime.run_relay(),
        # Customers and their tiers: read models, whose changes need no hurry.
        runtime.run_consumer(topics=topics, handlers=HANDLERS, process=PROCESS, read_model=True),
        runtime.run_periodic("sla-check", settings.sla_check_interval_seconds, sla_job(runtime)),
    ]
