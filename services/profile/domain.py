"""Pure rules of the profile service.

Contact data (e-mail, phone, names, addresses, tags, custom attributes), masking of personal
data, consent, purchases, refunds, interactions, CSV import rows and orders ingested from
other systems. Nothing here does I/O or reads the clock: callers pass `now`.

Decisions worth knowing (see also the docstrings):
- E-mail addresses are stored lower-cased, local part included: mailbox providers treat the
  local part case-insensitively in practice and duplicates must be caught. Dots and `+tags`
  are kept (merging them is provider-specific and would fuse different people).
- Phones are parsed and validated with `phonenumbers` (Google's libphonenumber metadata) and
  stored in E.164 (`+447911123456`); a number without `+` needs a default region.
- Money is `Decimal` with at most the currency's ISO 4217 minor units (USD 2, JPY 0, KWD 3).
- A consent change dated before the recorded one is stale and ignored (business time wins).
- CSV import: a row's amount is that line's total; rows sharing an `order_id` form one order
  whose amount is their sum; an order is imported whole or not at all.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.clock import business_time_problem, future_time_problem
from shared.events.payloads import (  # they belong to the event contract (consent_changed)
    ConsentPurpose,
    ConsentStatus,
)
from shared.money import in_minor_units, minor_units, quantum
from shared.text import unstorable_text_in

# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One broken rule, located like Pydantic locates errors (`("items", 0, "quantity")`)."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        where = ".".join(str(part) for part in self.loc)
        return f"{where}: {self.message}" if where else self.message


class RuleViolation(ValueError):
    """Input breaks one or more profile rules; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        if not problems:
            raise ValueError("a RuleViolation needs at least one problem")
        self.problems: tuple[FieldProblem, ...] = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    @classmethod
    def single(cls, loc: Loc, message: str) -> RuleViolation:
        return cls([FieldProblem(loc, message)])


class RefundExceedsPaid(RuleViolation):
    """A refund larger than what is still refundable on the order."""

    def __init__(
        self,
        *,
        order_id: str,
        requested: Decimal,
        paid: Decimal,
        already_refunded: Decimal,
        currency: str,
    ) -> None:
        self.order_id = order_id
        self.requested = requested
        self.paid = paid
        self.already_refunded = already_refunded
        self.refundable = max(paid - already_refunded, Decimal(0))
        money = _money_formatter(currency)
        super().__init__(
            [
                FieldProblem(
                    ("amount",),
                    f"refund of {money(requested)} {currency} exceeds what is refundable on "
                    f"order {order_id!r}: paid {money(paid)}, already refunded "
                    f"{money(already_refunded)}, so at most {money(self.refundable)} {currency}",
                )
            ]
        )


class CsvHeaderError(RuleViolation):
    """The CSV file cannot be read at all (missing or malformed header)."""


# ---------------------------------------------------------------------------------------
# Contact data
# ---------------------------------------------------------------------------------------

MAX_NAME_LENGTH: Final = 200
MAX_EXTERNAL_REF_LENGTH: Final = 128
MAX_TAGS: Final = 50
MAX_TAG_LENGTH: Final = 64
MAX_CUSTOM_ATTRIBUTES_BYTES: Final = 16 * 1024
MAX_CUSTOM_ATTRIBUTES_DEPTH: Final = 5
MAX_CHANNEL_LENGTH: Final = 32

_WHITESPACE = re.compile(r"\s+")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _has_control_characters(text: str) -> bool:
    # isprintable() is a C-speed pass for the usual text; it also refuses harmless
    # separators such as a no-break space, so only then look at the categories.
    if text.isprintable():
        return False
    return any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in text)


#: Line breaks and tabs are fine in free text (summaries, reasons); other control characters
#: are not, NUL above all: PostgreSQL can store it in neither text nor JSON.
_LINE_BREAKS = str.maketrans("", "", "\n\r\t")


def _has_control_characters_besides_line_breaks(text: str) -> bool:
    return _has_control_characters(text.translate(_LINE_BREAKS))


def search_term_problems(term: str, loc: Loc = ("q",)) -> list[FieldProblem]:
    """A search term can match nothing stored when it holds control characters (names, e-mails,
    references and phones refuse them), and PostgreSQL cannot take NUL in a query at all."""
    if _has_control_characters(term):
        return [FieldProblem(loc, "must not contain control characters")]
    return []


def normalise_email(raw: str) -> str:
    """Trim, validate (syntax only, no DNS) and lower-case the whole address.

    Raises `RuleViolation` on `("email",)` with email-validator's explanation.
    """
    candidate = raw.strip()
    try:
        # Deliverability needs DNS, which is I/O; syntax and reserved domains are checked.
        validated = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as error:
        raise RuleViolation.single(
            ("email",), f"{candidate!r} is not a valid e-mail address: {error}"
        ) from error
    return validated.normalized.lower()


