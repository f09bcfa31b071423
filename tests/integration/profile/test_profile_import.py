"""Bulk import of historical purchases (CSV): customers created, idempotent, bad rows reported."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from integration.profile.profile_helpers import READER, WRITER, Profile, read_events, rows
from sqlalchemy import text

from services.profile import domain, service
from shared.db import session_factory
from shared.events import registry as ev
from shared.events import topics

pytestmark = pytest.mark.integration

HEADER = "external_ref,order_id,occurred_at,amount,currency,sku,category,quantity\n"


async def imported(profile: Profile, csv_bytes: bytes) -> dict[str, Any]:
    """The summary of a CSV import posted as the body (200)."""
    response = await profile.client.post(
        "/v1/imports/purchases",
        content=csv_bytes,
        headers={**WRITER, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()
    return summary


async def test_import_creates_customers_records_orders_and_reports_bad_rows(
    profile: Profile,
) -> None:
    m = uuid.uuid4().hex[:8]
    existing = await profile.register(external_ref=f"old-{m}")
    csv_text = (
        HEADER
        + f"new-{m},{m}-1,2023-01-05T10:00:00Z,39.80,USD,TEE-1,apparel,2\n"
        + f"new-{m},{m}-1,2023-01-05T10:00:00Z,20.00,USD,MUG-7,home,1\n"
        + f"new-{m},{m}-2,2022-12-01,5.00,USD,PEN,office,\n"
        + f"old-{m},{m}-3,2023-02-01T00:00:00+01:00,12.00,USD,,,\n"
        + f"old-{m},{m}-4,2023-02-02T00:00:00Z,-1,USD,,,\n"
        + f"bad-{m},{m}-5,2023-02-03T00:00:00Z,10.00,EUR,,,\n"
        + f"new-{m},{m}-6,2023-03-01T00:00:00Z,10.00,USD,A,x,1\n"
        + f"new-{m},{m}-6,2023-03-01T00:00:00Z,10.00,USD,B,x,0\n"
    )
    summary = await imported(profile, csv_text.encode())
    assert summary["status"] == "done"
    assert (summary["rows_read"], summary["orders_total"], summary["orders_done"]) == (8, 3, 3)
    assert (summary["purchases_created"], summary["duplicates"]) == (3, 0)
    assert summary["customers_created"] == 1
    assert summary["rejected"] == 4
    reasons = {r["line"]: r["reason"] for r in summary["rejections"]}
    assert sorted(reasons) == [6, 7, 8, 9]
    assert "not a plain decimal number" in reasons[6]
    assert "must be USD" in reasons[7]
    assert reasons[8] == f"order '{m}-6' not imported because of line(s) 9"
    assert "quantity" in reasons[9]

    async with profile.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT p.order_id, p.amount, c.external_ref, c.registered_at, "
                    "(SELECT count(*) FROM purchase_items i WHERE i.purchase_id = p.id) "
                    "FROM purchases p JOIN customers c ON c.id = p.customer_id "
                    "WHERE p.order_id LIKE :m ORDER BY p.order_id"
                ),
                {"m": f"{m}-%"},
            )
        ).all()
    assert [(r[0], str(r[1]), r[2], r[4]) for r in rows] == [
        (f"{m}-1", "59.8000", f"new-{m}", 2),
        (f"{m}-2", "5.0000", f"new-{m}", 1),
        (f"{m}-3", "12.0000", f"old-{m}", 0),
    ]
    # the new customer is registered at its first purchase in the file
    assert rows[0][3].isoformat() == "2022-12-01T00:00:00+00:00"
    new_id = (
        await profile.client.get("/v1/customers", params={"q": f"new-{m}"}, headers=READER)
    ).json()["items"][0]["id"]
    events = await read_events(profile.bootstrap, topics.CUSTOMERS, subject=new_id, want=1)
    assert [(e["type"], e["time"][:10]) for e in events] == [(ev.CUSTOMER_REGISTERED, "2022-12-01")]
    purchases = await read_events(profile.bootstrap, topics.PURCHASES, subject=new_id, want=2)
    assert sorted(e["data"]["amount"] for e in purchases) == ["5.00", "59.80"]
    old_events = await read_events(
        profile.bootstrap, topics.PURCHASES, subject=existing["id"], want=1
    )
    assert [e["data"]["order_id"] for e in old_events] == [f"{m}-3"]

    # progress and summary stay readable
    again = await profile.client.get(f"/v1/imports/{summary['id']}", headers=READER)
    assert again.json()["purchases_created"] == 3

    # importing the same file again changes nothing: every order is a duplicate
    second = (
        await profile.client.post(
            "/v1/imports/purchases",
            content=csv_text.encode(),
            headers={**WRITER, "Content-Type": "text/csv"},
        )
    ).json()
    assert (second["purchases_created"], second["duplicates"], second["customers_created"]) == (
        0,
        3,
        0,
    )


async def test_an_order_id_recorded_differently_is_rejected_not_counted_a_duplicate(
    profile: Profile,
) -> None:
    """An order_id recorded for another customer, or with another amount, is not the same order
    again: the import rejects its lines with the reason (as HTTP answers 409), and only the
    same order is a duplicate."""
    m = uuid.uuid4().hex[:8]
    owner = await profile.register(external_ref=f"owner-{m}")
    for order_id in (f"{m}-elsewhere", f"{m}-amount", f"{m}-same"):
        recorded = await profile.client.post(
            f"/v1/customers/{owner['id']}/purchases",
            json={
                "order_id": order_id,
                "amount": "10.00",
                "currency": "USD",
                "occurred_at": "2023-01-01T00:00:00Z",
            },
            headers=WRITER,
        )
        assert recorded.status_code == 201, recorded.text
    csv_text = (
        HEADER
        + f"other-{m},{m}-elsewhere,2023-01-01T00:00:00Z,10.00,USD,A,x,1\n"
        + f"other-{m},{m}-elsewhere,2023-01-01T00:00:00Z,5.00,USD,B,x,1\n"
        + f"owner-{m},{m}-amount,2023-01-01T00:00:00Z,12.00,USD,,,\n"
        + f"owner-{m},{m}-same,2023-01-01T00:00:00Z,10.00,USD,,,\n"
        + f"owner-{m},{m}-new,2023-01-02T00:00:00Z,7.00,USD,,,\n"
    )
    summary = await imported(profile, csv_text.encode())
    assert (summary["purchases_created"], summary["duplicates"], summary["rejected"]) == (1, 1, 3)
    reasons = {r["line"]: (r["order_id"], r["reason"]) for r in summary["rejections"]}
    assert sorted(reasons) == [2, 3, 4]
    assert reasons[2] == (
        f"{m}-elsewhere",
        f"order_id '{m}-elsewhere' is recorded for another customer",
    )
    assert reasons[3] == reasons[2]
    assert reasons[4][0] == f"{m}-amount"
    assert "already recorded with amount 10.00" in reasons[4][1]
    stored = (await profile.client.get(f"/v1/imports/{summary['id']}", headers=READER)).json()
    assert (stored["rejected"], stored["rejections"]) == (3, summary["rejections"])
    recorded_rows = await rows(
        profile.engine,
        "SELECT order_id, amount, customer_id FROM purchases WHERE order_id LIKE :m "
        "ORDER BY order_id",
        m=f"{m}-%",
    )
    assert [(r[0], str(r[1]), str(r[2])) for r in recorded_rows] == [
        (f"{m}-amount", "10.0000", owner["id"]),
        (f"{m}-elsewhere", "10.0000", owner["id"]),
        (f"{m}-new", "7.0000", owner["id"]),
        (f"{m}-same", "10.0000", owner["id"]),
    ]


async def test_a_file_imported_again_after_an_erasure_does_not_bring_the_customer_back(
    profile: Profile,
) -> None:
    m = uuid.uuid4().hex[:8]
    csv_text = HEADER + f"gone-{m},{m}-1,2023-01-05T10:00:00Z,10.00,USD,,,\n"

    first = await imported(profile, csv_text.encode())
    assert (first["customers_created"], first["purchases_created"]) == (1, 1)
    (customer_id,) = (
        row[0]
        for row in await rows(
            profile.engine, "SELECT id FROM customers WHERE external_ref = :r", r=f"gone-{m}"
        )
    )
    erased = await profile.client.delete(f"/v1/customers/{customer_id}", headers=WRITER)
    assert erased.status_code == 204
    again = await imported(profile, csv_text.encode())
    assert (again["customers_created"], again["purchases_created"], again["rejected"]) == (0, 0, 1)
    assert again["rejections"] == [
        {
            "line": 2,
            "order_id": f"{m}-1",
            "reason": f"order_id '{m}-1' is recorded for another customer",
        }
    ]
    assert not await rows(
        profile.engine, "SELECT id FROM customers WHERE external_ref = :r", r=f"gone-{m}"
    )


async def test_import_as_multipart_file(profile: Profile) -> None:
    m = uuid.uuid4().hex[:8]
    csv_text = "external_ref,order_id,occurred_at,amount,currency\n" + (
        f"mp-{m},{m}-1,2023-01-05T10:00:00Z,10.00,USD\n"
    )
    response = await profile.client.post(
        "/v1/imports/purchases",
        files={"file": ("orders.csv", csv_text.encode(), "text/csv")},
        headers=WRITER,
    )
    assert response.status_code == 200, response.text
    assert response.json()["purchases_created"] == 1


async def test_the_file_is_parsed_off_the_event_loop(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parsing is seconds of CPU for a large file: on the loop's thread it held every other
    # request of the process, health checks included, for as long.
    parsed_on: list[int] = []
    parse = domain.parse_purchase_csv

    def recording(*args: Any, **kwargs: Any) -> Any:
        parsed_on.append(threading.get_ident())
        return parse(*args, **kwargs)

    monkeypatch.setattr(domain, "parse_purchase_csv", recording)
    m = uuid.uuid4().hex[:8]
    summary = await imported(
        profile, f"{HEADER}th-{m},{m}-1,2023-01-05T10:00:00Z,10.00,USD,S,c,1\n".encode()
    )
    assert summary["purchases_created"] == 1
    assert parsed_on and parsed_on != [threading.get_ident()]


async def test_an_import_leaves_the_start_up_freeze_in_place(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crm serve` keeps what it loaded at start-up out of the cyclic GC's scans (gc.freeze);
    an import, which freezes its parsed rows while it writes them, leaves it so, and its rows
    are freed when it ends rather than kept: what stays frozen is what stays alive (caches the
    first imports fill), so the count levels off."""
    orders = 3_000
    write = service._write_import

    async def first_order_only(*args: Any, parsed: domain.PurchaseCsv, **kwargs: Any) -> Any:
        # Every order parsed (and frozen), one written: the shared topics stay quiet.
        return await write(
            *args, parsed=dataclasses.replace(parsed, orders=parsed.orders[:1]), **kwargs
        )

    monkeypatch.setattr(service, "_write_import", first_order_only)

    def orders_csv(m: str) -> bytes:
        return (
            HEADER
            + "".join(
                f"fz-{m}-{n % 300},{m}-{n},2023-02-0{1 + n % 9}T10:00:00Z,12.50,USD,S{n % 7},c,1\n"
                for n in range(orders)
            )
        ).encode()

    gc.collect()
    gc.freeze()
    try:
        frozen = [gc.get_freeze_count()]
        for _ in range(4):
            summary = await imported(profile, orders_csv(uuid.uuid4().hex[:8]))
            assert summary["purchases_created"] == 1
            frozen.append(gc.get_freeze_count())
        print("objects frozen, at start-up and after each import:", frozen)
        assert min(frozen[1:]) > frozen[0] // 2  # not unfrozen (that leaves none frozen)
        assert abs(frozen[-1] - frozen[-2]) < orders / 10  # the parsed rows are not kept
    finally:
        gc.unfreeze()


