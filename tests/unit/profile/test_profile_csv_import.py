"""Parsing the purchase CSV: header, rows, multi-line orders, and reasons for bad lines."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.profile.domain import (
    CsvHeaderError,
    LineItem,
    PurchaseCsv,
    parse_purchase_csv,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
HEADER = "external_ref,order_id,occurred_at,amount,currency"
ITEM_HEADER = HEADER + ",sku,category,quantity"


def parse(text: str, base_currency: str = "USD") -> PurchaseCsv:
    return parse_purchase_csv(text.splitlines(keepends=True), base_currency=base_currency, now=NOW)


def reasons(result: PurchaseCsv) -> dict[int, str]:
    return {rejection.line: rejection.reason for rejection in result.rejections}


def test_plain_rows_become_orders_without_items() -> None:
    result = parse(
        f"{HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,59.80,USD\n"
        "shop-2,A-2,2024-05-02T09:30:00+02:00,0,usd\n"
    )
    assert result.rows_read == 2 and result.rejections == ()
    first, second = result.orders
    assert (first.external_ref, first.purchase.order_id, first.lines) == ("shop-1", "A-1", (2,))
    assert first.purchase.amount == Decimal("59.80") and first.purchase.items == ()
    assert second.purchase.occurred_at == datetime(2024, 5, 2, 7, 30, tzinfo=UTC)
    assert second.purchase.amount == Decimal("0.00") and second.purchase.currency == "USD"


def test_rows_of_one_order_form_one_purchase_with_an_item_each_wherever_they_are() -> None:
    result = parse(
        f"{ITEM_HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,39.80,USD,TEE-1,apparel,2\n"
        "shop-2,B-9,2024-05-01T11:00:00Z,5.00,USD,PEN,office,\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,20.00,USD,MUG-7,home,1\n"
    )
    assert result.rejections == ()
    order_a, order_b = result.orders
    assert order_a.lines == (2, 4)
    assert order_a.purchase.amount == Decimal("59.80")
    assert order_a.purchase.items == (
        LineItem("TEE-1", "apparel", 2, Decimal("19.90")),
        LineItem("MUG-7", "home", 1, Decimal("20.00")),
    )
    # quantity left blank means one piece
    assert order_b.purchase.items == (LineItem("PEN", "office", 1, Decimal("5.00")),)


def test_columns_may_come_in_any_order_and_any_case() -> None:
    result = parse(
        "\ufeffAmount,Currency,ORDER_ID,external_ref,occurred_at\n"
        "12.50,USD,A-1,shop-1,2024-05-01T10:00:00Z\n"
    )
    assert result.orders[0].purchase.amount == Decimal("12.50")


def test_bare_date_means_midnight_utc() -> None:
    result = parse(f"{HEADER}\nshop-1,A-1,2024-05-01,10.00,USD\n")
    assert result.orders[0].purchase.occurred_at == datetime(2024, 5, 1, tzinfo=UTC)


def test_each_bad_row_gets_its_reason_and_the_rest_still_import() -> None:
    result = parse(
        f"{HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD\n"
        "shop-2,A-2,2024-05-01T10:00:00,10.00,USD\n"
        "shop-3,A-3,yesterday,10.00,USD\n"
        "shop-4,A-4,2024-05-01T10:00:00Z,-3.00,USD\n"
        'shop-5,A-5,2024-05-01T10:00:00Z,"1,234.50",USD\n'
        "shop-6,A-6,2024-05-01T10:00:00Z,10.001,USD\n"
        "shop-7,A-7,2024-05-01T10:00:00Z,10.00,EUR\n"
        ",A-8,2024-05-01T10:00:00Z,10.00,USD\n"
        "shop-9,,2024-05-01T10:00:00Z,10.00,USD\n"
        "shop-10,A-10,2030-01-01T00:00:00Z,10.00,USD\n"
        "shop-11,A-11,2024-05-01T10:00:00Z,10.00\n"
        "shop-12,A-12,2024-05-01T10:00:00Z,12.00,USD\n"
    )
    assert result.rows_read == 12
    assert [order.purchase.order_id for order in result.orders] == ["A-1", "A-12"]
    by_line = reasons(result)
    assert sorted(by_line) == list(range(3, 13))
    assert "has no UTC offset" in by_line[3]
    assert "is not an RFC 3339 time" in by_line[4]
    assert "nor a date like 2024-05-01" in by_line[4]  # a bare date is accepted too: say so
    assert "'-3.00' is not a plain decimal number" in by_line[5]
    assert "'1,234.50' is not a plain decimal number" in by_line[6]
    assert "too many decimal places" in by_line[7]
    assert "must be USD, this deployment's base currency; got EUR" in by_line[8]
    assert by_line[9] == "external_ref: must not be empty"
    assert by_line[10] == "order_id: must not be empty"
    assert "is in the future" in by_line[11]
    assert by_line[12] == "expected 5 fields, found 4"
    assert {rejection.order_id for rejection in result.rejections if rejection.line == 10} == {None}


def test_one_bad_line_rejects_its_whole_order_pointing_at_it() -> None:
    result = parse(
        f"{ITEM_HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,39.80,USD,TEE-1,apparel,2\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,20.00,USD,MUG-7,home,0\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,5.00,USD,PEN,office,1\n"
    )
    assert result.orders == ()
    by_line = reasons(result)
    assert "quantity: '0' is not a whole number" in by_line[3]
    assert by_line[2] == by_line[4] == "order 'A-1' not imported because of line(s) 3"


def test_lines_of_one_order_must_agree() -> None:
    result = parse(
        f"{ITEM_HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,TEE-1,apparel,1\n"
        "shop-2,A-1,2024-05-02T10:00:00Z,10.00,USD,TEE-2,apparel,1\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,TEE-1,apparel,1\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,,,\n"
    )
    assert result.orders == ()
    by_line = reasons(result)
    assert "external_ref 'shop-2' differs from 'shop-1' on line 2" in by_line[3]
    assert "occurred_at differs from line 2" in by_line[3]
    assert "sku 'TEE-1' already on line 2 of the same order" in by_line[4]
    assert "needs a sku on each" in by_line[5]
    assert by_line[2] == "order 'A-1' not imported because of line(s) 3, 4, 5"


def test_line_total_must_divide_into_unit_prices() -> None:
    result = parse(f"{ITEM_HEADER}\nshop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,TEE-1,apparel,3\n")
    assert "the line total 10.00 does not divide into 3 equal unit prices" in reasons(result)[2]


def test_item_line_needs_a_sku_but_not_a_category() -> None:
    result = parse(
        f"{ITEM_HEADER}\n"
        "shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,TEE-1,,1\n"
        "shop-1,A-2,2024-05-01T10:00:00Z,10.00,USD,,apparel,1\n"
    )
    assert result.orders[0].purchase.items == (LineItem("TEE-1", None, 1, Decimal("10.00")),)
    assert reasons(result) == {3: "sku: must not be empty on an item line"}


def test_line_numbers_are_those_an_editor_shows() -> None:
    result = parse(
        f"{HEADER}\n"
        "\n"
        'shop-1,"A-1\nsecond line of the id",2024-05-01T10:00:00Z,10.00,USD\n'
        "shop-2,A-2,2024-05-01T10:00:00Z,10.00,USD\n"
        "shop-3,A-3,2024-05-01T10:00:00Z,bad,USD\n"
    )
    assert result.rows_read == 3
    assert [order.lines for order in result.orders] == [(5,)]
    by_line = reasons(result)
    assert list(by_line) == [3, 6]
    assert by_line[3] == "order_id: must not contain control characters"


def test_broken_quoting_rejects_that_row_only() -> None:
    result = parse(
        f"{HEADER}\n"
        'shop-1,"A-1"x,2024-05-01T10:00:00Z,10.00,USD\n'
        "shop-2,A-2,2024-05-01T10:00:00Z,10.00,USD\n"
    )
    assert "not valid CSV" in reasons(result)[2]
    assert [order.purchase.order_id for order in result.orders] == ["A-2"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "the first line must be the header"),
        ("external_ref,order_id,amount,currency", "missing columns: occurred_at"),
        (HEADER + ",price", "unknown columns: price"),
        (HEADER + ",amount", "repeated columns: amount"),
        (HEADER + ",sku", "item columns come as sku and category"),
        (HEADER + ",quantity", "item columns come as sku and category"),
        ("shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD", "unknown columns: shop-1"),
    ],
)
def test_header_problems_stop_the_file_with_the_expected_columns(header: str, message: str) -> None:
    with pytest.raises(CsvHeaderError) as caught:
        parse(header + "\n")
    assert message in str(caught.value)
    assert "expected external_ref,order_id,occurred_at,amount,currency[,sku,category,quantity]" in (
        str(caught.value)
    ) or "the first line must be the header" in str(caught.value)


def test_header_only_file_has_nothing_to_import() -> None:
    result = parse(HEADER + "\n")
    assert (result.rows_read, result.orders, result.rejections) == (0, (), ())


def test_hundred_thousand_rows_parse_in_a_few_seconds() -> None:
    """Guards the import budget (well under a minute for 100,000 rows) against regressions."""
    start = NOW - timedelta(days=400)
    rows = [ITEM_HEADER]
    for n in range(100_000):
        order = n // 2
        when = (start + timedelta(minutes=order)).isoformat()
        rows.append(f"shop-{order % 20_000},O-{order},{when},{n % 97}.50,USD,SKU-{n % 2},cat,1")
    began = time.perf_counter()
    result = parse("\n".join(rows) + "\n")
    elapsed = time.perf_counter() - began
    assert result.rows_read == 100_000 and result.rejections == ()
    assert len(result.orders) == 50_000
    assert elapsed < 15, f"parsing 100,000 rows took {elapsed:.1f} s"


def test_item_sku_and_category_are_held_to_the_contracts_bounds() -> None:
    """purchase.recorded carries them: a longer one would be an event its consumers refuse."""
    long_sku, long_category = "S" * 101, "c" * 101
    result = parse(
        f"{ITEM_HEADER}\n"
        f"shop-1,A-1,2024-05-01T10:00:00Z,10.00,USD,{long_sku},apparel,1\n"
        f"shop-1,A-2,2024-05-01T10:00:00Z,10.00,USD,TEE-1,{long_category},1\n"
        f"shop-1,A-3,2024-05-01T10:00:00Z,10.00,USD,{'S' * 100},{'c' * 100},1\n"
    )
    assert reasons(result) == {
        2: "sku: must be at most 100 characters",
        3: "category: must be at most 100 characters",
    }
    assert [o.purchase.order_id for o in result.orders] == ["A-3"]
