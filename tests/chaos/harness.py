"""The platform as real processes, for chaos, fuzz and soak runs.

- `Infrastructure`: our own PostgreSQL (embedded) and Apache Kafka (Maven jars), both restartable
  without disturbing the session's servers, with their data in a work directory.
- `provision`: fresh databases (one per service, migrated with `shared.db.migrate`) and topics.
- `Services`: every service as processes (`crm serve <svc> --role ...`): with `split=True` an API
  process and a worker process per service, so a worker can be killed while its API serves.
  A supervisor restarts any process that exits unexpectedly (what an orchestrator would do) and
  counts those exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.db import migrate
from shared.devstack import (
    ApacheKafka,
    DevstackError,
    EmbeddedPostgres,
    PostgresServer,
    TansuBroker,
    create_topics_blocking,
    free_port,
    resolve_kafka_kind,
)
from shared.devstack.process import ManagedProcess, log_tail
from shared.messaging.kafka import DEFAULT_PARTITIONS
from shared.platform import SERVICES, Platform


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def wait_until(probe: object, *, timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll a zero-argument callable until it returns something truthy (bounded in time)."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            raise DevstackError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(interval)


class Infrastructure:
    """PostgreSQL + Apache Kafka that this run owns, so it may stop, kill and restart them."""

    def __init__(self, work_dir: Path, *, kafka_kind: str = "auto", durable: bool = True) -> None:
        self.work_dir = work_dir
        # Durable (fsync, synchronous_commit): without it a crash of PostgreSQL loses commits
        # that consumers already acknowledged to Kafka, which no design can survive.
        self.postgres = EmbeddedPostgres(
            work_dir / "postgres" / "data", free_port(), durable=durable, max_connections=300
        )
        kind = resolve_kafka_kind(kafka_kind)  # type: ignore[arg-type]
        self.kafka: ApacheKafka | TansuBroker
        if kind == "apache":
            self.kafka = ApacheKafka(work_dir / "kafka", free_port(), num_partitions=6)
        else:
            self.kafka = TansuBroker(work_dir / "kafka", free_port())

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    @property
    def idempotence(self) -> str:
        return "true" if self.kafka.supports_idempotence else "false"

    def start(self) -> None:
        self.postgres.start()
        self.kafka.start()
        create_topics_blocking(self.bootstrap_servers, DEFAULT_PARTITIONS)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kafka.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()

    # -- faults ------------------------------------------------------------------------------

    def stop_postgres(self, *, immediate: bool = True) -> None:
        """immediate: SIGQUIT, PostgreSQL's crash-like shutdown (WAL recovery at the next start)."""
        process: ManagedProcess | None = getattr(self.postgres, "_process", None)
        if immediate and process is not None and process.pid is not None and process.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGQUIT)
        self.postgres.stop(timeout=30)

    def start_postgres(self) -> None:
        self.postgres.start()

    def stop_kafka(self) -> None:
        self.kafka.stop(timeout=60)

    def start_kafka(self) -> None:
        self.kafka.start()


def provision(
    postgres: PostgresServer | EmbeddedPostgres, bootstrap_servers: str, *, suffix: str
) -> dict[str, str]:
    """Fresh migrated databases and the topics; returns {PROFILE_DATABASE_URL: ..., ...}."""
    create_topics_blocking(bootstrap_servers, DEFAULT_PARTITIONS)
    urls: dict[str, str] = {}
    for service in SERVICES:
        name = f"crm_{service}_{suffix}"
        postgres.create_database(name)
        url = postgres.url(name)
        migrate(service, url)
        urls[f"{service.upper()}_DATABASE_URL"] = url
    return urls


def service_env(
    database_urls: Mapping[str, str],
    *,
    bootstrap_servers: str,
    idempotence: str,
    session_timeout_ms: int = 6000,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of the service processes: JSON logs, a short Kafka session timeout so that a
    killed consumer's partitions move on within seconds."""
    return {
        **database_urls,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": idempotence,
        "KAFKA_SESSION_TIMEOUT_MS": str(session_timeout_ms),
        "CRM_ENV": "test",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        **(extra or {}),
    }


@dataclass
class Exit:
    """A process that exited without being asked to (the supervisor restarted it)."""

    name: str
    code: int | None
    at: float
    log_tail: str


@dataclass
class Services:
    env: Mapping[str, str]
    log_dir: Path
    split: bool = True
    services: tuple[str, ...] = SERVICES
    api: Platform = field(init=False)
    workers: Platform | None = field(init=False, default=None)
    unexpected_exits: list[Exit] = field(init=False, default_factory=list)
    kills: dict[str, int] = field(init=False, default_factory=dict)
    _expected_down: set[str] = field(init=False, default_factory=set)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _supervisor: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.api = Platform(
            env=self.env,
            log_dir=self.log_dir / ("api" if self.split else "all"),
            ports={s: free_port() for s in self.services},
            role="api" if self.split else "all",
            services=self.services,
        )
        if self.split:
            self.workers = Platform(
                env=self.env,
                log_dir=self.log_dir / "worker",
                ports={s: free_port() for s in self.services},
                role="worker",
                services=self.services,
            )

    def url(self, service: str) -> str:
        return self.api.url(service)

    def worker_url(self, service: str) -> str:
        return (self.workers or self.api).url(service)

    def platforms(self) -> list[Platform]:
        return [p for p in (self.workers, self.api) if p is not None]

    def start(self, timeout: float = 120.0) -> None:
        for platform in self.platforms():
            platform.start(timeout=timeout)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        for platform in self.platforms():
            platform.stop()

    def pids(self) -> dict[str, int]:
        """{"profile" or "profile-worker": pid} of every running process."""
        found: dict[str, int] = {}
        for platform in self.platforms():
            suffix = "-worker" if platform.role == "worker" else ""
            for name, process in platform.processes.items():
                if process.pid is not None and process.is_running():
                    found[name + suffix] = process.pid
        return found

    # -- faults ------------------------------------------------------------------------------

    def kill_worker(self, service: str) -> int:
        """kill -9 the service's worker process (its API keeps serving); returns the pid."""
        platform = self.workers or self.api
        process = platform.processes[service]
        pid = process.pid
        assert pid is not None and process.is_running(), f"{service} worker is not running"
        with self._lock:
            self._expected_down.add(service)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not process.is_running(), timeout=10, what=f"{service} dead")
        self.kills[service] = self.kills.get(service, 0) + 1
        return pid

    def restart_worker(self, service: str, timeout: float = 60.0) -> None:
        platform = self.workers or self.api
        with self._lock:
            process = platform.start_service(service)
            self._expected_down.discard(service)
        url = f"{platform.url(service)}/health/ready"
        process.wait_until(lambda: http_status(url) == 200, timeout=timeout, what="ready")

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for platform in self.platforms():
                role = platform.role
                for name, process in list(platform.processes.items()):
                    with self._lock:
                        if self._stop.is_set():
                            return
                        expected = role in ("worker", "all") and name in self._expected_down
                        replaced = platform.processes.get(name) is not process
                        if expected or replaced or process.is_running():
                            continue
                        self.unexpected_exits.append(
                            Exit(
                                f"{name}-{role}",
                                process.exit_code(),
                                time.time(),
                                log_tail(process.log_path, 25),
                            )
                        )
                        with contextlib.suppress(Exception):
                            platform.start_service(name)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> [(name, labels, value)] (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append((name, dict(_LABEL.findall(labels or "")), number))
    return samples
