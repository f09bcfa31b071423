"""What the scoring service reacts to: HANDLERS = {event type: handler}.

Purchases, refunds, complaint steps, registrations (referrals) and erasures. A whole consumer
batch is applied set-based by `PROCESS` (one transaction), and each customer it touches is
re-scored once; single events in the runner's slow path go through the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from services.scoring import service
from services.scoring.config import ScoringSettings
from shared.events import CloudEvent
from shared.messaging.consumer import BatchProcessor, Handler, HandlerContext


@cache
def _settings_from_environment() -> ScoringSettings:
    return ScoringSettings()


def make_process(settings: ScoringSettings | None = None) -> BatchProcessor:
    """The batch processor; without settings (e.g. `crm replay`) they come from the environment."""

    async def process(ctx: HandlerContext, events: Sequence[CloudEvent[Any]]) -> None:
        chosen = settings or _settings_from_environment()
        # The value events go to the outbox as they were built, with the values (see values.py),
        # not as CloudEvent models through ctx.emit: parsing and serialising them again cost
        # more than scoring.
        await service.apply_events(ctx.session, events, settings=chosen)

    return process


PROCESS = make_process()


async def on_event(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await PROCESS(ctx, [event])


HANDLERS: dict[str, Handler] = dict.fromkeys(service.CONSUMED_TYPES, on_event)