def normalise_phone(raw: str, *, default_region: str | None = None) -> str:
    """Parse a phone number and return it in E.164 (`+447911123456`).

    `default_region` (ISO 3166 alpha-2, e.g. `GB`) lets national numbers without `+` be
    read; without it a number must start with `+` and its country code. The number must be
    valid for its country per libphonenumber's metadata, which catches missing digits.
    """
    candidate = raw.strip()
    try:
        number = phonenumbers.parse(candidate, default_region)
    except phonenumbers.NumberParseException as error:
        hint = (
            "start it with + and the country code"
            if error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
            else str(error)
        )
        raise RuleViolation.single(
            ("phone",), f"{candidate!r} is not a phone number: {hint}"
        ) from error
    if not phonenumbers.is_valid_number(number):
        raise RuleViolation.single(
            ("phone",), f"{candidate!r} is not a valid phone number for its country"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_name(raw: str, *, loc: Loc = ("name",)) -> str:
    """Trim and collapse inner whitespace; 1-200 characters, no control characters."""
    name = _WHITESPACE.sub(" ", raw).strip()
    if not name:
        raise RuleViolation.single(loc, "must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise RuleViolation.single(loc, f"must be at most {MAX_NAME_LENGTH} characters")
    if _has_control_characters(name):
        raise RuleViolation.single(loc, "must not contain control characters")
    return name


def normalise_external_ref(raw: str, *, loc: Loc = ("external_ref",)) -> str:
    """An identifier from another system: trimmed, kept case-sensitive, 1-128 characters."""
    ref = raw.strip()
    if not ref:
        raise RuleViolation.single(loc, "must not be empty")
    if len(ref) > MAX_EXTERNAL_REF_LENGTH:
        raise RuleViolation.single(loc, f"must be at most {MAX_EXTERNAL_REF_LENGTH} characters")
    if _has_control_characters(ref):
        raise RuleViolation.single(loc, "must not contain control characters")
    return ref


def normalise_channel(raw: str, *, loc: Loc = ("channel",)) -> str:
    """A channel label (`web`, `store`, `call_centre`): lower-case slug, 1-32 characters."""
    channel = raw.strip().lower()
    if not channel or len(channel) > MAX_CHANNEL_LENGTH or not _CHANNEL.match(channel):
        raise RuleViolation.single(
            loc,
            f"{raw!r} is not a channel: use 1-{MAX_CHANNEL_LENGTH} characters "
            "of a-z, 0-9, '_', '-', '.'",
        )
    return channel


def normalise_tags(raw: Iterable[str]) -> tuple[str, ...]:
    """Trim and lower-case tags, drop duplicates (first occurrence kept), at most 50."""
    tags: dict[str, None] = {}
    problems: list[FieldProblem] = []
    for index, raw_tag in enumerate(raw):
        tag = _WHITESPACE.sub(" ", raw_tag).strip().lower()
        if not tag:
            problems.append(FieldProblem(("tags", index), "must not be empty"))
        elif len(tag) > MAX_TAG_LENGTH:
            problems.append(
                FieldProblem(("tags", index), f"must be at most {MAX_TAG_LENGTH} characters")
            )
        elif _has_control_characters(tag):
            problems.append(FieldProblem(("tags", index), "must not contain control characters"))
        else:
            tags[tag] = None
    if len(tags) > MAX_TAGS:
        problems.append(FieldProblem(("tags",), f"at most {MAX_TAGS} tags, got {len(tags)}"))
    if problems:
        raise RuleViolation(problems)
    return tuple(tags)


def validate_custom_attributes(
    attributes: Mapping[str, Any], *, max_bytes: int = MAX_CUSTOM_ATTRIBUTES_BYTES
) -> dict[str, Any]:
    """Custom attributes are a JSON object of at most `max_bytes` (UTF-8) and depth 5."""
    loc: Loc = ("custom_attributes",)
    depth = _json_depth(attributes)
    if depth > MAX_CUSTOM_ATTRIBUTES_DEPTH:
        raise RuleViolation.single(
            loc, f"nesting depth {depth} exceeds {MAX_CUSTOM_ATTRIBUTES_DEPTH}"
        )
    try:
        encoded = json.dumps(attributes, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise RuleViolation.single(loc, f"must be plain JSON: {error}") from error
    problem = unstorable_text_in(attributes)
    if problem is not None:  # before the size: a lone surrogate has no UTF-8
        raise RuleViolation.single(loc, problem)
    size = len(encoded.encode())
    if size > max_bytes:
        raise RuleViolation.single(loc, f"takes {size} bytes as JSON; at most {max_bytes} allowed")
    if any(not isinstance(key, str) or not key.strip() for key in attributes):
        raise RuleViolation.single(loc, "keys must be non-empty strings")
    return dict(attributes)


def _json_depth(value: object) -> int:
    if isinstance(value, Mapping):
        return 1 + max((_json_depth(item) for item in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((_json_depth(item) for item in value), default=0)
    return 0


@dataclass(frozen=True, slots=True)
class Address:
    """A postal address; `kind` says what it is for (`home`, `billing`, `shipping`...)."""

    line1: str
    city: str
    country: str  # ISO 3166-1 alpha-2
    line2: str | None = None
    postal_code: str | None = None
    region: str | None = None
    kind: str | None = None


_COUNTRY = re.compile(r"^[A-Z]{2}$")


def normalise_address(address: Address, *, loc: Loc = ("address",)) -> Address:
    """Trim every part; line1, city and an ISO 3166 alpha-2 country are required."""
    problems: list[FieldProblem] = []

    def required(value: str, name: str) -> str:
        text = _WHITESPACE.sub(" ", value).strip()
        if not text:
            problems.append(FieldProblem((*loc, name), "must not be empty"))
        elif len(text) > MAX_NAME_LENGTH:
            problems.append(
                FieldProblem((*loc, name), f"must be at most {MAX_NAME_LENGTH} characters")
            )
        elif _has_control_characters(text):
            problems.append(FieldProblem((*loc, name), "must not contain control characters"))
        return text

    def optional(value: str | None, name: str) -> str | None:
        if value is None or not value.strip():
            return None
        return required(value, name)

    country = address.country.strip().upper()
    if not _COUNTRY.match(country):
        problems.append(
            FieldProblem((*loc, "country"), f"{address.country!r} is not an ISO 3166 alpha-2 code")
        )
    normalised = Address(
        line1=required(address.line1, "line1"),
        city=required(address.city, "city"),
        country=country,
        line2=optional(address.line2, "line2"),
        postal_code=optional(address.postal_code, "postal_code"),
        region=optional(address.region, "region"),
        kind=optional(address.kind, "kind"),
    )
    if problems:
        raise RuleViolation(problems)
    return normalised


# ---------------------------------------------------------------------------------------
# Personal data: which fields, and how they read without `pii:read`
# ---------------------------------------------------------------------------------------

#: Fields that identify a person: masked without `pii:read`, audited when read unmasked,
#: never put into events.
PERSONAL_FIELDS: Final = ("name", "email", "phone", "addresses")

#: Cleared on erasure besides the personal fields: free-form data that may hold personal
#: data, and the link to the customer in other systems.
ERASED_FIELDS: Final = (*PERSONAL_FIELDS, "external_ref", "tags", "custom_attributes")

MASK: Final = "***"


def mask_name(name: str | None) -> str | None:
    """`Jane Doe` -> `J***`: the initial only, so the length is not revealed either."""
    if not name:
        return name
    return name[0] + MASK


def mask_email(email: str | None) -> str | None:
    """`jane.doe@example.com` -> `j***@example.com`: the domain is rarely personal."""
    if not email:
        return email
    local, at, domain = email.rpartition("@")
    if not at:
        return mask_name(email)
    return f"{local[:1]}{MASK}@{domain}"


def mask_phone(phone: str | None) -> str | None:
    """`+447911123456` -> `+44 *******456`: country code and last three digits stay.

    Reads the country code from the E.164 prefix (country codes are prefix-free) instead of
    parsing the number: masking runs on every read, parsing costs ten times more.
    """
    if not phone:
        return phone
    digits = "".join(char for char in phone if char.isdigit())
    prefix = ""
    if phone.startswith("+"):
        for length in (1, 2, 3):
            if int(digits[:length] or 0) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                prefix, digits = f"+{digits[:length]} ", digits[length:]
                break
    shown = 3 if len(digits) > 6 else 0  # too short to be a number: reveal nothing
    return prefix + "*" * (len(digits) - shown) + digits[len(digits) - shown :]


def mask_address(address: Address) -> Address:
    """Street lines and postal code hidden, city reduced to its initial; country kept."""
    return replace(
        address,
        line1=MASK,
        line2=MASK if address.line2 else None,
        city=mask_name(address.city) or MASK,
        postal_code=MASK if address.postal_code else None,
    )


# ---------------------------------------------------------------------------------------
# Consent
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """The current answer for one purpose: what, since when, and where it was given."""

    purpose: ConsentPurpose
    status: ConsentStatus
    changed_at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One purpose whose status moved; `previous` is None when it was never recorded."""

    purpose: ConsentPurpose
    previous: ConsentStatus | None
    current: ConsentStatus
    changed_at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class ConsentOutcome:
    """The state after a request, and the changes it made (an event is due iff any)."""

    state: dict[ConsentPurpose, ConsentRecord]
    changes: tuple[ConsentChange, ...]

    @property
    def event_due(self) -> bool:
        return bool(self.changes)


ConsentState = Mapping[ConsentPurpose, ConsentRecord]

MAX_CONSENT_SOURCE_LENGTH: Final = 64


def is_consent_granted(state: ConsentState, purpose: ConsentPurpose) -> bool:
    """Never asked counts as not granted (opt-in)."""
    record = state.get(purpose)
    return record is not None and record.status is ConsentStatus.granted


def change_consents(
    state: ConsentState,
    requested: Mapping[ConsentPurpose, ConsentStatus],
    *,
    at: datetime,
    source: str,
) -> ConsentOutcome:
    """Apply the requested statuses at business time `at`.

    A purpose already in the requested status keeps its original record (time and source):
    nothing changed, so no event. Recording a first answer, even `withdrawn`, is a change:
    an explicit refusal is worth keeping. A request dated before the recorded answer is
    stale and ignored, so replays and late imports cannot undo a newer decision.
    """
    _require_aware(at, ("changed_at",))
    source_label = source.strip()
    if not source_label or len(source_label) > MAX_CONSENT_SOURCE_LENGTH:
        raise RuleViolation.single(("source",), f"must be 1-{MAX_CONSENT_SOURCE_LENGTH} characters")
    if _has_control_characters(source_label):
        raise RuleViolation.single(("source",), "must not contain control characters")
    changed_at = at.astimezone(UTC)
    new_state = dict(state)
    changes: list[ConsentChange] = []
    for purpose, status in requested.items():
        current = state.get(purpose)
        if current is not None and (current.status is status or changed_at < current.changed_at):
            continue
        new_state[purpose] = ConsentRecord(purpose, status, changed_at, source_label)
        changes.append(
            ConsentChange(
                purpose=purpose,
                previous=current.status if current else None,
                current=status,
                changed_at=changed_at,
                source=source_label,
            )
        )
    return ConsentOutcome(state=new_state, changes=tuple(changes))


# ---------------------------------------------------------------------------------------
# Money and time
# ---------------------------------------------------------------------------------------

_CURRENCY = re.compile(r"^[A-Z]{3}$")

#: Amounts at or above this are refused as almost certainly wrong (and to keep Decimal
#: products exact within the default 28-digit context).
MAX_AMOUNT: Final = Decimal("1000000000000")
MAX_QUANTITY: Final = 1_000_000
MAX_ITEMS: Final = 1000
MAX_ORDER_ID_LENGTH: Final = 200
MAX_SKU_LENGTH: Final = 100
MAX_CATEGORY_LENGTH: Final = 100

#: How far ahead of the server's clock a business time may be (clocks of other systems drift).
DEFAULT_MAX_CLOCK_SKEW: Final = timedelta(minutes=5)


def normalise_currency(raw: str, *, loc: Loc = ("currency",)) -> str:
    """An ISO 4217 alphabetic code; case is forgiven (`usd` -> `USD`)."""
    code = raw.strip().upper()
    if not _CURRENCY.match(code):
        raise RuleViolation.single(loc, f"{raw!r} is not an ISO 4217 currency code like USD")
    return code


def quantize_money(amount: Decimal, currency: str) -> Decimal:
    """Exactly the currency's minor units (`12.5` USD -> `12.50`), never `-0`."""
    return in_minor_units(amount, currency)


def format_money(amount: Decimal, currency: str) -> str:
    """The wire form of money: a decimal string with the currency's minor units."""
    return str(quantize_money(amount, currency))


def _money_formatter(currency: str) -> Callable[[Decimal], str]:
    places = minor_units(currency)

    def money(amount: Decimal) -> str:
        if not amount.is_finite():
            return str(amount)
        return f"{amount:.{places}f}"

    return money


def money_problems(
    amount: Decimal, currency: str, loc: Loc, *, positive: bool = False
) -> list[FieldProblem]:
    """What is wrong with `amount` as money in `currency` (empty when nothing is)."""
    if not amount.is_finite():
        return [FieldProblem(loc, "must be a finite number")]
    if amount < 0 or (positive and amount == 0):
        return [FieldProblem(loc, "must be greater than 0" if positive else "must not be negative")]
    if amount >= MAX_AMOUNT:
        return [FieldProblem(loc, f"must be less than {MAX_AMOUNT}")]
    places = minor_units(currency)
    if amount != amount.quantize(quantum(places)):
        unit = (
            f"{currency} has no minor unit, so amounts are whole"
            if places == 0
            else f"{currency} has {places} decimal places"
        )
        return [FieldProblem(loc, f"{amount} has too many decimal places: {unit}")]
    return []


def currency_problems(currency: str, base_currency: str, loc: Loc) -> list[FieldProblem]:
    """Only the deployment's base currency is accepted (no conversion rates here)."""
    try:
        code = normalise_currency(currency, loc=loc)
    except RuleViolation as error:
        return list(error.problems)
    if code != base_currency:
        return [
            FieldProblem(
                loc,
                f"must be {base_currency}, this deployment's base currency; got {code} "
                "(convert the amount before sending it)",
            )
        ]
    return []


def _require_aware(moment: datetime, loc: Loc) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise RuleViolation.single(loc, "needs a UTC offset, e.g. 2024-05-01T10:00:00Z")


def business_time_problems(
    moment: datetime, loc: Loc, *, now: datetime, max_clock_skew: timedelta
) -> list[FieldProblem]:
    """A business time must carry its offset and not lie in the future beyond the skew."""
    try:
        _require_aware(moment, loc)
    except RuleViolation as error:
        return list(error.problems)
    if (problem := business_time_problem(moment)) is not None:  # stored and compared in UTC
        return [FieldProblem(loc, f"{moment.isoformat()} {problem}")]
    if (problem := future_time_problem(moment, now=now, max_ahead=max_clock_skew)) is not None:
        return [FieldProblem(loc, problem)]
    return []


def _text_problems(value: str, loc: Loc, *, max_length: int) -> list[FieldProblem]:
    if not value:
        return [FieldProblem(loc, "must not be empty")]
    if len(value) > max_length:
        return [FieldProblem(loc, f"must be at most {max_length} characters")]
    if _has_control_characters(value):
        return [FieldProblem(loc, "must not contain control characters")]
    return []


# ---------------------------------------------------------------------------------------
# Purchases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineItem:
    """One line of an order; `category` is optional (the ingest contract allows it missing)."""

    sku: str
    category: str | None
    quantity: int
    unit_price: Decimal

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass(frozen=True, slots=True)
class Purchase:
    """A validated purchase: amounts quantized to the currency, time in UTC."""

    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime
    items: tuple[LineItem, ...] = ()
    channel: str | None = None


def validate_purchase(
    *,
    order_id: str,
    amount: Decimal,
    currency: str,
    occurred_at: datetime,
    items: Sequence[LineItem] = (),
    channel: str | None = None,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> Purchase:
    """Check a purchase against every rule and return its normalised form.

    Items are optional (history often lacks them); when given, the sum of
    quantity x unit price must equal the amount exactly. Raises `RuleViolation` with all
    problems found.
    """
    order_id = order_id.strip()
    problems = _text_problems(order_id, ("order_id",), max_length=MAX_ORDER_ID_LENGTH)
    problems += currency_problems(currency, base_currency, ("currency",))
    code = base_currency
    problems += money_problems(amount, code, ("amount",))
    problems += business_time_problems(
        occurred_at, ("occurred_at",), now=now, max_clock_skew=max_clock_skew
    )
    normalised_channel: str | None = None
    if channel is not None and channel.strip():
        try:
            normalised_channel = normalise_channel(channel)
        except RuleViolation as error:
            problems += error.problems
    if len(items) > MAX_ITEMS:
        problems.append(FieldProblem(("items",), f"at most {MAX_ITEMS} items per order"))
    normalised_items: list[LineItem] = []
    for index, item in enumerate(items[:MAX_ITEMS]):
        item_problems, normalised_item = _check_item(item, code, ("items", index))
        problems += item_problems
        normalised_items.append(normalised_item)
    if normalised_items and not problems:
        items_total = sum((item.line_total for item in normalised_items), Decimal(0))
        if items_total != amount:
            money = _money_formatter(code)
            problems.append(
                FieldProblem(
                    ("items",),
                    f"items add up to {money(items_total)} {code} but the amount is "
                    f"{money(amount)} {code}",
                )
            )
    if problems:
        raise RuleViolation(problems)
    return Purchase(
        order_id=order_id,
        amount=quantize_money(amount, code),
        currency=code,
        occurred_at=occurred_at.astimezone(UTC),
        items=tuple(normalised_items),
        channel=normalised_channel,
    )


def _check_item(item: LineItem, currency: str, loc: Loc) -> tuple[list[FieldProblem], LineItem]:
    sku = item.sku.strip()
    category = _WHITESPACE.sub(" ", item.category).strip() or None if item.category else None
    problems = _text_problems(sku, (*loc, "sku"), max_length=MAX_SKU_LENGTH)
    if category is not None:
        problems += _text_problems(category, (*loc, "category"), max_length=MAX_CATEGORY_LENGTH)
    # bool is an int subclass; True pieces is a client bug, not one piece.
    if type(item.quantity) is not int or not 0 < item.quantity <= MAX_QUANTITY:
        problems.append(
            FieldProblem((*loc, "quantity"), f"must be a whole number from 1 to {MAX_QUANTITY}")
        )
    problems += money_problems(item.unit_price, currency, (*loc, "unit_price"))
    unit_price = item.unit_price if problems else quantize_money(item.unit_price, currency)
    return problems, LineItem(sku, category, item.quantity, unit_price)


# ---------------------------------------------------------------------------------------
# Refunds and interactions
# ---------------------------------------------------------------------------------------

MAX_REASON_LENGTH: Final = 500


def normalise_order_id(raw: str, *, loc: Loc = ("order_id",)) -> str:
    """An order id as purchases store it: trimmed, 1-200 characters, no control characters."""
    order_id = raw.strip()
    problems = _text_problems(order_id, loc, max_length=MAX_ORDER_ID_LENGTH)
    if problems:
        raise RuleViolation(problems)
    return order_id


@dataclass(frozen=True, slots=True)
class Refund:
    order_id: str
    amount: Decimal
    currency: str
    refunded_at: datetime
    reason: str | None = None


def validate_refund(
    *,
    order_id: str,
    amount: Decimal,
    currency: str,
    refunded_at: datetime,
    paid: Decimal,
    already_refunded: Decimal,
    purchased_at: datetime,
    reason: str | None = None,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> Refund:
    """A refund is positive, in the base currency, after the purchase, and never more than
    what was paid minus what was already refunded (`RefundExceedsPaid` names the numbers).
    """
    problems = currency_problems(currency, base_currency, ("currency",))
    problems += money_problems(amount, base_currency, ("amount",), positive=True)
    problems += business_time_problems(
        refunded_at, ("refunded_at",), now=now, max_clock_skew=max_clock_skew
    )
    if not problems and refunded_at < purchased_at:
        problems.append(
            FieldProblem(
                ("refunded_at",),
                f"{refunded_at.isoformat()} is before the purchase "
                f"({purchased_at.astimezone(UTC).isoformat()})",
            )
        )
    reason_text = reason.strip() if reason else None
    if reason_text and len(reason_text) > MAX_REASON_LENGTH:
        problems.append(
            FieldProblem(("reason",), f"must be at most {MAX_REASON_LENGTH} characters")
        )
    elif reason_text and _has_control_characters_besides_line_breaks(reason_text):
        problems.append(FieldProblem(("reason",), "must not contain control characters"))
    if problems:
        raise RuleViolation(problems)
    if amount > paid - already_refunded:
        raise RefundExceedsPaid(
            order_id=order_id,
            requested=amount,
            paid=paid,
            already_refunded=already_refunded,
            currency=base_currency,
        )
    return Refund(
        order_id=order_id,
        amount=quantize_money(amount, base_currency),
        currency=base_currency,
        refunded_at=refunded_at.astimezone(UTC),
        reason=reason_text or None,
    )


class InteractionDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


MAX_SUMMARY_LENGTH: Final = 2000


@dataclass(frozen=True, slots=True)
class Interaction:
    channel: str
    direction: InteractionDirection
    summary: str
    occurred_at: datetime


def validate_interaction(
    *,
    channel: str,
    direction: InteractionDirection,
    summary: str,
    occurred_at: datetime,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> Interaction:
    """A contact with the customer: known channel label, a summary, a time not in the future."""
    problems: list[FieldProblem] = []
    try:
        channel = normalise_channel(channel)
    except RuleViolation as error:
        problems += error.problems
    summary = summary.strip()
    if not summary:
        problems.append(FieldProblem(("summary",), "must not be empty"))
    elif len(summary) > MAX_SUMMARY_LENGTH:
        problems.append(
            FieldProblem(("summary",), f"must be at most {MAX_SUMMARY_LENGTH} characters")
        )
    elif _has_control_characters_besides_line_breaks(summary):
        problems.append(FieldProblem(("summary",), "must not contain control characters"))
    problems += business_time_problems(
        occurred_at, ("occurred_at",), now=now, max_clock_skew=max_clock_skew
    )
    if problems:
        raise RuleViolation(problems)
    return Interaction(channel, direction, summary, occurred_at.astimezone(UTC))


# ---------------------------------------------------------------------------------------
# CSV import of purchases
# ---------------------------------------------------------------------------------------

CSV_REQUIRED_COLUMNS: Final = ("external_ref", "order_id", "occurred_at", "amount", "currency")
CSV_ITEM_COLUMNS: Final = ("sku", "category", "quantity")

_PLAIN_DECIMAL = re.compile(r"^\d+(?:\.\d+)?$")
_WHOLE_NUMBER = re.compile(r"^\d+$")
_CALENDAR_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class ImportedOrder:
    """One order of the file, valid, ready to be recorded for the customer `external_ref`."""

    external_ref: str
    purchase: Purchase
    lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RowRejection:
    """A line of the file that was not imported, and why (line numbers as an editor shows)."""

    line: int
    order_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PurchaseCsv:
    rows_read: int
    orders: tuple[ImportedOrder, ...]
    rejections: tuple[RowRejection, ...]


@dataclass(slots=True)
class _CsvLine:
    line: int
    external_ref: str
    order_id: str
    occurred_at: datetime
    amount: Decimal
    item: LineItem | None


@dataclass(slots=True)
class _CsvOrder:
    lines: list[_CsvLine] = field(default_factory=list)
    rejected_lines: list[int] = field(default_factory=list)


def parse_purchase_csv(
    text_lines: Iterable[str],
    *,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> PurchaseCsv:
    """Read `external_ref,order_id,occurred_at,amount,currency[,sku,category,quantity]`.

    - The first line is the header; columns may come in any order, names are
      case-insensitive; `sku` and `category` come together, `quantity` (default 1) only with
      them; on a row, `sku` makes an item line (its category may be blank); unknown columns are refused (a typo would otherwise drop data silently).
      Header problems raise `CsvHeaderError`; row problems never raise.
    - `occurred_at` is RFC 3339 with an offset, or a bare date meaning 00:00 UTC that day.
    - A row's `amount` is the total of its line; with item columns the unit price is
      amount / quantity and must be exact in the currency's minor units.
    - Rows with the same `order_id` (anywhere in the file) form one order: same
      `external_ref`, `occurred_at` and currency, each with its own `sku`; the order's amount
      is the sum of its rows. An order is imported whole or not at all: when one of its rows
      is bad, its other rows are rejected too, pointing at the bad line.
    - Blank lines are skipped and not counted.
    """
    reader = csv.reader(text_lines, strict=True)
    columns = _csv_columns(_header_row(reader))

    orders: dict[str, _CsvOrder] = {}
    rejections: list[RowRejection] = []
    rows_read = 0
    previous_line_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows_read += 1
            rejections.append(RowRejection(previous_line_end + 1, None, f"not valid CSV: {error}"))
            previous_line_end = reader.line_num
            continue
        line = previous_line_end + 1
        previous_line_end = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        rows_read += 1
        order_id = row[columns["order_id"]].strip() if len(row) > columns["order_id"] else ""
        parsed = _parse_csv_row(
            row, line, columns, base_currency=base_currency, now=now, max_clock_skew=max_clock_skew
        )
        if isinstance(parsed, str):
            rejections.append(RowRejection(line, order_id or None, parsed))
            if order_id:
                orders.setdefault(order_id, _CsvOrder()).rejected_lines.append(line)
        else:
            orders.setdefault(order_id, _CsvOrder()).lines.append(parsed)

    imported: list[ImportedOrder] = []
    for order_id, order in orders.items():
        outcome = _assemble_order(
            order_id, order, base_currency=base_currency, now=now, max_clock_skew=max_clock_skew
        )
        if isinstance(outcome, ImportedOrder):
            imported.append(outcome)
        else:
            rejections.extend(outcome)
    rejections.sort(key=lambda rejection: rejection.line)
    return PurchaseCsv(rows_read=rows_read, orders=tuple(imported), rejections=tuple(rejections))


def check_purchase_csv_header(text_lines: Iterable[str]) -> None:
    """Raise `CsvHeaderError` when the file's header is not one `parse_purchase_csv` reads (the
    rest of the file is not read)."""
    _csv_columns(_header_row(csv.reader(text_lines, strict=True)))


def _header_row(reader: Iterator[list[str]]) -> list[str] | None:
    try:
        return next(reader, None)
    except csv.Error as error:
        raise CsvHeaderError.single(("header",), f"line 1 is not valid CSV: {error}") from error


def _csv_columns(header_row: list[str] | None) -> dict[str, int]:
    expected = ",".join(CSV_REQUIRED_COLUMNS) + "[," + ",".join(CSV_ITEM_COLUMNS) + "]"
    if not header_row or all(not cell.strip() for cell in header_row):
        raise CsvHeaderError.single(("header",), f"the first line must be the header: {expected}")
    names = [cell.strip().lower() for cell in header_row]
    names[0] = names[0].removeprefix("\ufeff")  # a byte-order mark from spreadsheet exports
    problems: list[str] = []
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"repeated columns: {', '.join(duplicates)}")
    unknown = [name for name in names if name not in CSV_REQUIRED_COLUMNS + CSV_ITEM_COLUMNS]
    if unknown:
        problems.append(f"unknown columns: {', '.join(unknown)}")
    missing = [name for name in CSV_REQUIRED_COLUMNS if name not in names]
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    has_sku, has_category = "sku" in names, "category" in names
    if has_sku != has_category or ("quantity" in names and not has_sku):
        problems.append("item columns come as sku and category, with quantity optional")
    if problems:
        raise CsvHeaderError.single(("header",), f"{'; '.join(problems)} (expected {expected})")
    return {name: index for index, name in enumerate(names)}


def _parse_csv_row(
    row: list[str],
    line: int,
    columns: Mapping[str, int],
    *,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta,
) -> _CsvLine | str:
    """The row as a line of an order, or the reason it is rejected."""
    if len(row) != len(columns):
        return f"expected {len(columns)} fields, found {len(row)}"

    def cell(name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None else ""

    problems: list[FieldProblem] = []
    order_id = cell("order_id")
    problems += _text_problems(order_id, ("order_id",), max_length=MAX_ORDER_ID_LENGTH)
    external_ref = cell("external_ref")
    problems += _text_problems(external_ref, ("external_ref",), max_length=MAX_EXTERNAL_REF_LENGTH)

    occurred_at = _parse_csv_time(cell("occurred_at"), problems)
    if occurred_at is not None:
        problems += business_time_problems(
            occurred_at, ("occurred_at",), now=now, max_clock_skew=max_clock_skew
        )

    amount_text = cell("amount")
    amount: Decimal | None = None
    if _PLAIN_DECIMAL.match(amount_text):
        amount = Decimal(amount_text)
        problems += money_problems(amount, base_currency, ("amount",))
    else:
        problems.append(
            FieldProblem(("amount",), f"{amount_text!r} is not a plain decimal number like 129.90")
        )
    problems += currency_problems(cell("currency"), base_currency, ("currency",))

    item: LineItem | None = None
    sku, category, quantity_text = cell("sku"), cell("category"), cell("quantity")
    if sku or category or quantity_text:
        if not sku:
            problems.append(FieldProblem(("sku",), "must not be empty on an item line"))
        else:
            problems += _text_problems(sku, ("sku",), max_length=MAX_SKU_LENGTH)
        if category:
            problems += _text_problems(category, ("category",), max_length=MAX_CATEGORY_LENGTH)
        quantity = 1
        if quantity_text:
            if _WHOLE_NUMBER.match(quantity_text) and 0 < int(quantity_text) <= MAX_QUANTITY:
                quantity = int(quantity_text)
            else:
                problems.append(
                    FieldProblem(
                        ("quantity",),
                        f"{quantity_text!r} is not a whole number from 1 to {MAX_QUANTITY}",
                    )
                )
        if not problems and amount is not None:
            unit_price = amount / quantity
            if unit_price * quantity != amount or money_problems(
                unit_price, base_currency, ("amount",)
            ):
                problems.append(
                    FieldProblem(
                        ("amount",),
                        f"the line total {amount_text} does not divide into {quantity} equal "
                        f"unit prices in {base_currency}",
                    )
                )
            else:
                item = LineItem(
                    sku, category or None, quantity, quantize_money(unit_price, base_currency)
                )

    if problems or occurred_at is None or amount is None:
        return "; ".join(str(problem) for problem in problems)
    return _CsvLine(line, external_ref, order_id, occurred_at, amount, item)


def _parse_csv_time(text: str, problems: list[FieldProblem]) -> datetime | None:
    loc: Loc = ("occurred_at",)
    if _CALENDAR_DATE.match(text):
        try:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        except ValueError:
            problems.append(FieldProblem(loc, f"{text!r} is not a calendar date"))
            return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(
            FieldProblem(
                loc,
                f"{text!r} is not an RFC 3339 time like 2024-05-01T10:00:00Z "
                "nor a date like 2024-05-01",
            )
        )
        return None
    if moment.tzinfo is None:
        problems.append(FieldProblem(loc, f"{text!r} has no UTC offset; add one, e.g. Z or +02:00"))
        return None
    return moment


def _assemble_order(
    order_id: str,
    order: _CsvOrder,
    *,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta,
) -> ImportedOrder | list[RowRejection]:
    conflicts: list[RowRejection] = []
    if order.lines:
        first = order.lines[0]
        several = len(order.lines) + len(order.rejected_lines) > 1
        seen_skus: dict[str, int] = {}
        for csv_line in order.lines:
            reasons: list[str] = []
            if csv_line.external_ref != first.external_ref:
                reasons.append(
                    f"external_ref {csv_line.external_ref!r} differs from "
                    f"{first.external_ref!r} on line {first.line} of the same order"
                )
            if csv_line.occurred_at != first.occurred_at:
                reasons.append(f"occurred_at differs from line {first.line} of the same order")
            if csv_line.item is None:
                if several:
                    reasons.append("an order of several lines needs a sku on each")
            elif csv_line.item.sku in seen_skus:
                reasons.append(
                    f"sku {csv_line.item.sku!r} already on line {seen_skus[csv_line.item.sku]} "
                    "of the same order"
                )
            else:
                seen_skus[csv_line.item.sku] = csv_line.line
            if reasons:
                conflicts.append(RowRejection(csv_line.line, order_id, "; ".join(reasons)))

    bad_lines = sorted(order.rejected_lines + [rejection.line for rejection in conflicts])
    if not bad_lines:
        # Every line passed the purchase rules on its own; what is left is the order's sums.
        amount = sum((csv_line.amount for csv_line in order.lines), Decimal(0))
        items = tuple(csv_line.item for csv_line in order.lines if csv_line.item is not None)
        problems = money_problems(amount, base_currency, ("amount",))
        if len(items) > MAX_ITEMS:
            problems.append(FieldProblem(("items",), f"at most {MAX_ITEMS} items per order"))
        if problems:
            reason = "; ".join(str(problem) for problem in problems)
            return [RowRejection(csv_line.line, order_id, reason) for csv_line in order.lines]
        purchase = Purchase(
            order_id=order_id,
            amount=quantize_money(amount, base_currency),
            currency=base_currency,
            occurred_at=order.lines[0].occurred_at.astimezone(UTC),
            items=items,
        )
        return ImportedOrder(
            external_ref=order.lines[0].external_ref,
            purchase=purchase,
            lines=tuple(csv_line.line for csv_line in order.lines),
        )

    conflicting = {rejection.line for rejection in conflicts}
    bad = ", ".join(str(line) for line in bad_lines)
    followers = [
        RowRejection(
            csv_line.line,
            order_id,
            f"order {order_id!r} not imported because of line(s) {bad}",
        )
        for csv_line in order.lines
        if csv_line.line not in conflicting
    ]
    return conflicts + followers


# ---------------------------------------------------------------------------------------
# Orders ingested from other systems (topic crm.ingest.orders.v1)
# ---------------------------------------------------------------------------------------


class IngestOrderItem(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="ignore")

    sku: str = Field(min_length=1, max_length=MAX_SKU_LENGTH)
    category: str | None = Field(None, max_length=MAX_CATEGORY_LENGTH)
    quantity: int = Field(gt=0, le=MAX_QUANTITY, strict=True)
    unit_price: Decimal = Field(ge=0, allow_inf_nan=False)


class IngestOrder(BaseModel):
    """The JSON payload other systems drop on `crm.ingest.orders.v1`.

    ```json
    {"order_id": "A-1001", "external_ref": "shop-42", "email": "jane@example.com",
     "amount": "59.80", "currency": "USD", "occurred_at": "2024-05-01T10:00:00Z",
     "items": [{"sku": "TEE-1", "category": "apparel", "quantity": 2, "unit_price": "29.90"}],
     "channel": "web"}
    ```
    At least one of `customer_id`, `external_ref`, `email` names the customer; amounts are
    decimal strings (JSON numbers are accepted); unknown fields are ignored so senders may
    add their own.
    """

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="ignore")

    order_id: str = Field(min_length=1, max_length=MAX_ORDER_ID_LENGTH)
    customer_id: UUID | None = None
    external_ref: str | None = Field(default=None, max_length=MAX_EXTERNAL_REF_LENGTH)
    email: str | None = None
    amount: Decimal = Field(ge=0, allow_inf_nan=False)
    currency: str = Field(min_length=3, max_length=3)
    items: list[IngestOrderItem] = Field(default_factory=list, max_length=MAX_ITEMS)
    occurred_at: AwareDatetime
    channel: str | None = None

    @field_validator("external_ref", "email", "channel", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("external_ref")
    @classmethod
    def _normalise_external_ref(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_external_ref(value)
        except RuleViolation as error:
            raise ValueError(error.problems[0].message) from error

    @field_validator("email")
    @classmethod
    def _normalise_email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_email(value)
        except RuleViolation as error:
            # Pydantic adds the location itself; keep only the message.
            raise ValueError(error.problems[0].message) from error

    @model_validator(mode="after")
    def _names_a_customer(self) -> IngestOrder:
        if self.customer_id is None and self.external_ref is None and self.email is None:
            raise ValueError("give at least one of customer_id, external_ref or email")
        return self

    def to_purchase(
        self,
        *,
        base_currency: str,
        now: datetime,
        max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    ) -> Purchase:
        """The same rules as a purchase recorded over HTTP."""
        return validate_purchase(
            order_id=self.order_id,
            amount=self.amount,
            currency=self.currency,
            occurred_at=self.occurred_at,
            items=[
                LineItem(item.sku, item.category, item.quantity, item.unit_price)
                for item in self.items
            ],
            channel=self.channel,
            base_currency=base_currency,
            now=now,
            max_clock_skew=max_clock_skew,
        )


def parse_ingest_order(
    raw: bytes | str,
    *,
    base_currency: str,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> tuple[IngestOrder, Purchase]:
    """Parse and validate one ingest message; any problem raises `RuleViolation` whose
    message is the DLQ reason (`amount: must not be negative; ...`)."""
    try:
        order = IngestOrder.model_validate_json(raw)
    except ValidationError as error:
        raise RuleViolation(problems_from_validation_error(error)) from error
    return order, order.to_purchase(
        base_currency=base_currency, now=now, max_clock_skew=max_clock_skew
    )


def problems_from_validation_error(error: ValidationError) -> list[FieldProblem]:
    """Pydantic's errors as field problems, with our own messages kept unprefixed."""
    problems: list[FieldProblem] = []
    for detail in error.errors(include_url=False):
        message = str(detail["msg"]).removeprefix("Value error, ")
        problems.append(FieldProblem(tuple(detail["loc"]), message))
    return problems


@dataclass(frozen=True, slots=True)
class ExistingCustomer:
    customer_id: UUID


@dataclass(frozen=True, slots=True)
class NewCustomer:
    """Create a customer registered at this order, with these identifiers."""

    external_ref: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class UnresolvedCustomer:
    reason: str


CustomerResolution = ExistingCustomer | NewCustomer | UnresolvedCustomer


def resolve_order_customer(
    *,
    customer_id: UUID | None,
    external_ref: str | None,
    email: str | None,
    found_by_id: UUID | None,
    found_by_external_ref: UUID | None,
    found_by_email: UUID | None,
) -> CustomerResolution:
    """Who an ingested order belongs to, given what the lookups of its identifiers found.

    - Identifiers that match must all match the same customer, else the order is
      unresolved (it would otherwise be booked on a guess).
    - One match: that customer. Identifiers that did not match are not written onto it:
      an order feed does not edit master data.
    - No match: a new customer when the order carries `external_ref` or `email`;
      otherwise (only an unknown `customer_id`) the order is unresolved.
    """
    matches: dict[str, UUID] = {}
    if customer_id is not None and found_by_id is not None:
        matches["customer_id"] = found_by_id
    if external_ref is not None and found_by_external_ref is not None:
        matches["external_ref"] = found_by_external_ref
    if email is not None and found_by_email is not None:
        matches["email"] = found_by_email
    distinct = set(matches.values())
    if len(distinct) > 1:
        described = ", ".join(f"{name} -> {found}" for name, found in matches.items())
        return UnresolvedCustomer(f"the order's identifiers name different customers ({described})")
    if distinct:
        return ExistingCustomer(distinct.pop())
    if external_ref is not None or email is not None:
        return NewCustomer(external_ref=external_ref, email=email)
    if customer_id is not None:
        return UnresolvedCustomer(
            f"unknown customer_id {customer_id} and no external_ref or email to create one"
        )
    return UnresolvedCustomer("the order names no customer")
