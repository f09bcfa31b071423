"""Fixtures of the chaos suite: our own restartable PostgreSQL and Apache Kafka, the platform as
processes (an API and a worker process per service), and the run with its load and ledger.

`CRM_CHAOS_PROFILE=full` (default, `make chaos`) or `ci` (`make chaos-ci`, a few minutes).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chaos.harness import Infrastructure, Services, provision, service_env
from chaos.scenario import ChaosProfile, ChaosRun, chosen_profile

from shared.devstack import DevstackError, resolve_kafka_kind
from shared.platform import SERVICES


@pytest.fixture(scope="module")
def chaos_profile() -> ChaosProfile:
    return chosen_profile()


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    """Outside pytest's basetemp: concurrent pytest sessions of the same user prune each other's
    old basetemp directories, which once pulled the data directory from under PostgreSQL."""
    path = Path(tempfile.mkdtemp(prefix="crm-chaos-"))
    yield path
    shutil.rmtree(path / "infra", ignore_errors=True)  # the logs stay for a post-mortem


@pytest.fixture(scope="module")
def infrastructure(work_dir: Path) -> Iterator[Infrastructure]:
    if resolve_kafka_kind("auto") != "apache":
        # A broker restart only means something on a broker that keeps its log (Tansu does not).
        raise DevstackError("the chaos suite needs Apache Kafka: Java 17+ and mvn (or cached jars)")
    infrastructure = Infrastructure(work_dir / "infra")
    infrastructure.start()
    yield infrastructure
    infrastructure.stop()


@pytest.fixture(scope="module")
def services(
    infrastructure: Infrastructure, work_dir: Path
) -> Iterator[tuple[Services, dict[str, str]]]:
    urls = provision(
        infrastructure.postgres, infrastructure.bootstrap_servers, suffix=uuid.uuid4().hex[:6]
    )
    env = service_env(
        urls,
        bootstrap_servers=infrastructure.bootstrap_servers,
        idempotence=infrastructure.idempotence,
    )
    log_dir = work_dir / "logs"
    running = Services(env=env, log_dir=log_dir, split=True)
    try:
        running.start(timeout=180)
        print(f"\n[chaos] service logs in {log_dir}")
        yield running, {s: urls[f"{s.upper()}_DATABASE_URL"] for s in SERVICES}
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def chaos(
    chaos_profile: ChaosProfile,
    infrastructure: Infrastructure,
    services: tuple[Services, dict[str, str]],
) -> AsyncIterator[ChaosRun]:
    running, database_urls = services
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
        run = ChaosRun(chaos_profile, infrastructure, running, database_urls, client)
        await run.prepare()
        yield run
        print(f"\n[chaos] reads by phase/service/status: {run.read_summary()}")
        print(f"[chaos] HTTP writes by phase/status: {dict(run.ledger.write_statuses)}")
        print(
            f"[chaos] offered {len(run.ledger.orders)} orders, acknowledged "
            f"{len(run.ledger.acknowledged)}, produce failures {run.ledger.produce_failures}, "
            f"duplicated {dict(run.duplicated)}, kills {running.kills}, "
            f"unexpected exits {[e.name for e in running.unexpected_exits]}"
        )
