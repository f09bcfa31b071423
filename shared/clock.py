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


#: The business times the platform stores. asyncpg writes 0001-01-01T00:00:00Z and
#: 9999-12-31T23:59:59.999999Z as PostgreSQL's -infinity and infinity and reads those back
#: without an offset; and the rules add targets, pauses and thresholds of up to a few years.
#: No customer bought anything before 1900.
EARLIEST_BUSINESS_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_BUSINESS_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def business_time_problem(moment: datetime) -> str | None:
    """Why an aware datetime is no business time the platform can store (None: it is one).
    `0001-01-01T00:00:00+14:00` is valid RFC 3339 but has no UTC datetime at all."""
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        return "is out of range: in UTC it falls outside years 1-9999"
    if not EARLIEST_BUSINESS_TIME <= in_utc < LATEST_BUSINESS_TIME:
        return (
            f"must be from {EARLIEST_BUSINESS_TIME.isoformat()} and before "
            f"{LATEST_BUSINESS_TIME.isoformat()}"
        )
    return None


def future_time_problem(moment: datetime, *, now: datetime, max_ahead: timedelta) -> str | None:
    """Why a business time lies too far in the future to be accepted (None: it does not)."""
    if moment <= now + max_ahead:
        return None
    return (
        f"{moment.isoformat()} is in the future; at most {max_ahead} after the server's clock "
        f"({now.astimezone(UTC).isoformat()}) is accepted"
    )
