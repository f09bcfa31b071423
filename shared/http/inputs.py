"""Input types for what PostgreSQL can store, used by every service's request schemas.

Valid JSON and valid RFC 3339 are not always storable: PostgreSQL's text and jsonb refuse the
NUL character; JSON may escape half of a surrogate pair (`"\\udfff"`), which has no UTF-8, so
asyncpg cannot send it; and `0001-01-01T00:00:00+14:00` has no UTC datetime (asyncpg converts
to UTC and overflows). All used to reach the database and come back as a 500; these types
make them a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

from shared.clock import business_time_problem, future_time_problem
from shared.errors import InvalidInput
from shared.settings import ServiceSettings
from shared.text import unstorable_text_problem


def storable_text(value: str) -> str:
    problem = unstorable_text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def storable_time(value: datetime) -> datetime:
    problem = business_time_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


#: Free text PostgreSQL can store (no U+0000, no lone surrogate).
StorableText = Annotated[str, AfterValidator(storable_text)]
#: A business time from a client (`as_of`, `received_at`, ...): with an offset, from 1900 and
#: before year 9000 in UTC (`shared.clock.business_time_problem`).
BusinessTime = Annotated[AwareDatetime, AfterValidator(storable_time)]


def rules_as_of(
    requested: datetime | None, *, now: datetime, settings: ServiceSettings, what: str
) -> datetime:
    """The business time to run a service's rules at: `now`, or the `as_of` asked for, which
    may lie at most `MAX_FUTURE_AS_OF_SECONDS` ahead (what the rules record at it is dated
    then, and published): a 422 on `body.as_of` otherwise, before anything is written."""
    if requested is None:
        return now
    if problem := as_of_too_far_ahead(requested, now=now, settings=settings):
        raise InvalidInput.field(
            "body.as_of",
            f"{problem}: {what} would be dated in the future. Use a time up to now; a test or "
            "simulation stack can allow more with MAX_FUTURE_AS_OF_SECONDS",
        )
    return requested


def as_of_too_far_ahead(
    requested: datetime, *, now: datetime, settings: ServiceSettings
) -> str | None:
    """Why an `as_of` lies past the `MAX_FUTURE_AS_OF_SECONDS` allowance (None: it does not),
    for the rules that would write at it and the reads of what they wrote."""
    max_ahead = timedelta(seconds=settings.max_future_as_of_seconds)
    return future_time_problem(requested, now=now, max_ahead=max_ahead)
