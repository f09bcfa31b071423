"""Profile worker: the outbox relay, the 360 projections' consumer and the order ingest consumer.

Runnable alone with `crm serve profile --role worker`. The two consumers have their own
consumer groups so that a burst of ingested orders never delays the 360 projections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from services.profile.config import ProfileSettings
from services.profile.handlers import (
    HANDLERS,
    INGESTED_ORDER,
    PROJECTION_DECODERS,
    PROJECTION_TOPICS,
    ingest_decoder,
    process_ingested_orders,
    process_projections,
)
from shared.events import topics
from shared.runtime import ServiceRuntime

INGEST_GROUP = "profile-ingest"


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    settings = runtime.settings
    assert isinstance(settings, ProfileSettings)
    projections = {t: h for t, h in HANDLERS.items() if t != INGESTED_ORDER}
    return [
        runtime.run_relay(),
        runtime.run_consumer(
            topics=PROJECTION_TOPICS,
            handlers=projections,
            process=process_projections,
            decoders=PROJECTION_DECODERS,
            emits=False,  # projections only: no customer locks, never waits for the writers
            read_model=True,
        ),
        runtime.run_consumer(
            topics=[topics.INGEST_ORDERS],
            handlers={INGESTED_ORDER: HANDLERS[INGESTED_ORDER]},
            process=process_ingested_orders,
            decoders={
                topics.INGEST_ORDERS: ingest_decoder(
                    base_currency=settings.base_currency,
                    clock=runtime.clock,
                    max_clock_skew=settings.max_clock_skew,
                )
            },
            group_id=INGEST_GROUP,
        ),
    ]
