"""Scoring worker: outbox relay, consumers, scheduled rules (`crm serve scoring --role worker`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from services.scoring.handlers import HANDLERS
from shared.events import registry
from shared.runtime import ServiceRuntime


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    topics = sorted({registry.topic_for(t) for t in HANDLERS})
    return [runtime.run_relay(), runtime.run_consumer(topics=topics, handlers=HANDLERS)]
