"""Reconciliation after faults: the services' databases queried directly, the topics read back.

`Reconciler.progress()` is cheap and says whether the platform has settled (every acknowledged
order recorded, consumer groups caught up, outboxes empty, read models agreeing);
`Reconciler.problems()` then checks everything and returns what is wrong, one line each.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from chaos.load import Ledger

from shared.db import asyncpg_dsn
from shared.events import EnvelopeError, parse, topics
from shared.events import registry as ev
from shared.platform import SERVICES

Totals = dict[uuid.UUID, tuple[int, Decimal]]

# Per service: purchases counted per customer (orders, revenue). Each query is the service's own
# record of the purchases it applied; they must all equal profile's (the system of record).
PURCHASE_TOTALS = {
    "profile": "SELECT customer_id, count(*), coalesce(sum(amount), 0) FROM purchases GROUP BY 1",
    "scoring": "SELECT customer_id, count(*), coalesce(sum(amount), 0) FROM purchases GROUP BY 1",
    "lifecycle": (
        "SELECT customer_id, count(*), coalesce(sum(amount), 0) FROM lifecycle_orders GROUP BY 1"
    ),
}
# The same purchases, one row per order: (customer, order id), to name what differs.
PURCHASE_ORDERS = {
    "profile": "SELECT customer_id, order_id FROM purchases WHERE customer_id = ANY($1)",
    "scoring": "SELECT customer_id, order_id FROM purchases WHERE customer_id = ANY($1)",
    "lifecycle": "SELECT customer_id, order_id FROM lifecycle_orders WHERE customer_id = ANY($1)",
}
# Current stage per customer in lifecycle, and profile's projection of it (the 360 view).
CURRENT_STAGE = {
    "lifecycle": "SELECT customer_id, stage FROM customer_lifecycles",
    "profile": "SELECT customer_id, stage FROM customer_stage",
}
# Stage history in insertion order: (customer, from, to, business time).
STAGE_HISTORY = (
    "SELECT customer_id, from_stage, to_stage, at FROM stage_transitions ORDER BY customer_id, id"
)


def _table(sql: str) -> str:
    match = re.search(r"FROM (\w+)", sql)
    assert match is not None
    return match.group(1)


@dataclass(frozen=True)
class StageStep:
    from_stage: str | None
    to_stage: str
    at: datetime


@dataclass(frozen=True)
class Poison:
    """A message the platform cannot process, and where it was produced."""

    topic: str
    partition: int
    offset: int
    value: bytes
    why: str


@dataclass
class Progress:
    missing_acknowledged: int
    lag: dict[str, int]
    outbox: dict[str, int]
    mismatched: dict[str, int]

    @property
    def settled(self) -> bool:
        return (
            self.missing_acknowledged == 0
            and not any(self.lag.values())
            and not any(self.outbox.values())
            and not any(self.mismatched.values())
        )


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await asyncio.wait_for(connection.fetch(sql, *args), timeout=60))
    finally:
        await connection.close()


async def table_exists(dsn: str, table: str) -> bool:
    rows = await fetch(dsn, "SELECT to_regclass($1) IS NOT NULL AS present", table)
    return bool(rows[0]["present"])


async def read_topic(
    bootstrap_servers: str, topic: str, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic from the beginning up to its end offsets at the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: not at the end after {timeout:.0f}s")
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, tp_records in batch.items():
                records.extend(r for r in tp_records if r.offset < end[tp])
    finally:
        await consumer.stop()


async def group_lag(bootstrap_servers: str) -> dict[str, int]:
    """{consumer group: messages behind the end offsets} over the partitions it committed on."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        groups = [
            g[0] for g in await admin.list_consumer_groups() if not g[0].startswith("crm-dlq")
        ]
        lag: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            end = await consumer.end_offsets(list(committed))
            lag[group] = sum(max(0, end[tp] - meta.offset) for tp, meta in committed.items())
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def groups_on(bootstrap_servers: str, topic: str) -> set[str]:
    """Consumer groups that committed offsets on `topic`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        found = set()
        for group, _protocol in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            if any(tp.topic == topic for tp in committed):
                found.add(group)
        return found
    finally:
        await admin.close()


@dataclass
class Reconciler:
    database_urls: Mapping[str, str]  # {service: SQLAlchemy URL}
    bootstrap_servers: str
    ledger: Ledger
    customers: Sequence[uuid.UUID]
    poison: list[Poison] = field(default_factory=list)

    def dsn(self, service: str) -> str:
        return asyncpg_dsn(self.database_urls[service])

    async def totals(self, service: str) -> Totals | None:
        sql = PURCHASE_TOTALS[service]
        if not await table_exists(self.dsn(service), _table(sql)):
            return None
        rows = await fetch(self.dsn(service), sql)
        ours = set(self.customers)
        return {r[0]: (int(r[1]), Decimal(r[2])) for r in rows if r[0] in ours}

    async def outbox(self) -> dict[str, int]:
        counts = {}
        for service in SERVICES:
            rows = await fetch(self.dsn(service), "SELECT count(*) FROM outbox")
            counts[service] = int(rows[0][0])
        return counts

    async def recorded_order_ids(self) -> set[str]:
        rows = await fetch(
            self.dsn("profile"),
            "SELECT order_id FROM purchases WHERE order_id LIKE $1",
            f"chaos-{self.ledger.run_id}-%",
        )
        return {r[0] for r in rows}

    async def progress(self) -> Progress:
        recorded = await self.recorded_order_ids()
        missing = len(self.ledger.acknowledged - recorded)
        profile = await self.totals("profile") or {}
        mismatched = {}
        for service in ("scoring", "lifecycle"):
            other = await self.totals(service)
            if other is not None:
                mismatched[service] = sum(
                    1 for c in set(profile) | set(other) if profile.get(c) != other.get(c)
                )
        return Progress(
            missing, await group_lag(self.bootstrap_servers), await self.outbox(), mismatched
        )

    async def settle(self, *, timeout: float, quiet_polls: int = 2) -> Progress:
        """Poll progress() until it is settled `quiet_polls` times in a row, or the timeout."""
        deadline = time.monotonic() + timeout
        quiet = 0
        last = await self.progress()
        while time.monotonic() < deadline:
            quiet = quiet + 1 if last.settled else 0
            if quiet >= quiet_polls:
                return last
            await asyncio.sleep(1.0)
            last = await self.progress()
        return last

    # -- the checks --------------------------------------------------------------------------

    async def problems(self) -> list[str]:
        found: list[str] = []
        found += await self._purchases_counted_once()
        found += await self._stage_order()
        found += await self._outboxes_empty()
        found += await self._lag_zero()
        found += await self._dlq_holds_exactly_the_poison()
        return found

    async def _purchases_counted_once(self) -> list[str]:
        found = []
        recorded = await self.recorded_order_ids()
        lost = self.ledger.acknowledged - recorded
        if lost:
            found.append(f"profile lost {len(lost)} acknowledged orders, e.g. {sorted(lost)[:5]}")
        unknown = recorded - set(self.ledger.orders)
        if unknown:
            found.append(
                f"profile recorded {len(unknown)} orders never offered: {sorted(unknown)[:5]}"
            )
        profile = await self.totals("profile")
        assert profile is not None
        for service in ("scoring", "lifecycle"):
            other = await self.totals(service)
            if other is None:
                found.append(
                    f"{service}: no per-purchase record to reconcile with ({PURCHASE_TOTALS[service]})"
                )
                continue
            diff = {
                c: (profile.get(c), other.get(c))
                for c in set(profile) | set(other)
                if profile.get(c) != other.get(c)
            }
            if diff:
                sample = list(diff)[:5]
                orders = {
                    name: collections.Counter(
                        (str(r[0]), r[1])
                        for r in await fetch(self.dsn(name), PURCHASE_ORDERS[name], sample)
                    )
                    for name in ("profile", service)
                }
                found.append(
                    f"{service} disagrees with profile on {len(diff)} customers "
                    f"(profile vs {service} (orders, revenue)): {[(c, *diff[c]) for c in sample]}; "
                    f"orders only in profile: {sorted(orders['profile'] - orders[service])[:10]}, "
                    f"only in {service}: {sorted(orders[service] - orders['profile'])[:10]}"
                )
        # Profile publishes one purchase event per order, however often the order arrived.
        events_per_order: dict[str, set[uuid.UUID]] = collections.defaultdict(set)
        for record in await read_topic(self.bootstrap_servers, topics.PURCHASES):
            try:
                event = parse(record.value or b"")
            except EnvelopeError:
                continue
            if event.type == ev.PURCHASE_RECORDED:
                events_per_order[event.data.order_id].add(event.id)
        twice = {o: ids for o, ids in events_per_order.items() if o in recorded and len(ids) > 1}
        if twice:
            found.append(
                f"{len(twice)} orders published as more than one purchase event: {list(twice)[:5]}"
            )
        unpublished = recorded - set(events_per_order)
        if unpublished:
            found.append(
                f"{len(unpublished)} recorded orders never published: {sorted(unpublished)[:5]}"
            )
        return found

    async def _stage_order(self) -> list[str]:
        """Per customer, the published stage changes chain (from = previous to) in business
        order, and end at the stage lifecycle and profile's projection hold."""
        found = []
        ours = {str(c) for c in self.customers}
        chains: dict[str, list[StageStep]] = collections.defaultdict(list)
        seen: set[str] = set()
        unreadable: list[str] = []
        for record in await read_topic(self.bootstrap_servers, topics.LIFECYCLE):
            try:
                parse(record.value or b"")
            except EnvelopeError as error:
                unreadable.append(str(error)[:300])
            # Read leniently so that the order is checked even when the contract parse fails.
            doc = orjson.loads(record.value or b"{}")
            if doc.get("type") != ev.STAGE_CHANGED or doc.get("subject") not in ours:
                continue
            if doc["id"] in seen:
                continue  # the relay may publish an event twice: the first copy counts
            seen.add(doc["id"])
            data = doc.get("data", {})
            chains[doc["subject"]].append(
                StageStep(
                    data.get("from_stage"), data["to_stage"], datetime.fromisoformat(doc["time"])
                )
            )
        if unreadable:
            found.append(
                f"{len(unreadable)} records on {topics.LIFECYCLE} fail the contract parse; first: {unreadable[0]}"
            )
        broken = []
        for customer, steps in chains.items():
            for before, after in itertools.pairwise(steps):
                if after.from_stage != before.to_stage or after.at < before.at:
                    broken.append((customer, before, after))
                    break
        if broken:
            found.append(
                f"{len(broken)} customers' stage changes out of order on {topics.LIFECYCLE}: {broken[:3]}"
            )
        if await table_exists(self.dsn("lifecycle"), _table(STAGE_HISTORY)):
            rows = await fetch(self.dsn("lifecycle"), STAGE_HISTORY)
            history: dict[uuid.UUID, list[asyncpg.Record]] = collections.defaultdict(list)
            for row in rows:
                history[row[0]].append(row)
            bad: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = []
            for customer_id, transitions in history.items():
                for earlier, later in itertools.pairwise(transitions):
                    if later[1] != earlier[2] or later[3] < earlier[3]:
                        bad.append((str(customer_id), tuple(earlier), tuple(later)))
                        break
            if bad:
                found.append(f"{len(bad)} stage histories out of business order: {bad[:3]}")
        final = {c: steps[-1].to_stage for c, steps in chains.items()}
        for service, sql in CURRENT_STAGE.items():
            if not await table_exists(self.dsn(service), _table(sql)):
                found.append(f"{service}: no current stage to reconcile with ({sql})")
                continue
            current = {str(r[0]): str(r[1]) for r in await fetch(self.dsn(service), sql)}
            differ = [(c, final[c], current.get(c)) for c in final if current.get(c) != final[c]]
            if differ:
                found.append(
                    f"{service}: current stage differs from the last published change for "
                    f"{len(differ)} customers (customer, published, {service}): {differ[:3]}"
                )
        return found

    async def _outboxes_empty(self) -> list[str]:
        counts = await self.outbox()
        return [f"outbox of {s} holds {n} events" for s, n in counts.items() if n]

    async def _lag_zero(self) -> list[str]:
        lag = await group_lag(self.bootstrap_servers)
        return [f"consumer group {g} is {n} messages behind" for g, n in lag.items() if n]

    async def _dlq_holds_exactly_the_poison(self) -> list[str]:
        expected: collections.Counter[tuple[str, int, int, str]] = collections.Counter()
        for poison in self.poison:
            for group in await groups_on(self.bootstrap_servers, poison.topic):
                expected[(poison.topic, poison.partition, poison.offset, group)] = 1
        letters = await read_topic(self.bootstrap_servers, topics.DLQ)
        actual: collections.Counter[tuple[str, int, int, str]] = collections.Counter()
        for record in letters:
            headers = {k: v.decode(errors="replace") for k, v in record.headers or []}
            actual[
                (
                    headers.get("dlq.origin.topic", "?"),
                    int(headers.get("dlq.origin.partition", "-1")),
                    int(headers.get("dlq.origin.offset", "-1")),
                    headers.get("dlq.consumer.group", "?"),
                )
            ] += 1
        found = []
        unexpected = set(actual) - set(expected)
        if unexpected:
            samples = [
                {
                    k: v.decode(errors="replace")[:200]
                    for k, v in r.headers or []
                    if k in ("dlq.origin.topic", "dlq.consumer.group", "dlq.error")
                }
                for r in letters
            ][:3]
            found.append(
                f"DLQ holds {len(unexpected)} messages that are not poison: {sorted(unexpected)[:5]} {samples}"
            )
        absent = set(expected) - set(actual)
        if absent:
            found.append(f"{len(absent)} poison messages are not in the DLQ: {sorted(absent)[:5]}")
        return found
