"""If-Match as RFC 9110 reads it: one ETag, a list of them, `*`, weak tags."""

from __future__ import annotations

import pytest

from shared.errors import PreconditionFailed
from shared.http.preconditions import ANY, etag, parse_if_match


def test_no_header_is_no_condition() -> None:
    assert parse_if_match(None, what="the customer") is None


@pytest.mark.parametrize(
    ("header", "admitted", "refused"),
    [
        ('"7"', [7], [6, 8]),
        ('W/"7"', [7], [6]),
        ("7", [7], [70]),  # unquoted, as some clients send it
        ('"3", "7"', [3, 7], [5]),
        (' W/"3" ,"7" ', [3, 7], [4]),
    ],
)
def test_the_versions_named_are_admitted_and_no_other(
    header: str, admitted: list[int], refused: list[int]
) -> None:
    condition = parse_if_match(header, what="the customer")
    assert condition is not None
    assert all(condition.admits(v) for v in admitted)
    assert not any(condition.admits(v) for v in refused)


def test_a_star_admits_whatever_version_is_current() -> None:
    condition = parse_if_match(" * ", what="the customer")
    assert condition is ANY
    assert condition.admits(1) and condition.admits(12345)


def test_a_prefix_is_part_of_the_etag() -> None:
    condition = parse_if_match('"policy-4"', prefix="policy-", what="the value model")
    assert condition is not None and condition.admits(4) and not condition.admits(5)
    assert etag(4, prefix="policy-") == '"policy-4"'
    with pytest.raises(PreconditionFailed, match="the value model"):
        parse_if_match('"4"', prefix="policy-", what="the value model")


@pytest.mark.parametrize(
    "header", ['"abc"', '""', '"7", "x"', '"-1"', '"٣"', '"²"', "", '"7', '"' + "1" * 5000 + '"']
)
def test_an_etag_this_api_never_issued_is_a_412_that_says_what_to_send(header: str) -> None:
    with pytest.raises(PreconditionFailed) as failure:
        parse_if_match(header, what="the complaint")
    assert "the complaint" in str(failure.value) and '"1"' in str(failure.value)
    assert failure.value.status == 412
