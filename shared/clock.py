"""Time as a dependency: rules take `now`/`as_of`, entry points take a Clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC. Only entry points (HTTP, workers) should hold one."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to: for tests and replays."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> datetime:
        return self._at

    def set(self, at: datetime) -> None:
        self._at = at

    def advance(self, delta: timedelta) -> datetime:
        self._at += delta
        return self._at


def utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; refuse naive ones (they have no business meaning)."""
    if value.tzinfo is None:
        raise ValueError("datetime must be timezone-aware (RFC 3339 with offset)")
    return value.astimezone(UTC)
