"""The business times the platform stores (shared.clock.business_time_problem)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from shared.clock import business_time_problem
from shared.http.inputs import BusinessTime, StorableText


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(hours=-14))),
        datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_times_a_customer_can_have_are_business_times(moment: datetime) -> None:
    assert business_time_problem(moment) is None


@pytest.mark.parametrize(
    ("moment", "reason"),
    [
        # no UTC datetime at all
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), "out of range"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14))), "out of range"),
        # asyncpg's -infinity and infinity
        (datetime(1, 1, 1, tzinfo=UTC), "must be from 1900"),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "before 9000"),
        (datetime(1899, 12, 31, 23, 59, 59, tzinfo=UTC), "must be from 1900"),
    ],
)
def test_times_outside_them_say_why(moment: datetime, reason: str) -> None:
    problem = business_time_problem(moment)
    assert problem is not None and reason in problem


class _Body(BaseModel):
    at: BusinessTime
    note: StorableText


def test_the_input_types_are_422s_naming_the_field() -> None:
    assert _Body.model_validate({"at": "2026-01-01T00:00:00Z", "note": "fine\n"}).note == "fine\n"
    with pytest.raises(ValidationError) as refused:
        _Body.model_validate({"at": "0001-01-01T00:00:00Z", "note": "a\x00b"})
    assert {e["loc"] for e in refused.value.errors()} == {("at",), ("note",)}
    with pytest.raises(ValidationError, match="timezone"):
        _Body.model_validate({"at": "2026-01-01T00:00:00", "note": "naive"})
