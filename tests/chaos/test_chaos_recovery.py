"""Faults under a steady load of purchases (ingest topic and HTTP), each followed by a full
reconciliation: every acknowledged purchase recorded once by profile and counted exactly once by
lifecycle and scoring, stage changes in business order per customer, outboxes empty, consumer
groups caught up, the DLQ holding exactly the poison messages, and no 5xx on reads other than an
honest 503 while a dependency is down.

The tests share one platform and run in file order; each reconciliation covers everything so far.
"""

from __future__ import annotations

import pytest
from chaos.scenario import ChaosRun

from shared.platform import SERVICES

pytestmark = [pytest.mark.timeout(1200)]


async def test_baseline_under_load_reconciles(chaos: ChaosRun) -> None:
    async with chaos.under_load("baseline"):
        pass
    progress = await chaos.reconcile("the baseline")
    assert len(chaos.ledger.acknowledged) > 0 and progress.settled


async def test_workers_killed_and_restarted_lose_and_double_nothing(chaos: ChaosRun) -> None:
    async with chaos.under_load("kills"):
        for _ in range(chaos.profile.kill_rounds):
            for service in SERVICES:
                await chaos.kill_and_restart_worker(service)
                await chaos.pause(2.0)
    assert chaos.services.kills == {s: chaos.profile.kill_rounds for s in SERVICES}
    await chaos.reconcile("kill -9 of every worker")


async def test_broker_restart_under_load(chaos: ChaosRun) -> None:
    async with chaos.under_load("broker"):
        await chaos.restart_broker()
    await chaos.reconcile("a broker restart")


async def test_postgres_restart_under_load(chaos: ChaosRun) -> None:
    async with chaos.under_load("postgres"):
        await chaos.restart_postgres()
    await chaos.reconcile("a PostgreSQL restart")


async def test_duplicated_batches_are_counted_once(chaos: ChaosRun) -> None:
    async with chaos.under_load("duplicates"):
        counts = await chaos.duplicate_batches()
    assert all(counts.values()), counts
    await chaos.reconcile(f"re-producing {counts}")


async def test_poison_messages_go_to_the_dlq_and_nothing_else_does(chaos: ChaosRun) -> None:
    async with chaos.under_load("poison"):
        poison = await chaos.inject_poison()
    assert len(poison) == 5
    await chaos.reconcile("poison messages")
