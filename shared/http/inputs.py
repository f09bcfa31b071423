"""Input types for what PostgreSQL can store, used by every service's request schemas.

Valid JSON and valid RFC 3339 are not always storable: PostgreSQL's text and jsonb refuse the
NUL character, and `0001-01-01T00:00:00+14:00` has no UTC datetime (asyncpg converts to UTC
and overflows). Both used to reach the database and come back as a 500; these types make them
a 422 naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

#: Business times stay well inside Python's datetimes, so that the rules' arithmetic (SLA
#: targets, pauses, lapse thresholds: each under a few years) cannot leave them.
LATEST_BUSINESS_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


def storable_time(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None
    if in_utc >= LATEST_BUSINESS_TIME:
        raise ValueError(f"must be before {LATEST_BUSINESS_TIME.isoformat()}")
    return value


#: Free text PostgreSQL can store (no U+0000).
StorableText = Annotated[str, AfterValidator(storable_text)]
#: A business time from a client (`as_of`, `received_at`, ...): with an offset, with a UTC
#: datetime, before year 9000.
BusinessTime = Annotated[AwareDatetime, AfterValidator(storable_time)]
