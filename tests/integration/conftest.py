"""Fixtures for integration tests: the contract topics, one migrated database per service,
and settings pointing a service at the real PostgreSQL and Kafka of the session."""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support import SIMULATION_AHEAD_SECONDS

from shared.db import migrate
from shared.devstack import Broker, PostgresServer, create_topics_blocking
from shared.messaging.kafka import DEFAULT_PARTITIONS

SERVICES = ("profile", "lifecycle", "complaints", "scoring")


@pytest.fixture(scope="session")
def contract_topics(kafka_broker: Broker) -> dict[str, int]:
    create_topics_blocking(kafka_broker.bootstrap_servers, DEFAULT_PARTITIONS)
    return DEFAULT_PARTITIONS


@pytest.fixture(scope="session")
def service_databases(postgres_server: PostgresServer) -> dict[str, str]:
    """{service: asyncpg URL} of a freshly migrated database per service (once per session)."""
    urls = {}
    for service in SERVICES:
        name = f"crm_{service}_{uuid.uuid4().hex[:6]}"
        postgres_server.create_database(name)
        url = postgres_server.url(name)
        started = time.perf_counter()
        migrate(service, url)
        urls[service] = url
        print(f"migrated {service} in {time.perf_counter() - started:.1f}s")
    return urls


@pytest.fixture(scope="session")
def service_settings(
    service_databases: dict[str, str], kafka_broker: Broker, contract_topics: dict[str, int]
) -> Callable[..., Any]:
    """service_settings("lifecycle", consumer_batch_size=100) -> LifecycleSettings for the test infra."""

    def make(service: str, **overrides: Any) -> Any:
        module = importlib.import_module(f"services.{service}.config")
        cls = next(
            v for k, v in vars(module).items() if k.endswith("Settings") and k != "ServiceSettings"
        )
        values = {
            "database_url": service_databases[service],
            "kafka_bootstrap_servers": kafka_broker.bootstrap_servers,
            "kafka_enable_idempotence": "true" if kafka_broker.supports_idempotence else "false",
            "crm_env": "test",
            "log_format": "console",
            # The tests' clocks stay fixed while the rules run ahead of them, as a simulation
            # would (the guard's own tests put the default back).
            "max_future_as_of_seconds": SIMULATION_AHEAD_SECONDS,
            **overrides,
        }
        return cls(**values)

    return make
