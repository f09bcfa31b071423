"""Contact data normalisation and masking of personal fields."""

import pytest

from services.profile.domain import (
    ERASED_FIELDS,
    PERSONAL_FIELDS,
    Address,
    RuleViolation,
    mask_address,
    mask_email,
    mask_name,
    mask_phone,
    normalise_address,
    normalise_channel,
    normalise_email,
    normalise_external_ref,
    normalise_name,
    normalise_phone,
    normalise_tags,
    validate_custom_attributes,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane.Doe@Example.COM \n", "jane.doe@example.com"),
        ("JANE+news@example.org", "jane+news@example.org"),
        ("jane.doe@sub.example.co.uk", "jane.doe@sub.example.co.uk"),
    ],
)
def test_email_is_trimmed_and_lower_cased_whole(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


def test_email_keeps_dots_and_plus_tags_apart() -> None:
    assert normalise_email("j.doe@example.com") != normalise_email("jdoe@example.com")
    assert normalise_email("jdoe+a@example.com") != normalise_email("jdoe@example.com")


def test_internationalised_domain_is_kept_in_unicode_and_lower_case() -> None:
    assert normalise_email("Zoë@Exämple.DE") == "zoë@exämple.de"


@pytest.mark.parametrize(
    "raw", ["", "   ", "jane", "jane@", "@example.com", "jane@@example.com", "jane@localhost"]
)
def test_malformed_email_is_refused_on_the_email_field(raw: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        normalise_email(raw)
    assert caught.value.problems[0].loc == ("email",)
    assert "not a valid e-mail address" in caught.value.problems[0].message


def test_reserved_test_domain_is_refused() -> None:
    with pytest.raises(RuleViolation, match="special-use or reserved"):
        normalise_email("jane@shop.test")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 20 7946 0958", None, "+442079460958"),
        ("+1 (202) 555-0173", None, "+12025550173"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0033 6 12 34 56 78", "GB", "+33612345678"),
        ("+33 6 12 34 56 78", "US", "+33612345678"),
    ],
)
def test_phone_is_stored_in_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalise_phone(raw, default_region=region) == expected


def test_national_phone_without_a_region_asks_for_the_country_code() -> None:
    with pytest.raises(RuleViolation, match=r"start it with \+ and the country code"):
        normalise_phone("020 7946 0958")


@pytest.mark.parametrize("raw", ["+44 20 7946", "+1 555 0100", "not a phone", "+999 1234567"])
def test_invalid_phone_is_refused(raw: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        normalise_phone(raw)
    assert caught.value.problems[0].loc == ("phone",)


def test_name_is_trimmed_and_whitespace_collapsed() -> None:
    assert normalise_name("  Jane \t  van  Doe ") == "Jane van Doe"


@pytest.mark.parametrize("raw", ["", "   ", "x" * 201, "Jane\x00Doe"])
def test_bad_names_are_refused(raw: str) -> None:
    with pytest.raises(RuleViolation):
        normalise_name(raw)


def test_external_ref_keeps_case_but_not_surrounding_space() -> None:
    assert normalise_external_ref("  Shop-42 ") == "Shop-42"
    with pytest.raises(RuleViolation, match="at most 128"):
        normalise_external_ref("r" * 129)


def test_channel_is_a_lower_case_slug() -> None:
    assert normalise_channel(" Call_Centre ") == "call_centre"
    with pytest.raises(RuleViolation, match="is not a channel"):
        normalise_channel("call centre")


def test_tags_are_lower_cased_and_deduplicated_in_first_seen_order() -> None:
    assert normalise_tags(["VIP", " newsletter ", "vip", "b2b"]) == ("vip", "newsletter", "b2b")


def test_tags_report_each_bad_one_and_the_count_limit() -> None:
    with pytest.raises(RuleViolation) as caught:
        normalise_tags(["ok", " ", "x" * 65])
    assert [problem.loc for problem in caught.value.problems] == [("tags", 1), ("tags", 2)]
    with pytest.raises(RuleViolation, match="at most 50 tags, got 51"):
        normalise_tags([f"t{n}" for n in range(51)])


def test_custom_attributes_within_limits_pass_unchanged() -> None:
    attributes = {"segment": "b2b", "seats": 12, "nested": {"a": [1, 2, {"b": None}]}}
    assert validate_custom_attributes(attributes) == attributes


def test_custom_attributes_over_the_size_limit_name_their_size() -> None:
    with pytest.raises(RuleViolation, match=r"takes \d+ bytes as JSON; at most 100 allowed"):
        validate_custom_attributes({"note": "x" * 200}, max_bytes=100)


def test_custom_attributes_too_deep_or_not_json_are_refused() -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(5):
        deep = {"level": deep}
    with pytest.raises(RuleViolation, match="nesting depth 6 exceeds 5"):
        validate_custom_attributes(deep)
    with pytest.raises(RuleViolation, match="plain JSON"):
        validate_custom_attributes({"when": object()})
    with pytest.raises(RuleViolation, match="plain JSON"):
        validate_custom_attributes({"ratio": float("nan")})


def test_address_is_trimmed_and_country_upper_cased() -> None:
    address = normalise_address(
        Address(line1=" 1  High Street ", city="London ", country="gb", postal_code=" ")
    )
    assert address == Address(line1="1 High Street", city="London", country="GB")


def test_address_reports_every_missing_part() -> None:
    with pytest.raises(RuleViolation) as caught:
        normalise_address(Address(line1=" ", city="", country="England"))
    assert {problem.loc for problem in caught.value.problems} == {
        ("address", "line1"),
        ("address", "city"),
        ("address", "country"),
    }


def test_personal_fields_are_named_and_all_erased() -> None:
    assert set(PERSONAL_FIELDS) == {"name", "email", "phone", "addresses"}
    assert set(PERSONAL_FIELDS) < set(ERASED_FIELDS)
    assert "external_ref" in ERASED_FIELDS


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("jane.doe@example.com", "j***@example.com"),
        ("j@example.com", "j***@example.com"),
        (None, None),
        ("", ""),
    ],
)
def test_email_mask_keeps_initial_and_domain(email: str | None, masked: str | None) -> None:
    assert mask_email(email) == masked


def test_name_mask_reveals_neither_rest_nor_length() -> None:
    assert mask_name("Jane Doe") == "J***"
    assert mask_name("Jo") == mask_name("Jonathan") == "J***"
    assert mask_name(None) is None


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+442079460958", "+44 *******958"),
        ("+12025550173", "+1 *******173"),
        ("+33612345678", "+33 ******678"),
        ("+352621123456", "+352 ******456"),
    ],
)
def test_phone_mask_keeps_country_code_and_last_three_digits(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


def test_unparseable_legacy_phone_is_still_masked() -> None:
    assert mask_phone("12345678") == "*****678"
    assert mask_phone("12345") == "*****"
    assert mask_phone(None) is None


def test_address_mask_hides_street_and_postcode_but_keeps_country() -> None:
    address = Address(
        line1="1 High Street",
        line2="Flat 2",
        city="London",
        country="GB",
        postal_code="SW1A 1AA",
        kind="home",
    )
    masked = mask_address(address)
    assert masked == Address(
        line1="***", line2="***", city="L***", country="GB", postal_code="***", kind="home"
    )
    assert mask_address(Address(line1="x", city="Paris", country="FR")).line2 is None
