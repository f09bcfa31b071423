"""Lifecycle worker: outbox relay, consumers, scheduled rules (`crm serve lifecycle --role worker`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from services.lifecycle.handlers import HANDLERS
from shared.events import registry
from shared.runtime import ServiceRuntime


def start(runtime: ServiceRuntime) -> Sequence[Awaitable[None]]:
    topics = sorted({registry.topic_for(t) for t in HANDLERS})
    return [runtime.run_relay(), runtime.run_consumer(topics=topics, handlers=HANDLERS)]
