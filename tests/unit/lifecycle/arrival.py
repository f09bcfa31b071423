"""How events of two topics reach the lifecycle: each topic in its own order of business time,
the two interleaved arbitrarily (Kafka keeps the order within a topic, not across topics)."""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")


def interleaved(draw: st.DrawFn, first: list[T], second: list[T]) -> list[T]:
    """An arrival order of the two topics' events, each topic's order kept."""
    topics = [list(first), list(second)]
    picks = draw(st.lists(st.booleans(), min_size=len(first) + len(second)))
    arrival: list[T] = []
    for pick in picks:
        source = topics[0] if (pick and topics[0]) or not topics[1] else topics[1]
        if source:
            arrival.append(source.pop(0))
    return arrival + topics[0] + topics[1]
