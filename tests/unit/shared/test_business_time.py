"""The business times the platform stores (shared.clock.business_time_problem), and how far
ahead of the clock the rules may be run (shared.http.inputs.rules_as_of)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from shared.clock import business_time_problem
from shared.errors import InvalidInput
from shared.http.inputs import BusinessTime, StorableText, rules_as_of
from shared.settings import ServiceSettings


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


def test_the_rules_run_at_most_the_allowed_skew_ahead_of_the_clock() -> None:
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    settings = ServiceSettings()
    assert settings.max_future_as_of_seconds == 300  # the production default: clock skew
    assert rules_as_of(None, now=now, settings=settings, what="x") == now
    edge = now + timedelta(minutes=5)
    assert rules_as_of(edge, now=now, settings=settings, what="x") == edge
    past = datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert rules_as_of(past, now=now, settings=settings, what="x") == past

    with pytest.raises(InvalidInput) as refused:
        rules_as_of(
            edge + timedelta(microseconds=1), now=now, settings=settings, what="the escalations"
        )
    ((error,),) = [refused.value.errors]
    assert error["field"] == "body.as_of"
    assert "in the future" in error["reason"] and "0:05:00" in error["reason"]
    assert "the escalations would be dated in the future" in error["reason"]
    assert "MAX_FUTURE_AS_OF_SECONDS" in error["reason"]

    simulation = ServiceSettings(MAX_FUTURE_AS_OF_SECONDS=365 * 86_400)
    far = now + timedelta(days=300)
    assert rules_as_of(far, now=now, settings=simulation, what="x") == far