async def test_a_file_without_a_usable_header_is_refused_whole(profile: Profile) -> None:
    response = await profile.client.post(
        "/v1/imports/purchases",
        content=b"order,amount\nA,1\n",
        headers={**WRITER, "Content-Type": "text/csv"},
    )
    assert response.status_code == 422
    assert "missing columns" in response.json()["detail"]
    latin1 = await profile.client.post(
        "/v1/imports/purchases",
        content="external_ref\n\xe9".encode("latin-1"),
        headers={**WRITER, "Content-Type": "text/csv"},
    )
    assert latin1.status_code == 422 and "not UTF-8" in latin1.json()["detail"]


async def test_an_import_that_fails_says_so_and_what_to_do(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = uuid.uuid4().hex[:8]
    csv_text = HEADER + "".join(
        f"fail-{m},{m}-{n},2023-01-0{n}T10:00:00Z,10.00,USD,TEE-1,apparel,1\n" for n in (1, 2, 3)
    )

    async def chunk_fails(*args: Any) -> Any:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(service, "_import_chunk", chunk_fails)
    failed = await profile.client.post(
        "/v1/imports/purchases",
        content=csv_text.encode(),
        headers={**WRITER, "Content-Type": "text/csv"},
    )
    assert failed.status_code == 500
    monkeypatch.undo()
    (import_id,) = (
        await rows(
            profile.engine,
            "SELECT id FROM purchase_imports WHERE rows_read = 3 AND orders_total = 3"
            " AND started_at > now() - interval '1 minute' ORDER BY started_at DESC LIMIT 1",
        )
    )[0]
    response = await profile.client.get(f"/v1/imports/{import_id}", headers=READER)
    summary = response.json()
    assert (summary["status"], summary["orders_done"], summary["purchases_created"]) == (
        "failed",
        0,
        0,
    )
    assert summary["finished_at"] is not None
    assert summary["error"].startswith("RuntimeError: the disk is full")
    assert "importing the same file again records the rest" in summary["error"]

    again = await profile.client.post(
        "/v1/imports/purchases",
        content=csv_text.encode(),
        headers={**WRITER, "Content-Type": "text/csv"},
    )
    assert again.status_code == 200, again.text
    assert (again.json()["purchases_created"], again.json()["duplicates"]) == (3, 0)


async def _running_import(profile: Profile) -> uuid.UUID:
    import_id = uuid.uuid4()
    async with profile.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO purchase_imports (id, status, actor, started_at, rows_read,"
                " orders_total, orders_done) VALUES (:id, 'running', 'ops', now(), 10, 10, 4)"
            ),
            {"id": import_id},
        )
    return import_id


