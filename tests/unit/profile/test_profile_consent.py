"""Consent per purpose: changes, history-friendly records, and when an event is due."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.profile.domain import (
    ConsentChange,
    ConsentPurpose,
    ConsentRecord,
    ConsentStatus,
    RuleViolation,
    change_consents,
    is_consent_granted,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
GRANTED, WITHDRAWN = ConsentStatus.granted, ConsentStatus.withdrawn
EMAIL, SMS = ConsentPurpose.marketing_email, ConsentPurpose.marketing_sms


def test_the_four_purposes_are_the_contract() -> None:
    assert {purpose.value for purpose in ConsentPurpose} == {
        "marketing_email",
        "marketing_sms",
        "profiling",
        "third_party_sharing",
    }


def test_first_answers_are_changes_from_nothing() -> None:
    outcome = change_consents({}, {EMAIL: GRANTED, SMS: WITHDRAWN}, at=T0, source="web_form")
    assert outcome.event_due
    assert outcome.changes == (
        ConsentChange(EMAIL, None, GRANTED, T0, "web_form"),
        ConsentChange(SMS, None, WITHDRAWN, T0, "web_form"),
    )
    assert outcome.state[EMAIL] == ConsentRecord(EMAIL, GRANTED, T0, "web_form")
    assert is_consent_granted(outcome.state, EMAIL)
    assert not is_consent_granted(outcome.state, SMS)


def test_never_asked_is_not_granted() -> None:
    assert not is_consent_granted({}, ConsentPurpose.profiling)


def test_withdrawal_records_previous_status_time_and_source() -> None:
    granted = change_consents({}, {EMAIL: GRANTED}, at=T0, source="web_form").state
    later = T0 + timedelta(days=3)
    outcome = change_consents(granted, {EMAIL: WITHDRAWN}, at=later, source="unsubscribe_link")
    assert outcome.changes == (ConsentChange(EMAIL, GRANTED, WITHDRAWN, later, "unsubscribe_link"),)
    assert outcome.state[EMAIL] == ConsentRecord(EMAIL, WITHDRAWN, later, "unsubscribe_link")
    # the input state is left untouched: callers can keep it as history
    assert granted[EMAIL].status is GRANTED


def test_repeating_the_same_answer_changes_nothing_and_keeps_the_original_record() -> None:
    state = change_consents({}, {EMAIL: GRANTED}, at=T0, source="web_form").state
    outcome = change_consents(state, {EMAIL: GRANTED}, at=T0 + timedelta(days=1), source="api")
    assert not outcome.event_due
    assert outcome.changes == ()
    assert outcome.state[EMAIL] == ConsentRecord(EMAIL, GRANTED, T0, "web_form")


def test_only_the_purposes_that_moved_are_reported() -> None:
    state = change_consents({}, {EMAIL: GRANTED, SMS: GRANTED}, at=T0, source="web").state
    outcome = change_consents(
        state, {EMAIL: GRANTED, SMS: WITHDRAWN}, at=T0 + timedelta(hours=1), source="web"
    )
    assert [change.purpose for change in outcome.changes] == [SMS]
    assert outcome.state[EMAIL].changed_at == T0


def test_a_request_older_than_the_recorded_answer_is_stale() -> None:
    state = change_consents({}, {EMAIL: WITHDRAWN}, at=T0, source="call_centre").state
    outcome = change_consents(state, {EMAIL: GRANTED}, at=T0 - timedelta(days=30), source="import")
    assert not outcome.event_due
    assert outcome.state[EMAIL].status is WITHDRAWN


def test_changed_at_is_stored_in_utc() -> None:
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    outcome = change_consents({}, {EMAIL: GRANTED}, at=local, source=" web ")
    assert outcome.state[EMAIL].changed_at == T0
    assert outcome.state[EMAIL].changed_at.tzinfo is UTC
    assert outcome.state[EMAIL].source == "web"


def test_naive_time_and_blank_source_are_refused() -> None:
    with pytest.raises(RuleViolation, match="UTC offset"):
        change_consents({}, {EMAIL: GRANTED}, at=datetime(2024, 5, 1), source="web")
    with pytest.raises(RuleViolation, match="source: must be 1-64 characters"):
        change_consents({}, {EMAIL: GRANTED}, at=T0, source="  ")
