"""End-to-end: the four services as real processes (`crm serve`) on the session's PostgreSQL and Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import migrate
from shared.devstack import Broker, PostgresServer, create_topics_blocking, free_port
from shared.messaging.kafka import DEFAULT_PARTITIONS
from shared.platform import SERVICES, Platform


@pytest.fixture(scope="session")
def platform(
    postgres_server: PostgresServer, kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """All four services, migrated and ready (`/health/ready` answers 200 on each)."""
    started = time.perf_counter()
    create_topics_blocking(kafka_broker.bootstrap_servers, DEFAULT_PARTITIONS)
    suffix = uuid.uuid4().hex[:6]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if kafka_broker.supports_idempotence else "false",
        "CRM_ENV": "test",
        "LOG_LEVEL": "INFO",
    }
    if kafka_broker.kind == "tansu":
        env["KAFKA_SESSION_TIMEOUT_MS"] = "3000"
    for service in SERVICES:
        name = f"crm_{service}_e2e_{suffix}"
        postgres_server.create_database(name)
        url = postgres_server.url(name)
        migrate(service, url)
        env[f"{service.upper()}_DATABASE_URL"] = url
    log_dir: Path = tmp_path_factory.mktemp("e2e-logs")
    running = Platform(env=env, log_dir=log_dir, ports={s: free_port() for s in SERVICES})
    try:
        running.start(timeout=120)
        print(f"platform ready in {time.perf_counter() - started:.1f}s (logs in {log_dir})")
        yield running
    finally:
        running.stop()