async def test_an_import_whose_process_stopped_shows_as_failed(profile: Profile) -> None:
    stopped, busy = await _running_import(profile), await _running_import(profile)
    async with profile.engine.connect() as holder:  # the process still importing `busy`
        await holder.execute(
            text("SELECT pg_advisory_lock(:k)"), {"k": service.import_lock_key(busy)}
        )
        at_work = (await profile.client.get(f"/v1/imports/{busy}", headers=READER)).json()
        assert (at_work["status"], at_work["error"]) == ("running", None)
        await holder.execute(
            text("SELECT pg_advisory_unlock(:k)"), {"k": service.import_lock_key(busy)}
        )
    summary = (await profile.client.get(f"/v1/imports/{stopped}", headers=READER)).json()
    assert (summary["status"], summary["orders_done"]) == ("failed", 4)
    assert summary["error"].startswith("abandoned: the process running it stopped")
    assert summary["finished_at"] is not None
    # Recorded, not only answered: a plain read of the row says so too.
    (status,) = (
        await rows(profile.engine, "SELECT status FROM purchase_imports WHERE id = :i", i=stopped)
    )[0]
    assert status == "failed"


ASYNC = {**WRITER, "Content-Type": "text/csv", "Prefer": "respond-async"}


async def followed(profile: Profile, location: str, timeout: float = 30.0) -> dict[str, Any]:
    """The import at `location`, once it no longer runs."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state: dict[str, Any] = (await profile.client.get(location, headers=READER)).json()
        if state["status"] != "running" or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.05)


async def test_an_import_asked_to_respond_async_answers_202_and_shows_its_progress(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crm import purchases` could not show progress: the answer came when every row was
    written, and the id to follow came with it."""
    gate = asyncio.Event()  # the orders are not written until the test has its answer
    write = service._write_import

    async def held(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await write(*args, **kwargs)

    monkeypatch.setattr(service, "_write_import", held)
    m = uuid.uuid4().hex[:8]
    csv_text = (
        HEADER
        + "".join(
            f"as-{m}-{n % 7},{m}-{n},2023-01-{1 + n % 28:02d}T10:00:00Z,10.00,USD,S,c,1\n"
            for n in range(50)
        )
        + f"as-{m},{m}-bad,2023-01-01T10:00:00Z,ten,USD,S,c,1\n"
    )
    response = await profile.client.post(
        "/v1/imports/purchases", content=csv_text.encode(), headers=ASYNC
    )
    assert response.status_code == 202, response.text
    running = response.json()
    location = response.headers["location"]
    assert location == f"/v1/imports/{running['id']}"
    assert response.headers["preference-applied"] == "respond-async"
    assert "Prefer" in response.headers["vary"]
    assert running["status"] == "running" and running["finished_at"] is None
    read = (await profile.client.get(location, headers=READER)).json()
    assert (read["status"], read["orders_done"]) == ("running", 0)

    gate.set()
    summary = await followed(profile, location)
    assert summary["status"] == "done", summary
    assert (summary["rows_read"], summary["orders_total"], summary["orders_done"]) == (51, 50, 50)
    assert (summary["purchases_created"], summary["customers_created"]) == (50, 7)
    assert [r["line"] for r in summary["rejections"]] == [52]
    (count,) = (
        await rows(
            profile.engine, "SELECT count(*) FROM purchases WHERE order_id LIKE :p", p=f"{m}-%"
        )
    )[0]
    assert count == 50
    # The same file waited on: every order a duplicate, nothing recorded twice.
    again = await imported(profile, csv_text.encode())
    assert (again["duplicates"], again["purchases_created"]) == (50, 0)


async def test_an_import_asked_to_respond_async_refuses_a_bad_header_at_once(
    profile: Profile,
) -> None:
    (before,) = (await rows(profile.engine, "SELECT count(*) FROM purchase_imports"))[0]
    response = await profile.client.post(
        "/v1/imports/purchases", content=b"order,amount\nA,1\n", headers=ASYNC
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "missing columns" in response.json()["detail"]
    (after,) = (await rows(profile.engine, "SELECT count(*) FROM purchase_imports"))[0]
    assert after == before  # no import started


async def test_an_import_failing_after_the_answer_says_so_where_it_is_followed(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def chunk_fails(*args: Any) -> Any:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(service, "_import_chunk", chunk_fails)
    m = uuid.uuid4().hex[:8]
    response = await profile.client.post(
        "/v1/imports/purchases",
        content=f"{HEADER}af-{m},{m}-1,2023-01-05T10:00:00Z,10.00,USD,S,c,1\n".encode(),
        headers=ASYNC,
    )
    assert response.status_code == 202, response.text
    summary = await followed(profile, response.headers["location"])
    assert summary["status"] == "failed"
    assert summary["error"].startswith("RuntimeError: the disk is full")


async def test_an_import_stops_between_chunks_when_the_service_stops(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping waited for a background import up to the grace period, then cancelled it in the
    middle of a chunk; it now stops at the next chunk, recorded with what to do."""
    stopping = asyncio.Event()
    write_chunk = service._import_chunk

    async def then_stop(*args: Any) -> Any:
        written = await write_chunk(*args)
        stopping.set()  # SIGTERM during the first chunk
        return written

    monkeypatch.setattr(service, "_import_chunk", then_stop)
    m = uuid.uuid4().hex[:8]
    csv_text = HEADER + "".join(
        f"st-{m},{m}-{n},2023-01-0{n}T10:00:00Z,10.00,USD,S,c,1\n" for n in range(1, 6)
    )
    with pytest.raises(service.ImportStopped):
        await service.import_purchases(
            session_factory(profile.engine),
            csv_text=csv_text,
            actor="ops",
            settings=profile.settings.model_copy(update={"import_chunk_orders": 2}),
            now=datetime.now(UTC),
            stopping=stopping,
        )
    monkeypatch.undo()
    (status, done, error) = (
        await rows(
            profile.engine,
            "SELECT status, orders_done, error FROM purchase_imports WHERE actor = 'ops'"
            " AND rows_read = 5 ORDER BY started_at DESC LIMIT 1",
        )
    )[0]
    assert (status, done) == ("failed", 2)
    assert error.startswith("the service stopped after 2 of 5 orders, before the import finished.")
    assert "importing the same file again records the rest" in error
    again = await imported(profile, csv_text.encode())
    assert (again["duplicates"], again["purchases_created"]) == (2, 3)
