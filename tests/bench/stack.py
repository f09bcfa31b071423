"""The infrastructure of one benchmark run: PostgreSQL, a Kafka broker, the four services.

Everything listens on free loopback ports (other engineers' stacks may hold the contract
ports), lives under one work directory, and is stopped by `stop()` in reverse order.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from shared.devstack import (
    ApacheKafka,
    EmbeddedPostgres,
    TansuBroker,
    create_topics_blocking,
    free_port,
    start_kafka,
    start_postgres,
)
from shared.devstack.kafka import apache_kafka_available
from shared.devstack.process import run_blocking
from shared.platform import DATABASES, SERVICES, Platform, database_env

BENCH_DATABASE = "bench_baseline"
# The harness connects as its own role, so pg_stat_statements can leave its queries out.
HARNESS_ROLE = "bench"


@dataclass
class BenchStack:
    work_dir: Path
    echo: object = print
    postgres: EmbeddedPostgres | None = None
    broker: ApacheKafka | TansuBroker | None = None
    platform: Platform | None = None
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def say(self, message: str) -> None:
        self.echo(message)  # type: ignore[operator]

    @property
    def kafka_kind(self) -> str:
        return self.broker.kind if self.broker is not None else "none"

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return str(self.broker.bootstrap_servers)

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        """The harness's own connections (role `bench`, not the services' `postgres`)."""
        assert self.postgres is not None
        return str(self.postgres.url(database, driver=driver)).replace(
            "://postgres@", f"://{HARNESS_ROLE}@", 1
        )

    def postgres_superuser_dsn(self) -> str:
        """For what the harness role may not see (other sessions' activity)."""
        assert self.postgres is not None
        return str(self.postgres.url("postgres", driver="postgresql"))

    def _enable_statement_stats(self) -> None:
        """pg_stat_statements (a preload library: one restart) and the harness's own role."""
        assert self.postgres is not None
        url = self.postgres.url("postgres", driver="postgresql")

        async def configure() -> None:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
                )
                if not await connection.fetchval(
                    "SELECT 1 FROM pg_roles WHERE rolname = $1", HARNESS_ROLE
                ):
                    await connection.execute(f"CREATE ROLE {HARNESS_ROLE} LOGIN SUPERUSER")
            finally:
                await connection.close()

        async def extension() -> None:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await connection.close()

        run_blocking(configure, 30)
        self.postgres.stop()
        self.postgres.start()
        try:
            run_blocking(extension, 30)
        except asyncpg.PostgresError as error:
            self.notes.append(f"pg_stat_statements unavailable: {error}")

    def service_db(self, service: str) -> str:
        """Plain asyncpg DSN of a service's database."""
        return self.pg_url(DATABASES[service])

    def start_infrastructure(self) -> None:
        from shared.db import migrate
        from shared.messaging.kafka import DEFAULT_PARTITIONS

        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        started = time.perf_counter()
        self.postgres = start_postgres(self.work_dir / "postgres", free_port(), ephemeral=True)
        self.timings["postgres_start_s"] = time.perf_counter() - started
        self._enable_statement_stats()
        self.say(f"  PostgreSQL 18 (embedded, fsync off) on {self.postgres.url('postgres')}")
        if apache_kafka_available():
            kind = "apache"
        else:
            kind = "tansu"
            note = "Java 17+ / Kafka jars not available: using the embedded Tansu broker instead of Apache Kafka"
            self.notes.append(note)
            self.say(f"  NOTE: {note}")
        started = time.perf_counter()
        self.broker = start_kafka(kind, self.work_dir / f"kafka-{kind}", free_port())
        self.timings["kafka_start_s"] = time.perf_counter() - started
        self.say(f"  {self.broker!r}")
        create_topics_blocking(self.bootstrap, DEFAULT_PARTITIONS)
        for name in [*DATABASES.values(), BENCH_DATABASE]:
            self.postgres.create_database(name)
        self.env = {
            **database_env(self.postgres.url("postgres")),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if self.broker.supports_idempotence else "false",
            "LOG_LEVEL": "WARNING",
            # The SLA and sweep sections run the rules days ahead of the wall clock.
            "MAX_FUTURE_AS_OF_SECONDS": str(365 * 86_400),
        }
        if self.broker.kind == "tansu":
            self.env["KAFKA_SESSION_TIMEOUT_MS"] = "3000"
        started = time.perf_counter()
        for service in SERVICES:
            migrate(service, self.env[f"{service.upper()}_DATABASE_URL"])
        self.timings["migrate_s"] = time.perf_counter() - started

    def start_services(self, timeout: float = 120.0) -> None:
        ports = {service: free_port() for service in SERVICES}
        self.platform = Platform(env=self.env, log_dir=self.work_dir / "logs", ports=ports)
        started = time.perf_counter()
        self.platform.start(timeout=timeout)
        self.timings["services_start_s"] = time.perf_counter() - started
        for service in SERVICES:
            self.say(f"  {service:<11} {self.platform.url(service)}")

    def url(self, service: str) -> str:
        assert self.platform is not None
        return str(self.platform.url(service))

    def dead_services(self) -> list[str]:
        return self.platform.check_alive() if self.platform is not None else []

    def stop(self) -> None:
        if self.platform is not None:
            self.platform.stop()
            self.platform = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
