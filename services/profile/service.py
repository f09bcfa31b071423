"""Use cases of the profile service: one transaction each, events written to the outbox.

Callers (router, handlers) open the transaction; functions here take the session and
keyword-only arguments, with `now` passed in. Bulk import is the exception: it commits chunk by
chunk so that progress is visible and a crash keeps what was done (re-running is idempotent).
"""

from __future__ import annotations

import asyncio
import gc
import io
import operator
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Text, and_, delete, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile import domain
from services.profile.config import ProfileSettings
from services.profile.models import (
    MESSAGING,
    ComplaintProjection,
    Consent,
    ConsentHistory,
    Customer,
    Interaction,
    PiiAccess,
    Purchase,
    PurchaseImport,
    PurchaseItem,
    Refund,
    StageProjection,
    ValueProjection,
)
from services.profile.schemas import (
    ConsentsUpdate,
    CustomerCreate,
    CustomerUpdate,
    InteractionCreate,
    PurchaseCreate,
    RefundCreate,
)
from shared.clock import business_time_problem, utc
from shared.db import (
    SessionFactory,
    driver_connection,
    held_while_running,
    nobody_holds,
    transaction,
)
from shared.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.envelope import new_id
from shared.http.preconditions import IfMatch
from shared.messaging.outbox import (
    add_events,
    advisory_key,
    customer_lock_keys,
    lock_customers,
    outbox_arrays,
)
from shared.observability.logging import get_logger

SOURCE = "/crm/profile"
log = get_logger(__name__)
MAX_REJECTIONS_KEPT = 1000


# --- customers ---------------------------------------------------------------------------------


def _event(type_: str, *, customer_id: uuid.UUID, time: datetime, data: Any) -> CloudEvent[Any]:
    return new_event(type=type_, source=SOURCE, subject=customer_id, time=time, data=data)


def registered_event(customer: Customer) -> CloudEvent[Any]:
    return _event(
        ev.CUSTOMER_REGISTERED,
        customer_id=customer.id,
        time=customer.registered_at,
        data=p.CustomerRegistered(
            customer_id=customer.id,
            kind=p.CustomerKind(customer.kind),
            source_channel=customer.source_channel,
            referred_by=customer.referred_by,
        ),
    )


def _normalise_fields(fields: dict[str, Any], *, settings: ProfileSettings) -> dict[str, Any]:
    """Normalise whichever master-data fields are present; all problems at once."""
    normalisers: dict[str, Callable[[Any], Any]] = {
        "name": domain.normalise_name,
        "email": domain.normalise_email,
        "phone": lambda value: domain.normalise_phone(
            value, default_region=settings.default_phone_region
        ),
        "addresses": _normalise_addresses,
        "external_ref": domain.normalise_external_ref,
        "tags": lambda value: list(domain.normalise_tags(value)),
        "custom_attributes": lambda value: domain.validate_custom_attributes(
            value, max_bytes=settings.custom_attributes_max_bytes
        ),
        "source_channel": lambda value: domain.normalise_channel(value, loc=("source_channel",)),
    }
    problems: list[domain.FieldProblem] = []
    out: dict[str, Any] = {}
    for name, value in fields.items():
        normalise = normalisers.get(name)
        if value is None or normalise is None:
            out[name] = value
            continue
        try:
            out[name] = normalise(value)
        except domain.RuleViolation as error:
            problems.extend(error.problems)
    if problems:
        raise domain.RuleViolation(problems)
    return out


def _normalise_addresses(addresses: Sequence[Any]) -> list[dict[str, Any]]:
    problems: list[domain.FieldProblem] = []
    normalised = []
    for index, address in enumerate(addresses):
        try:
            normalised.append(
                _address_json(
                    domain.normalise_address(address.to_domain(), loc=("addresses", index))
                )
            )
        except domain.RuleViolation as error:
            problems.extend(error.problems)
    if problems:
        raise domain.RuleViolation(problems)
    return normalised


def _address_json(address: domain.Address) -> dict[str, Any]:
    return {
        "line1": address.line1,
        "line2": address.line2,
        "city": address.city,
        "postal_code": address.postal_code,
        "region": address.region,
        "country": address.country,
        "kind": address.kind,
    }


async def _ensure_unique(
    session: AsyncSession,
    *,
    email: str | None,
    external_ref: str | None,
    except_id: uuid.UUID | None = None,
) -> None:
    for column, value, label in (
        (Customer.email, email, "e-mail"),
        (Customer.external_ref, external_ref, "external_ref"),
    ):
        if value is None:
            continue
        query = select(Customer.id).where(column == value)
        if except_id is not None:
            query = query.where(Customer.id != except_id)
        existing = await session.scalar(query)
        if existing is not None:
            raise Conflict(f"A customer with this {label} exists", existing_id=str(existing))


