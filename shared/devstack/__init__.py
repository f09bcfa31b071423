"""Development and test infrastructure: embedded PostgreSQL and a Kafka-compatible broker.

Used by ``crm up`` (``make run``) and by the test fixtures in ``tests/conftest.py``::

    postgres = start_postgres(repo / ".data" / "postgres", 5432, ephemeral=False)
    postgres.create_database("profile")
    postgres.url("profile")                      # postgresql+asyncpg://postgres@127.0.0.1:5432/profile
    broker = start_kafka("auto", repo / ".data" / "kafka", 9092)
    create_topics_blocking(broker.bootstrap_servers, {"crm.customers.v1": 3})
    ...
    broker.stop(); postgres.stop()

Every server is a child process that dies with its parent (see ``process.py``): call the
``start_*`` functions from the main thread of the supervising process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from shared.devstack.broker import (
    Broker,
    ExternalKafka,
    create_topics,
    create_topics_blocking,
    wait_for_broker,
)
from shared.devstack.kafka import KAFKA_VERSION, ApacheKafka, apache_kafka_available
from shared.devstack.postgres import (
    EmbeddedPostgres,
    ExternalPostgres,
    PostgresServer,
    create_database,
    wait_for_server,
)
from shared.devstack.process import DevstackError, free_port
from shared.devstack.tansu import TansuBroker

KafkaKind = Literal["auto", "apache", "tansu"]

_log = logging.getLogger(__name__)


def start_postgres(data_dir: Path, port: int, *, ephemeral: bool) -> EmbeddedPostgres:
    """Start PostgreSQL on 127.0.0.1:port; ephemeral=True trades crash safety for speed."""
    server = EmbeddedPostgres(data_dir, port, durable=not ephemeral)
    server.start()
    return server


def resolve_kafka_kind(kind: KafkaKind) -> Literal["apache", "tansu"]:
    """auto: Apache Kafka when Java 17+ and mvn (or cached jars) are there, else Tansu."""
    if kind != "auto":
        return kind
    return "apache" if apache_kafka_available() else "tansu"


def start_kafka(
    kind: KafkaKind,
    work_dir: Path,
    port: int,
    *,
    num_partitions: int = 3,
    auto_create_topics: bool = False,
) -> ApacheKafka | TansuBroker:
    """Start a broker on 127.0.0.1:port with its files (data, logs) under work_dir."""
    chosen = resolve_kafka_kind(kind)
    broker: ApacheKafka | TansuBroker
    if chosen == "apache":
        broker = ApacheKafka(
            work_dir, port, num_partitions=num_partitions, auto_create_topics=auto_create_topics
        )
    else:
        broker = TansuBroker(work_dir, port)
    _log.info("starting %r", broker)
    broker.start()
    return broker


__all__ = [
    "KAFKA_VERSION",
    "ApacheKafka",
    "Broker",
    "DevstackError",
    "EmbeddedPostgres",
    "ExternalKafka",
    "ExternalPostgres",
    "KafkaKind",
    "PostgresServer",
    "TansuBroker",
    "create_database",
    "create_topics",
    "create_topics_blocking",
    "free_port",
    "resolve_kafka_kind",
    "start_kafka",
    "start_postgres",
    "wait_for_broker",
    "wait_for_server",
]