async def _flush_unique(
    session: AsyncSession, *, email: str | None, external_ref: str | None
) -> None:
    """Flush; a concurrent writer that won the unique index race becomes a 409 as well."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        await _ensure_unique(session, email=email, external_ref=external_ref)
        raise


async def register_customer(
    session: AsyncSession, *, data: CustomerCreate, settings: ProfileSettings, now: datetime
) -> Customer:
    fields = _normalise_fields(
        {
            "name": data.name,
            "email": data.email,
            "phone": data.phone,
            "addresses": data.addresses,
            "external_ref": data.external_ref,
            "tags": data.tags,
            "custom_attributes": data.custom_attributes,
            "source_channel": data.source_channel,
        },
        settings=settings,
    )
    registered_at = data.registered_at or now
    problems = domain.business_time_problems(
        registered_at, ("registered_at",), now=now, max_clock_skew=settings.max_clock_skew
    )
    if problems:
        raise domain.RuleViolation(problems)
    if data.referred_by is not None:
        referrer = await session.scalar(
            select(Customer.id).where(Customer.id == data.referred_by, Customer.erased_at.is_(None))
        )
        if referrer is None:
            raise InvalidInput.field("body.referred_by", f"no customer {data.referred_by}")
    await _ensure_unique(session, email=fields["email"], external_ref=fields["external_ref"])
    customer = Customer(
        id=uuid.uuid4(),
        kind=data.kind.value,
        referred_by=data.referred_by,
        registered_at=registered_at,
        version=1,
        created_at=now,
        updated_at=now,
        **fields,
    )
    await lock_customers(session, [customer.id])
    session.add(customer)
    await _flush_unique(session, email=customer.email, external_ref=customer.external_ref)
    events = [registered_event(customer)]
    if data.consents:
        try:
            outcome = domain.change_consents(
                {}, data.consents, at=registered_at, source=data.consent_source
            )
        except domain.RuleViolation as error:  # the request names it `consent_source`
            raise domain.RuleViolation(
                [
                    domain.FieldProblem(
                        ("consent_source",) if problem.loc == ("source",) else problem.loc,
                        problem.message,
                    )
                    for problem in error.problems
                ]
            ) from error
        events += await _store_consent_changes(session, customer.id, outcome)
    await add_events(session, MESSAGING, events)
    return customer


async def get_customer(session: AsyncSession, *, customer_id: uuid.UUID) -> Customer:
    customer = await session.get(Customer, customer_id)
    if customer is None or customer.erased_at is not None:
        raise NotFound(f"No customer {customer_id}")
    return customer


async def update_customer(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    data: CustomerUpdate,
    if_match: IfMatch,
    settings: ProfileSettings,
    now: datetime,
) -> Customer:
    await lock_customers(session, [customer_id])
    customer = await get_customer(session, customer_id=customer_id)
    await session.refresh(customer, with_for_update=True)
    if not if_match.admits(customer.version):
        raise PreconditionFailed(
            f"The customer changed since you read it (version {customer.version}, "
            f"If-Match names {if_match.describe()}): read it again and re-apply your change",
            current_version=customer.version,
        )
    sent = {name: getattr(data, name) for name in data.model_fields_set}
    for listed in ("addresses", "tags", "custom_attributes"):
        if listed in sent and sent[listed] is None:
            sent[listed] = {} if listed == "custom_attributes" else []
    fields = _normalise_fields(sent, settings=settings)
    await _ensure_unique(
        session,
        email=fields.get("email"),
        external_ref=fields.get("external_ref"),
        except_id=customer.id,
    )
    changed = sorted(name for name, value in fields.items() if getattr(customer, name) != value)
    if not changed:
        return customer
    for name in changed:
        setattr(customer, name, fields[name])
    customer.version += 1
    customer.updated_at = now
    await _flush_unique(session, email=customer.email, external_ref=customer.external_ref)
    await add_events(
        session,
        MESSAGING,
        [
            _event(
                ev.CUSTOMER_UPDATED,
                customer_id=customer.id,
                time=now,
                data=p.CustomerUpdated(
                    customer_id=customer.id, changed_fields=changed, version=customer.version
                ),
            )
        ],
    )
    return customer


async def erase_customer(session: AsyncSession, *, customer_id: uuid.UUID, now: datetime) -> None:
    """Right to be forgotten: personal and free-form data go, the anonymous id and the amounts
    stay (aggregates elsewhere remain consistent); other services react to the event."""
    await lock_customers(session, [customer_id])
    customer = await get_customer(session, customer_id=customer_id)
    await session.execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(
            name=None,
            email=None,
            phone=None,
            addresses=[],
            external_ref=None,
            tags=[],
            custom_attributes={},
            source_channel=None,
            erased_at=now,
            updated_at=now,
            version=customer.version + 1,
        )
    )
    for table in (
        Consent,
        ConsentHistory,
        Interaction,
        StageProjection,
        ValueProjection,
        ComplaintProjection,
    ):
        await session.execute(delete(table).where(table.customer_id == customer_id))
    # Refunds stay with their amounts only: a reason is free text about the person.
    await session.execute(
        update(Refund).where(Refund.customer_id == customer_id).values(reason=None)
    )
    await _forget_stored_answers(session, customer_id)
    await add_events(
        session,
        MESSAGING,
        [
            _event(
                ev.CUSTOMER_ERASED,
                customer_id=customer_id,
                time=now,
                data=p.CustomerErased(customer_id=customer_id),
            )
        ],
    )


#: What a stored registration answer keeps after an erasure: the fields erasure clears, cleared.
_ERASED_ANSWER: dict[str, Any] = {
    "name": None,
    "email": None,
    "phone": None,
    "addresses": [],
    "external_ref": None,
    "tags": [],
    "custom_attributes": {},
    "source_channel": None,
}


async def _forget_stored_answers(session: AsyncSession, customer_id: uuid.UUID) -> None:
    """Idempotency-Key answers are replayed as stored: those about an erased customer must not
    hand its personal data back. A retried refund or interaction then meets the erasure (404);
    a retried registration still gets its answer, with the personal fields cleared."""
    keys = MESSAGING.idempotency
    await session.execute(
        delete(keys).where(
            keys.c.scope.in_(
                [f"profile:refund:{customer_id}", f"profile:interaction:{customer_id}"]
            )
        )
    )
    await session.execute(
        update(keys)
        .where(
            keys.c.scope.startswith("profile:register:", autoescape=True),
            keys.c.response["id"].astext == str(customer_id),
        )
        .values(
            response=keys.c.response.op("||", return_type=JSONB)(
                literal(_ERASED_ANSWER, type_=JSONB)
            )
        )
    )


def _cursor_key(cursor: dict[str, Any], time_field: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) sort key of the last row a page showed, as its `next_cursor` carries it.

    A cursor is opaque but readable: one edited by hand (an id that is no string, a time
    without offset or outside what PostgreSQL stores) is a 422, never a 500."""
    moment, row_id = cursor.get(time_field), cursor.get("id")
    try:
        if not isinstance(moment, str) or not isinstance(row_id, str):
            raise TypeError(f"{time_field} and id must be strings")
        key = (datetime.fromisoformat(moment), uuid.UUID(row_id))
        if key[0].tzinfo is None or business_time_problem(key[0]) is not None:
            raise ValueError(f"{moment!r} is no time this API writes into a cursor")
    except (TypeError, ValueError) as error:
        raise InvalidInput.field("query.cursor", "not a cursor returned by this API") from error
    return key


def _like_escape(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_customers(
    session: AsyncSession,
    *,
    q: str | None,
    stage: p.Stage | None,
    tier: p.Tier | None,
    limit: int,
    cursor: dict[str, Any] | None,
    partial_pii: bool = True,
) -> tuple[list[Customer], dict[str, Any] | None]:
    """Newest-registered last, cursor on (created_at, id). `q` matches name (substring),
    e-mail (prefix), external_ref (exact) and phone digits (substring, 4 digits or more).
    Names match regardless of accents and letter case ("muller" finds "Müller" and "José"
    finds "Jose"): both sides go through the database's `unaccent_lower()`.

    Without `partial_pii` (a reader without `pii:read`, who sees masked results) the personal
    fields match whole values only: a partial match would let them read a masked e-mail or
    phone back one character at a time, by which searches still find the customer."""
    query = select(Customer).where(Customer.erased_at.is_(None))
    if q and q.strip():
        term = q.strip()
        if problems := domain.search_term_problems(term):
            raise InvalidInput.field("query.q", problems[0].message)
        digits = re.sub(r"\D", "", term)
        phone_like = not re.search(r"[A-Za-z@]", term)
        # Names are stored with inner whitespace collapsed (`normalise_name`): so is the term.
        # Folded first, on its own: the pattern is then a constant the planner estimates from
        # the folded names' statistics, and that no scan recomputes per row.
        folded = select(func.unaccent_lower(" ".join(term.split()), type_=Text))
        name = await session.scalar(folded) or ""  # (never NULL: the term is not)
        matches = [Customer.external_ref == term]
        if partial_pii:
            escaped = _like_escape(term.lower())
            matches += [
                # The inlinable twin: no b-tree serves a substring, and a scan calling the
                # IMMUTABLE wrapper per row is several times slower (migration 0003).
                func.unaccent_lower_stable(Customer.name).like(
                    f"%{_like_escape(name)}%", escape="\\"
                ),
                Customer.email.like(f"{escaped}%", escape="\\"),
            ]
            if len(digits) >= 4 and phone_like:
                matches.append(Customer.phone.like(f"%{digits}%"))
        else:
            matches += [
                func.unaccent_lower(Customer.name) == name,  # ix_customers_unaccent_lower_name
                Customer.email == term.lower(),
            ]
            if digits and phone_like:  # E.164, typed with or without spaces and the +
                matches.append(Customer.phone == f"+{digits}")
        query = query.where(or_(*matches))
    if stage is not None:
        query = query.join(StageProjection, StageProjection.customer_id == Customer.id).where(
            StageProjection.stage == stage.value
        )
    if tier is not None:
        query = query.join(ValueProjection, ValueProjection.customer_id == Customer.id).where(
            ValueProjection.tier == tier.value
        )
    if cursor is not None:
        after = _cursor_key(cursor, "created_at")
        query = query.where(tuple_(Customer.created_at, Customer.id) > after)
    query = query.order_by(Customer.created_at, Customer.id).limit(limit + 1)
    rows = list((await session.scalars(query)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = {"created_at": last.created_at.isoformat(), "id": str(last.id)}
    return rows, next_cursor


async def audit_pii_read(
    session: AsyncSession,
    *,
    customer_ids: Sequence[uuid.UUID],
    actor: str,
    action: str,
    request_id: str | None,
    now: datetime,
) -> None:
    """Every read of unmasked personal data leaves a row: who, when, which customer, how."""
    if not customer_ids:
        return
    await session.execute(
        pg_insert(PiiAccess),
        [
            {
                "customer_id": customer_id,
                "actor": actor[:200],
                "action": action,
                "request_id": request_id,
                "accessed_at": now,
            }
            for customer_id in customer_ids
        ],
    )


# --- consent -----------------------------------------------------------------------------------


async def _consent_state(
    session: AsyncSession, customer_id: uuid.UUID
) -> dict[p.ConsentPurpose, domain.ConsentRecord]:
    rows = await session.scalars(select(Consent).where(Consent.customer_id == customer_id))
    return {
        p.ConsentPurpose(row.purpose): domain.ConsentRecord(
            p.ConsentPurpose(row.purpose), p.ConsentStatus(row.status), row.changed_at, row.source
        )
        for row in rows
    }


async def _store_consent_changes(
    session: AsyncSession, customer_id: uuid.UUID, outcome: domain.ConsentOutcome
) -> list[CloudEvent[Any]]:
    if not outcome.event_due:
        return []
    for change in outcome.changes:
        await session.execute(
            pg_insert(Consent)
            .values(
                customer_id=customer_id,
                purpose=change.purpose.value,
                status=change.current.value,
                changed_at=change.changed_at,
                source=change.source,
            )
            .on_conflict_do_update(
                index_elements=[Consent.customer_id, Consent.purpose],
                set_={
                    "status": change.current.value,
                    "changed_at": change.changed_at,
                    "source": change.source,
                },
            )
        )
    await session.execute(
        pg_insert(ConsentHistory),
        [
            {
                "customer_id": customer_id,
                "purpose": change.purpose.value,
                "previous": change.previous.value if change.previous else None,
                "status": change.current.value,
                "changed_at": change.changed_at,
                "source": change.source,
            }
            for change in outcome.changes
        ],
    )
    return [
        _event(
            ev.CUSTOMER_CONSENT_CHANGED,
            customer_id=customer_id,
            time=change.changed_at,
            data=p.CustomerConsentChanged(
                customer_id=customer_id,
                purpose=change.purpose,
                status=change.current,
                source=change.source,
            ),
        )
        for change in outcome.changes
    ]


async def change_consents(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    data: ConsentsUpdate,
    settings: ProfileSettings,
    now: datetime,
) -> domain.ConsentOutcome:
    """One event per purpose whose status moved; repeating an answer changes nothing."""
    await lock_customers(session, [customer_id])
    await get_customer(session, customer_id=customer_id)
    changed_at = data.changed_at or now
    problems = domain.business_time_problems(
        changed_at, ("changed_at",), now=now, max_clock_skew=settings.max_clock_skew
    )
    if problems:
        raise domain.RuleViolation(problems)
    state = await _consent_state(session, customer_id)
    outcome = domain.change_consents(state, data.consents, at=changed_at, source=data.source)
    await add_events(
        session, MESSAGING, await _store_consent_changes(session, customer_id, outcome)
    )
    return outcome


async def consent_history(
    session: AsyncSession, *, customer_id: uuid.UUID
) -> tuple[list[Consent], list[ConsentHistory]]:
    await get_customer(session, customer_id=customer_id)
    current = await session.scalars(
        select(Consent).where(Consent.customer_id == customer_id).order_by(Consent.purpose)
    )
    history = await session.scalars(
        select(ConsentHistory)
        .where(ConsentHistory.customer_id == customer_id)
        .order_by(ConsentHistory.id)
    )
    return list(current), list(history)


# --- purchases ---------------------------------------------------------------------------------


def purchase_from_request(
    data: PurchaseCreate, *, settings: ProfileSettings, now: datetime
) -> domain.Purchase:
    return domain.validate_purchase(
        order_id=data.order_id,
        amount=data.amount,
        currency=data.currency,
        occurred_at=data.occurred_at or now,
        items=[
            domain.LineItem(item.sku, item.category, item.quantity, item.unit_price)
            for item in data.items
        ],
        channel=data.channel,
        base_currency=settings.base_currency,
        now=now,
        max_clock_skew=settings.max_clock_skew,
    )


def new_ids(count: int) -> list[uuid.UUID]:
    """`count` new ids for rows and events: time-ordered random UUIDs (`new_id`), which keep
    inserts on the right-hand pages of the primary keys and unique indexes."""
    return [new_id() for _ in range(count)]


#: CloudEvent[PurchaseRecorded], parametrised once.
_PurchaseRecordedEvent = CloudEvent[p.PurchaseRecorded]


def purchase_recorded_event(
    *,
    purchase_id: uuid.UUID,
    customer_id: uuid.UUID,
    purchase: domain.Purchase,
    event_id: uuid.UUID | None = None,
) -> CloudEvent[Any]:
    fields: dict[str, Any] = {
        "customer_id": customer_id,
        "purchase_id": purchase_id,
        "order_id": purchase.order_id,
        "amount": domain.quantize_money(purchase.amount, purchase.currency),
        "currency": purchase.currency,
        "items": [
            {
                "sku": item.sku,
                "category": item.category,
                "quantity": item.quantity,
                "unit_price": item.unit_price,
            }
            for item in purchase.items
        ],
        "channel": purchase.channel,
    }
    # The domain validated every value already (to the contract's bounds): validating envelope
    # and payload again in one pydantic-core call is cheaper than model_construct's per-field
    # Python and `new_event` (imports and ingest build tens of thousands of these).
    return _PurchaseRecordedEvent.model_validate(
        {
            "id": event_id or new_id(),
            "source": SOURCE,
            "type": ev.PURCHASE_RECORDED,
            "subject": str(customer_id),
            "time": utc(purchase.occurred_at),
            "traceparent": None,
            "data": fields,
        }
    )


async def record_purchase(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    purchase: domain.Purchase,
    origin: str = "api",
) -> tuple[Purchase, bool]:
    """(purchase, created). The same order_id again returns the recorded purchase, no event;
    an order_id of another customer, or with another amount, is a conflict.

    The purchase, its items and its event are written by `_INGEST_SQL` in one statement (an
    order_id already recorded, even by a transaction committing meanwhile, is left alone): the
    ORM's savepoint, flush and separate inserts were most of a POST's CPU.
    """
    await lock_customers(session, [customer_id])  # before the read: no erasure slips in between
    await get_customer(session, customer_id=customer_id)
    purchase_id, event_id = new_ids(2)
    event = purchase_recorded_event(
        purchase_id=purchase_id, customer_id=customer_id, purchase=purchase, event_id=event_id
    )
    inserted = await _insert_purchases(
        await driver_connection(session),
        [purchase_id],
        [customer_id],
        [purchase],
        [event],
        [purchase_id],
        origin=origin,
    )
    if inserted:
        return (
            Purchase(
                id=purchase_id,
                customer_id=customer_id,
                order_id=purchase.order_id,
                amount=purchase.amount,
                currency=purchase.currency,
                occurred_at=purchase.occurred_at,
                channel=purchase.channel,
                refunded_total=Decimal(0),
                origin=origin,
            ),
            True,
        )
    existing = await session.scalar(select(Purchase).where(Purchase.order_id == purchase.order_id))
    if existing is None:  # recorded when the insert ran, gone since (an erasure): try again
        raise Conflict(f"order_id {purchase.order_id!r} changed while recording it: retry")
    return _same_order(existing, customer_id, purchase), False


def _recorded_elsewhere(order_id: str) -> str:
    return f"order_id {order_id!r} is recorded for another customer"


def _recorded_differently(
    order_id: str,
    *,
    recorded_for: uuid.UUID,
    recorded_amount: Decimal,
    currency: str,
    customer_id: uuid.UUID,
    amount: Decimal,
) -> str | None:
    """Why an order_id already recorded is not this order again (None when it is)."""
    if recorded_for != customer_id:
        return _recorded_elsewhere(order_id)
    if recorded_amount != amount:
        return (
            f"order_id {order_id!r} is already recorded with amount "
            f"{domain.format_money(recorded_amount, currency)}; "
            "an order cannot change, record a refund instead"
        )
    return None


def _same_order(existing: Purchase, customer_id: uuid.UUID, purchase: domain.Purchase) -> Purchase:
    difference = _recorded_differently(
        purchase.order_id,
        recorded_for=existing.customer_id,
        recorded_amount=existing.amount,
        currency=existing.currency,
        customer_id=customer_id,
        amount=purchase.amount,
    )
    if difference is not None:
        extra = {} if existing.customer_id != customer_id else {"purchase_id": str(existing.id)}
        raise Conflict(difference, **extra)
    return existing


async def purchase_items(
    session: AsyncSession, purchase_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[PurchaseItem]]:
    ids = list(purchase_ids)
    by_purchase: dict[uuid.UUID, list[PurchaseItem]] = {pid: [] for pid in ids}
    if ids:
        rows = await session.scalars(
            select(PurchaseItem)
            .where(PurchaseItem.purchase_id.in_(ids))
            .order_by(PurchaseItem.purchase_id, PurchaseItem.position)
        )
        for row in rows:
            by_purchase[row.purchase_id].append(row)
    return by_purchase


async def list_purchases(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    limit: int,
    cursor: dict[str, Any] | None,
) -> tuple[list[Purchase], dict[str, Any] | None]:
    """Most recent first, cursor on (occurred_at, id)."""
    await get_customer(session, customer_id=customer_id)
    query = select(Purchase).where(Purchase.customer_id == customer_id)
    if cursor is not None:
        before = _cursor_key(cursor, "occurred_at")
        query = query.where(tuple_(Purchase.occurred_at, Purchase.id) < before)
    rows = list(
        (
            await session.scalars(
                query.order_by(Purchase.occurred_at.desc(), Purchase.id.desc()).limit(limit + 1)
            )
        ).all()
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = {"occurred_at": rows[-1].occurred_at.isoformat(), "id": str(rows[-1].id)}
    return rows, next_cursor


async def record_refund(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    data: RefundCreate,
    settings: ProfileSettings,
    now: datetime,
) -> tuple[Refund, Purchase]:
    order_id = domain.normalise_order_id(data.order_id)
    await lock_customers(session, [customer_id])
    await get_customer(session, customer_id=customer_id)
    purchase = await session.scalar(
        select(Purchase)
        .where(Purchase.order_id == order_id, Purchase.customer_id == customer_id)
        .with_for_update()
    )
    if purchase is None:
        raise NotFound(f"No order {data.order_id!r} for customer {customer_id}")
    refund = domain.validate_refund(
        order_id=purchase.order_id,
        amount=data.amount,
        currency=data.currency,
        refunded_at=data.refunded_at or now,
        paid=purchase.amount,
        already_refunded=purchase.refunded_total,
        purchased_at=purchase.occurred_at,
        reason=data.reason,
        base_currency=settings.base_currency,
        now=now,
        max_clock_skew=settings.max_clock_skew,
    )
    row = Refund(
        id=uuid.uuid4(),
        purchase_id=purchase.id,
        customer_id=customer_id,
        amount=refund.amount,
        currency=refund.currency,
        refunded_at=refund.refunded_at,
        reason=refund.reason,
        chargeback=data.chargeback,
    )
    session.add(row)
    purchase.refunded_total = purchase.refunded_total + refund.amount
    await session.flush()
    await add_events(
        session,
        MESSAGING,
        [
            _event(
                ev.PURCHASE_REFUNDED,
                customer_id=customer_id,
                time=refund.refunded_at,
                data=p.PurchaseRefunded(
                    customer_id=customer_id,
                    purchase_id=purchase.id,
                    order_id=purchase.order_id,
                    refund_id=row.id,
                    amount=refund.amount,
                    refunded_total=domain.quantize_money(
                        purchase.refunded_total, purchase.currency
                    ),
                    order_amount=domain.quantize_money(purchase.amount, purchase.currency),
                    currency=purchase.currency,
                    chargeback=data.chargeback,
                ),
            )
        ],
    )
    return row, purchase


# --- interactions ------------------------------------------------------------------------------


async def record_interaction(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    data: InteractionCreate,
    recorded_by: str,
    settings: ProfileSettings,
    now: datetime,
) -> Interaction:
    # Held to the commit: an erasure (which deletes interactions) cannot pass in between.
    await lock_customers(session, [customer_id])
    await get_customer(session, customer_id=customer_id)
    interaction = domain.validate_interaction(
        channel=data.channel,
        direction=data.direction,
        summary=data.summary,
        occurred_at=data.occurred_at or now,
        now=now,
        max_clock_skew=settings.max_clock_skew,
    )
    row = Interaction(
        id=uuid.uuid4(),
        customer_id=customer_id,
        channel=interaction.channel,
        direction=interaction.direction.value,
        summary=interaction.summary,
        occurred_at=interaction.occurred_at,
        recorded_by=recorded_by[:200],
    )
    session.add(row)
    await session.flush()
    return row


async def list_interactions(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    limit: int,
    cursor: dict[str, Any] | None,
) -> tuple[list[Interaction], dict[str, Any] | None]:
    await get_customer(session, customer_id=customer_id)
    query = select(Interaction).where(Interaction.customer_id == customer_id)
    if cursor is not None:
        before = _cursor_key(cursor, "occurred_at")
        query = query.where(tuple_(Interaction.occurred_at, Interaction.id) < before)
    rows = list(
        (
            await session.scalars(
                query.order_by(Interaction.occurred_at.desc(), Interaction.id.desc()).limit(
                    limit + 1
                )
            )
        ).all()
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = {"occurred_at": rows[-1].occurred_at.isoformat(), "id": str(rows[-1].id)}
    return rows, next_cursor


# --- orders from other systems -----------------------------------------------------------------


class UnresolvableOrder(Exception):
    """An ingested order whose customer cannot be found or created: goes to the DLQ."""


async def ingest_order(
    session: AsyncSession, *, order: domain.IngestOrder, purchase: domain.Purchase
) -> tuple[Purchase, bool]:
    """Find (or create) the order's customer, then record the purchase as HTTP would."""
    found_by_id = found_by_ref = found_by_email = None
    if order.customer_id is not None:
        found_by_id = await session.scalar(
            select(Customer.id).where(
                Customer.id == order.customer_id, Customer.erased_at.is_(None)
            )
        )
    if order.external_ref is not None:
        found_by_ref = await session.scalar(
            select(Customer.id).where(Customer.external_ref == order.external_ref)
        )
    if order.email is not None:
        found_by_email = await session.scalar(
            select(Customer.id).where(Customer.email == order.email)
        )
    resolution = domain.resolve_order_customer(
        customer_id=order.customer_id,
        external_ref=order.external_ref,
        email=order.email,
        found_by_id=found_by_id,
        found_by_external_ref=found_by_ref,
        found_by_email=found_by_email,
    )
    match resolution:
        case domain.UnresolvedCustomer(reason=reason):
            raise UnresolvableOrder(f"order {order.order_id!r}: {reason}")
        case domain.ExistingCustomer(customer_id=customer_id):
            pass
        case domain.NewCustomer(external_ref=external_ref, email=email):
            customer = Customer(
                id=uuid.uuid4(),
                kind=p.CustomerKind.person.value,
                email=email,
                external_ref=external_ref,
                source_channel=purchase.channel,
                registered_at=purchase.occurred_at,
                version=1,
                addresses=[],
                tags=[],
                custom_attributes={},
            )
            await lock_customers(session, [customer.id])
            session.add(customer)
            await session.flush()
            await add_events(session, MESSAGING, [registered_event(customer)])
            customer_id = customer.id
    return await record_purchase(
        session, customer_id=customer_id, purchase=purchase, origin="ingest"
    )


# In one statement: the new customers ($15-$19; their ids are fresh, so no other writer holds
# them), the owners' locks ($8, taken in key order by a one-time filter before any purchase is
# written), the purchases (an order already recorded is left alone), the items of those inserted
# (their ids chosen in advance: the items of a purchase not inserted join nothing), and the
# events ($20-$24, in their order) of the customers and of the purchases inserted ($25: the
# purchase an event is about, NULL for a registration). $26: the purchases' origin. HTTP's
# `record_purchase` runs it too, for one purchase of an existing customer.
_INGEST_SQL = """
    WITH new_customers AS (
        INSERT INTO customers (id, kind, external_ref, email, registered_at, source_channel)
        SELECT id, 'person', ref, email, at, channel
          FROM unnest($15::uuid[], $16::text[], $17::text[], $18::timestamptz[], $19::text[])
               AS t(id, ref, email, at, channel)
    ), inserted AS (
        INSERT INTO purchases (id, customer_id, order_id, amount, currency, occurred_at,
                               channel, origin)
        SELECT id, customer_id, order_id, amount, currency, occurred_at, channel, $26::text
          FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[],
                      $6::timestamptz[], $7::text[])
               AS t(id, customer_id, order_id, amount, currency, occurred_at, channel)
         WHERE (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k)
                  FROM unnest($8::bigint[]) AS k ORDER BY k) AS locked) >= 0
        ON CONFLICT (order_id) DO NOTHING
        RETURNING id, order_id
    ), items AS (
        INSERT INTO purchase_items (purchase_id, position, sku, category, quantity, unit_price)
        SELECT i.purchase_id, i.position, i.sku, i.category, i.quantity, i.unit_price
          FROM unnest($9::uuid[], $10::smallint[], $11::text[], $12::text[], $13::int[],
                      $14::numeric[])
               AS i(purchase_id, position, sku, category, quantity, unit_price)
          JOIN inserted ON inserted.id = i.purchase_id
    ), published AS (
        INSERT INTO outbox (event_id, event_type, topic, key, payload)
        SELECT e.event_id, e.event_type, e.topic, e.key, e.payload
          FROM unnest($20::uuid[], $21::text[], $22::text[], $23::text[], $24::bytea[],
                      $25::uuid[]) WITH ORDINALITY
               AS e(event_id, event_type, topic, key, payload, purchase_id, n)
         WHERE e.purchase_id IS NULL OR e.purchase_id IN (SELECT id FROM inserted)
         ORDER BY e.n
    )
    SELECT id, order_id FROM inserted
"""


async def _ids_by(db: asyncpg.Connection, sql: str, keys: Sequence[Any]) -> dict[Any, uuid.UUID]:
    """Customer ids by the key `sql` selects first (with the id second); no statement for none."""
    return {row[0]: row[1] for row in await db.fetch(sql, keys)} if keys else {}


async def _insert_purchases(
    db: asyncpg.Connection,
    purchase_ids: Sequence[uuid.UUID],
    owners: Sequence[uuid.UUID],
    purchases: Sequence[domain.Purchase],
    events: Sequence[CloudEvent[Any]],
    about: Sequence[uuid.UUID | None],
    *,
    created: Sequence[tuple[uuid.UUID, str | None, str | None, datetime, str | None]] = (),
    origin: str,
) -> list[asyncpg.Record]:
    """`_INGEST_SQL` bound to these purchases (ids chosen by the caller), their owners, the new
    customers, and the events with the purchase each is about; the rows of those inserted."""
    items = [
        (purchase_id, position, item.sku, item.category, item.quantity, item.unit_price)
        for purchase_id, purchase in zip(purchase_ids, purchases, strict=True)
        for position, item in enumerate(purchase.items)
    ]
    return await db.fetch(
        _INGEST_SQL,
        list(purchase_ids),
        list(owners),
        [purchase.order_id for purchase in purchases],
        [purchase.amount for purchase in purchases],
        [purchase.currency for purchase in purchases],
        [purchase.occurred_at for purchase in purchases],
        [purchase.channel for purchase in purchases],
        customer_lock_keys(owners),
        *([list(column) for column in zip(*items, strict=True)] if items else [[]] * 6),
        *([list(column) for column in zip(*created, strict=True)] if created else [[]] * 5),
        *outbox_arrays(events),
        list(about),
        origin,
    )


async def ingest_orders(
    session: AsyncSession, *, orders: Sequence[tuple[domain.IngestOrder, domain.Purchase]]
) -> list[CloudEvent[Any]]:
    """A batch of ingested orders, set-based: a few statements for the whole batch instead of
    a dozen round trips per order. Returns the events it wrote to the outbox.

    Anything unusual (an unresolvable customer, an order_id recorded differently, a customer
    created concurrently) raises: the consumer then redoes the batch message by message through
    `ingest_order`, which dead-letters only the culprit.
    """
    db = await driver_connection(session)
    ids = [o.customer_id for o, _ in orders if o.customer_id is not None]
    refs = [o.external_ref for o, _ in orders if o.external_ref is not None]
    emails = [o.email for o, _ in orders if o.email is not None]
    # A lookup by an identifier no order of the batch carries is skipped (feeds send one kind).
    by_id = set(
        await _ids_by(
            db, "SELECT id, id FROM customers WHERE id = ANY($1::uuid[]) AND erased_at IS NULL", ids
        )
    )
    by_ref = await _ids_by(
        db, "SELECT external_ref, id FROM customers WHERE external_ref = ANY($1::text[])", refs
    )
    by_email = await _ids_by(
        db, "SELECT email, id FROM customers WHERE email = ANY($1::text[])", emails
    )
    owners: list[uuid.UUID] = []
    created: list[tuple[uuid.UUID, str | None, str | None, datetime, str | None]] = []
    for order, purchase in orders:
        resolution = domain.resolve_order_customer(
            customer_id=order.customer_id,
            external_ref=order.external_ref,
            email=order.email,
            found_by_id=order.customer_id if order.customer_id in by_id else None,
            found_by_external_ref=by_ref.get(order.external_ref or ""),
            found_by_email=by_email.get(order.email or ""),
        )
        match resolution:
            case domain.UnresolvedCustomer(reason=reason):
                raise UnresolvableOrder(f"order {order.order_id!r}: {reason}")
            case domain.ExistingCustomer(customer_id=customer_id):
                owners.append(customer_id)
            case domain.NewCustomer(external_ref=ref, email=email):
                customer_id = uuid.uuid4()
                created.append((customer_id, ref, email, purchase.occurred_at, purchase.channel))
                if ref is not None:
                    by_ref[ref] = customer_id
                if email is not None:
                    by_email[email] = customer_id
                owners.append(customer_id)
    # Each customer's registration, then each order's purchase (the first of an order_id the
    # batch repeats), with the ids chosen here: the statement keeps those of purchases inserted.
    events: list[CloudEvent[Any]] = []
    about: list[uuid.UUID | None] = []
    for customer_id, _, _, registered_at, channel in created:
        events.append(
            _event(
                ev.CUSTOMER_REGISTERED,
                customer_id=customer_id,
                time=registered_at,
                data=p.CustomerRegistered(
                    customer_id=customer_id, kind=p.CustomerKind.person, source_channel=channel
                ),
            )
        )
        about.append(None)
    purchases = [purchase for _, purchase in orders]
    purchase_ids = new_ids(len(purchases))
    event_ids = iter(new_ids(len(purchases)))
    firsts: set[str] = set()
    for purchase_id, owner, purchase in zip(purchase_ids, owners, purchases, strict=True):
        if purchase.order_id in firsts:
            continue
        firsts.add(purchase.order_id)
        events.append(
            purchase_recorded_event(
                purchase_id=purchase_id,
                customer_id=owner,
                purchase=purchase,
                event_id=next(event_ids),
            )
        )
        about.append(purchase_id)
    # One round trip. A unique violation (a customer registered concurrently) sends the batch
    # to the slow path.
    inserted: dict[str, uuid.UUID] = {
        row["order_id"]: row["id"]
        for row in await _insert_purchases(
            db, purchase_ids, owners, purchases, events, about, created=created, origin="ingest"
        )
    }
    # Every order not inserted is checked against what is recorded, an order_id the batch
    # itself repeats included: one differing from the first is a conflict, as one by one.
    inserted_ids = set(inserted.values())
    repeated = [
        (owner, purchase)
        for purchase_id, owner, purchase in zip(purchase_ids, owners, purchases, strict=True)
        if purchase_id not in inserted_ids
    ]
    if repeated:
        recorded = {
            row["order_id"]: (row["customer_id"], row["amount"])
            for row in await db.fetch(
                "SELECT order_id, customer_id, amount FROM purchases WHERE order_id = ANY($1::text[])",
                [purchase.order_id for _, purchase in repeated],
            )
        }
        for owner, purchase in repeated:
            if recorded[purchase.order_id] != (owner, purchase.amount):
                raise Conflict(f"order_id {purchase.order_id!r} is recorded differently")
    return [
        e
        for e, purchase_id in zip(events, about, strict=True)
        if purchase_id in inserted_ids or purchase_id is None
    ]


# --- bulk import -------------------------------------------------------------------------------


async def import_purchases(
    sessions: SessionFactory,
    *,
    csv_text: str,
    actor: str,
    settings: ProfileSettings,
    now: datetime,
    import_id: uuid.UUID | None = None,
    registered: Callable[[uuid.UUID], None] | None = None,
    stopping: asyncio.Event | None = None,
) -> PurchaseImport:
    """Parse the CSV, then write its orders chunk by chunk (one transaction each), creating the
    customers it names by external_ref (registered at their first purchase in the file).

    `registered` is called once the import can be read (`get_import`), for a caller that answers
    before it ends; when `stopping` is set, the import stops between two chunks, recorded as
    failed with what to do."""
    import_id = import_id or uuid.uuid4()
    # Held while it runs: an import whose process stopped shows as failed (`get_import`).
    async with held_while_running(sessions, import_lock_key(import_id)):
        async with transaction(sessions) as session:
            session.add(
                PurchaseImport(
                    id=import_id,
                    status="running",
                    actor=actor[:200],
                    started_at=now,
                    rows_read=0,
                    orders_total=0,
                    orders_done=0,
                    purchases_created=0,
                    duplicates=0,
                    customers_created=0,
                    rejected=0,
                    rejections=[],
                )
            )
        if registered is not None:
            registered(import_id)
        try:
            # In a thread: 100,000 rows are over a second and a half of CPU, which held the
            # process's event loop (every other request, the health checks) for as long.
            parsed = await asyncio.to_thread(
                domain.parse_purchase_csv,
                io.StringIO(csv_text, newline=""),
                base_currency=settings.base_currency,
                now=now,
                max_clock_skew=settings.max_clock_skew,
            )
        except domain.CsvHeaderError as error:
            await _import_failed(sessions, import_id, error=str(error), now=now)
            raise
        # The parsed file is hundreds of thousands of long-lived objects that the cyclic GC
        # would rescan on every collection while the chunks run (a third of the import's time).
        # They are freed by reference counting when the import ends, frozen or not. A process
        # that froze its start-up objects (`crm serve`) stays frozen: unfreezing would put them
        # back into the scans for good.
        frozen_before = gc.get_freeze_count()
        gc.freeze()
        try:
            return await _write_import(
                sessions, import_id=import_id, parsed=parsed, settings=settings, stopping=stopping
            )
        except Exception as error:
            reason = (
                str(error)
                if isinstance(error, ImportStopped)
                else f"{type(error).__name__}: {error}"
            )
            await _import_failed(sessions, import_id, error=f"{reason}. {_IMPORT_AGAIN}", now=now)
            raise
        finally:
            if not frozen_before:
                gc.unfreeze()


class ImportStopped(Exception):
    """The service stopped between two chunks of an import it ran in the background."""


_IMPORT_AGAIN = (
    "The orders written so far (orders_done) stay recorded; importing the same file again "
    "records the rest (orders already recorded count as duplicates)"
)


def _storable(text: str | None) -> str | None:
    """A rejected row's text as jsonb can hold it (no NUL), escaped as the reasons show it."""
    return text.replace("\x00", "\\x00") if text else text


def _rejections_json(rejections: Sequence[domain.RowRejection]) -> list[dict[str, Any]]:
    return [
        {"line": r.line, "order_id": _storable(r.order_id), "reason": r.reason} for r in rejections
    ]


def import_lock_key(import_id: uuid.UUID) -> int:
    """The lock the process running this import holds (`held_while_running`)."""
    return advisory_key(f"profile:import:{import_id}")


async def _import_failed(
    sessions: SessionFactory, import_id: uuid.UUID, *, error: str, now: datetime
) -> None:
    try:
        async with transaction(sessions) as session:
            await session.execute(
                update(PurchaseImport)
                .where(PurchaseImport.id == import_id)
                .values(status="failed", finished_at=now, error=error[:2000])
            )
    except Exception:  # the database is away: a read of the import will tell it stopped
        log.warning("import.not_marked_failed", import_id=str(import_id), exc_info=True)


async def _write_import(
    sessions: SessionFactory,
    *,
    import_id: uuid.UUID,
    parsed: domain.PurchaseCsv,
    settings: ProfileSettings,
    stopping: asyncio.Event | None = None,
) -> PurchaseImport:
    # The first rejections by line; orders found recorded differently while writing join them.
    kept = list(parsed.rejections[:MAX_REJECTIONS_KEPT])
    async with transaction(sessions) as session:
        await session.execute(
            update(PurchaseImport)
            .where(PurchaseImport.id == import_id)
            .values(
                rows_read=parsed.rows_read,
                orders_total=len(parsed.orders),
                rejected=len(parsed.rejections),
                rejections=_rejections_json(kept),
            )
        )
    first_purchase: dict[str, datetime] = {}
    for order in parsed.orders:
        at = order.purchase.occurred_at
        if order.external_ref not in first_purchase or at < first_purchase[order.external_ref]:
            first_purchase[order.external_ref] = at

    orders = parsed.orders
    chunk = settings.import_chunk_orders
    for start in range(0, len(orders), chunk):
        if stopping is not None and stopping.is_set():
            raise ImportStopped(
                f"the service stopped after {start} of {len(orders)} orders, before the import "
                "finished"
            )
        async with transaction(sessions) as session:
            created, duplicates, new_customers, conflicts = await _import_chunk(
                session, orders[start : start + chunk], first_purchase
            )
            progress: dict[str, Any] = {}
            if conflicts:
                kept = sorted(kept + conflicts, key=operator.attrgetter("line"))
                kept = kept[:MAX_REJECTIONS_KEPT]
                progress = {
                    "rejected": PurchaseImport.rejected + len(conflicts),
                    "rejections": _rejections_json(kept),
                }
            await session.execute(
                update(PurchaseImport)
                .where(PurchaseImport.id == import_id)
                .values(
                    orders_done=PurchaseImport.orders_done + len(orders[start : start + chunk]),
                    purchases_created=PurchaseImport.purchases_created + created,
                    duplicates=PurchaseImport.duplicates + duplicates,
                    customers_created=PurchaseImport.customers_created + new_customers,
                    **progress,
                )
            )
        log.info(
            "import.progress",
            import_id=str(import_id),
            orders_done=min(start + chunk, len(orders)),
            orders_total=len(orders),
        )
    async with transaction(sessions) as session:
        await session.execute(
            update(PurchaseImport)
            .where(PurchaseImport.id == import_id)
            .values(status="done", finished_at=func.now())
        )
        finished = await session.get(PurchaseImport, import_id)
        assert finished is not None
        return finished


_IMPORT_CUSTOMERS_SQL = """
    INSERT INTO customers (id, kind, external_ref, registered_at, source_channel)
    SELECT id, 'person', ref, at, 'import'
      FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS t(id, ref, at)
    ON CONFLICT (external_ref) WHERE external_ref IS NOT NULL DO NOTHING
    RETURNING id, external_ref, registered_at
"""
_IMPORT_PURCHASES_SQL = """
    INSERT INTO purchases (id, customer_id, order_id, amount, currency, occurred_at, origin)
    SELECT id, customer_id, order_id, amount, currency, occurred_at, 'import'
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[],
                  $6::timestamptz[]) AS t(id, customer_id, order_id, amount, currency, occurred_at)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id, order_id
"""
_IMPORT_ITEMS_SQL = """
    INSERT INTO purchase_items (purchase_id, position, sku, category, quantity, unit_price)
    SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::text[], $4::text[], $5::int[],
                         $6::numeric[])
"""


async def _import_chunk(
    session: AsyncSession,
    orders: Sequence[domain.ImportedOrder],
    first_purchase: dict[str, datetime],
) -> tuple[int, int, int, list[domain.RowRejection]]:
    """(purchases created, duplicates, customers created, lines of orders recorded differently)
    for one chunk, in one transaction.

    Rows go in as arrays (`unnest`): one statement per table instead of one per row, and no
    ORM compilation of thousands of parameters."""
    db = await driver_connection(session)
    refs = sorted({order.external_ref for order in orders})
    known: dict[str, uuid.UUID] = {
        row["external_ref"]: row["id"]
        for row in await db.fetch(
            "SELECT external_ref, id FROM customers WHERE external_ref = ANY($1::text[])", refs
        )
    }
    missing = [ref for ref in refs if ref not in known]
    if missing:
        # A customer is created for orders to record, not for orders recorded already: those
        # are another customer's (none has this external_ref: an erased one, say), and a file
        # imported again after an erasure must not bring the erased link back.
        recorded_elsewhere = {
            row["order_id"]
            for row in await db.fetch(
                "SELECT order_id FROM purchases WHERE order_id = ANY($1::text[])",
                [order.purchase.order_id for order in orders if order.external_ref not in known],
            )
        }
        if recorded_elsewhere:
            wanted = {
                order.external_ref
                for order in orders
                if order.purchase.order_id not in recorded_elsewhere
            }
            # Unless a writer that recorded them created the customer since the lookup.
            known.update(await _customers_by_ref(session, [r for r in missing if r not in wanted]))
            missing = [ref for ref in missing if ref in wanted and ref not in known]
    events: list[CloudEvent[Any]] = []
    customers_created = 0
    if missing:
        # Customer ids stay fully random (version 4): they are shown to users and partners,
        # and a time-ordered id would tell when the customer was created.
        customer_ids = [uuid.uuid4() for _ in missing]
        await lock_customers(session, customer_ids)
        inserted = await db.fetch(
            _IMPORT_CUSTOMERS_SQL, customer_ids, missing, [first_purchase[ref] for ref in missing]
        )
        customers_created = len(inserted)
        for row in inserted:
            known[row["external_ref"]] = row["id"]
            events.append(
                _event(
                    ev.CUSTOMER_REGISTERED,
                    customer_id=row["id"],
                    time=row["registered_at"],
                    data=p.CustomerRegistered(
                        customer_id=row["id"],
                        kind=p.CustomerKind.person,
                        source_channel="import",
                    ),
                )
            )
        if customers_created < len(missing):
            # Created concurrently by another writer: look them up.
            known.update(await _customers_by_ref(session, [r for r in missing if r not in known]))
    conflicts = [
        domain.RowRejection(
            line, order.purchase.order_id, _recorded_elsewhere(order.purchase.order_id)
        )
        for order in orders
        if order.external_ref not in known
        for line in order.lines
    ]
    all_orders, orders = orders, [order for order in orders if order.external_ref in known]
    await lock_customers(session, known.values())
    purchase_ids = new_ids(len(orders))
    created_ids: dict[str, uuid.UUID] = {
        row["order_id"]: row["id"]
        for row in await db.fetch(
            _IMPORT_PURCHASES_SQL,
            purchase_ids,
            [known[order.external_ref] for order in orders],
            [order.purchase.order_id for order in orders],
            [order.purchase.amount for order in orders],
            [order.purchase.currency for order in orders],
            [order.purchase.occurred_at for order in orders],
        )
    }
    items: list[tuple[uuid.UUID, int, str, str | None, int, Decimal]] = []
    for order in orders:
        purchase_id = created_ids.get(order.purchase.order_id)
        if purchase_id is None:
            continue
        for position, item in enumerate(order.purchase.items):
            items.append(
                (purchase_id, position, item.sku, item.category, item.quantity, item.unit_price)
            )
        events.append(
            purchase_recorded_event(
                purchase_id=purchase_id,
                customer_id=known[order.external_ref],
                purchase=order.purchase,
            )
        )
    if items:
        await db.execute(_IMPORT_ITEMS_SQL, *(list(column) for column in zip(*items, strict=True)))
    await add_events(session, MESSAGING, events)
    # An order_id already recorded is a duplicate only when it is the same order: one recorded
    # for another customer or with another amount is refused, as over HTTP and ingest.
    not_created = [order for order in orders if order.purchase.order_id not in created_ids]
    if not_created:
        recorded = {
            row["order_id"]: row
            for row in await db.fetch(
                "SELECT order_id, customer_id, amount, currency FROM purchases "
                "WHERE order_id = ANY($1::text[])",
                [order.purchase.order_id for order in not_created],
            )
        }
        for order in not_created:
            same_id = recorded.get(order.purchase.order_id)
            if same_id is None:  # not inserted, yet not there: nothing to compare it with
                continue
            difference = _recorded_differently(
                order.purchase.order_id,
                recorded_for=same_id["customer_id"],
                recorded_amount=same_id["amount"],
                currency=same_id["currency"],
                customer_id=known[order.external_ref],
                amount=order.purchase.amount,
            )
            if difference is not None:
                conflicts += [
                    domain.RowRejection(line, order.purchase.order_id, difference)
                    for line in order.lines
                ]
    conflicting_orders = len({rejection.order_id for rejection in conflicts})
    return (
        len(created_ids),
        len(all_orders) - len(created_ids) - conflicting_orders,
        customers_created,
        conflicts,
    )


async def _customers_by_ref(session: AsyncSession, refs: Sequence[str]) -> dict[str, uuid.UUID]:
    rows = await session.execute(
        select(Customer.external_ref, Customer.id).where(Customer.external_ref.in_(refs))
    )
    return {ref: customer_id for ref, customer_id in rows if ref is not None}


async def get_import(
    session: AsyncSession, *, import_id: uuid.UUID, now: datetime
) -> PurchaseImport:
    """The import; one still marked running whose process stopped is marked failed here."""
    found = await session.get(PurchaseImport, import_id)
    if found is None:
        raise NotFound(f"No import {import_id}")
    if found.status == "running" and await nobody_holds(session, import_lock_key(import_id)):
        found.status, found.finished_at = "failed", now
        found.error = (
            f"abandoned: the process running it stopped before it finished. {_IMPORT_AGAIN}"
        )
        log.warning("import.abandoned", import_id=str(import_id), orders_done=found.orders_done)
    return found


# --- the 360 view ------------------------------------------------------------------------------

# One round trip: the customer and every local projection, aggregated in the database. Each
# projection table is read once, by `$1` rather than through the join, and consents come
# unsorted (sorted here): about a fifth less database time per call than one subquery a column.
CUSTOMER_360_SQL = """
    SELECT c.id, c.kind, c.name, c.email, c.phone, c.addresses, c.external_ref, c.tags,
           c.custom_attributes, c.referred_by, c.source_channel, c.registered_at, c.version,
           c.updated_at, k.consents,
           ps.purchase_count, ps.first_at, ps.last_at, ps.total, ps.refunded, ps.recorded_at,
           st.stage, st.since, st.reason AS stage_reason, st.updated_at AS stage_updated_at,
           v.score, v.tier, v.loyalty_index, v.loyalty_type, v.loyalty_satisfaction_type,
           v.p_alive, v.clv, v.model_version, v.scored_at, v.updated_at AS value_updated_at,
           o.open_complaints, o.complaints_updated_at
      FROM customers c
      LEFT JOIN LATERAL (
            SELECT json_agg(json_build_object(
                       'purpose', purpose, 'status', status,
                       'changed_at', changed_at, 'source', source)) AS consents
              FROM consents WHERE customer_id = $1) k ON true
      LEFT JOIN LATERAL (
            SELECT count(*) AS purchase_count, min(occurred_at) AS first_at,
                   max(occurred_at) AS last_at, coalesce(sum(amount), 0) AS total,
                   coalesce(sum(refunded_total), 0) AS refunded, max(recorded_at) AS recorded_at
              FROM purchases WHERE customer_id = $1) ps ON true
      LEFT JOIN customer_stage st ON st.customer_id = $1
      LEFT JOIN customer_value v ON v.customer_id = $1
      LEFT JOIN LATERAL (
            SELECT json_agg(json_build_object(
                       'complaint_id', complaint_id, 'severity', severity,
                       'status', status, 'category', category, 'opened_at', opened_at,
                       'first_response_due', first_response_due,
                       'resolution_due', resolution_due,
                       'escalation_level', escalation_level,
                       'sla_breached', sla_breached) ORDER BY opened_at)
                       FILTER (WHERE status <> 'closed') AS open_complaints,
                   max(updated_at) AS complaints_updated_at
              FROM customer_complaints WHERE customer_id = $1) o ON true
     WHERE c.id = $1 AND c.erased_at IS NULL
"""
AUDIT_SQL = """
    INSERT INTO pii_access_log (customer_id, actor, action, request_id, accessed_at)
    VALUES ($1, $2, $3, $4, $5)
"""
_JSON_COLUMNS = ("consents", "open_complaints", "addresses", "custom_attributes")
_BY_PURPOSE = operator.itemgetter("purpose")


async def customer_360(
    conn: asyncpg.Connection,
    *,
    customer_id: uuid.UUID,
    audit_actor: str | None,
    request_id: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The 360 row, read on a plain asyncpg connection: this is the hot read path, so it skips
    the ORM and the transaction (one statement is consistent on its own) unless an unmasked
    read must be audited in the same transaction."""
    if audit_actor is None:
        row = await conn.fetchrow(CUSTOMER_360_SQL, customer_id)
    else:
        async with conn.transaction():
            row = await conn.fetchrow(CUSTOMER_360_SQL, customer_id)
            if row is not None:
                await conn.execute(
                    AUDIT_SQL, customer_id, audit_actor[:200], "360", request_id, now
                )
    if row is None:
        raise NotFound(f"No customer {customer_id}")
    found = dict(row)
    for column in _JSON_COLUMNS:
        if isinstance(found[column], str):
            found[column] = orjson.loads(found[column])
    # An aggregate over no rows is NULL; consents come unsorted from the query.
    found["consents"] = sorted(found["consents"] or (), key=_BY_PURPOSE)
    found["open_complaints"] = found["open_complaints"] or []
    return found


async def customer_exists(session: AsyncSession, customer_id: uuid.UUID) -> bool:
    return (
        await session.scalar(
            select(Customer.id).where(
                and_(Customer.id == customer_id, Customer.erased_at.is_(None))
            )
        )
    ) is not None
