"""What every Kafka-compatible broker of the devstack offers, and topic creation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from shared.devstack.process import DevstackError, port_is_open, run_blocking

_TOPIC_ALREADY_EXISTS = 36


class Broker(Protocol):
    """A running broker: where to connect, what it supports, how to stop or restart it."""

    @property
    def kind(self) -> str:
        """ "apache", "tansu", "external" or "container"."""
        ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def supports_idempotence(self) -> bool:
        """Whether producers may use ``enable_idempotence=True``."""
        ...

    @property
    def persistent(self) -> bool:
        """Whether restart() keeps topics, messages and committed offsets."""
        ...

    @property
    def restartable(self) -> bool:
        """Whether restart() is possible: only for brokers we started."""
        ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def restart(self) -> None:
        """Stop and start again on the same address; raises DevstackError if not ours."""
        ...


class ExternalKafka:
    """A broker someone else runs (``KAFKA_BOOTSTRAP_SERVERS``): we only connect to it."""

    kind = "external"
    persistent = True
    restartable = False

    def __init__(self, bootstrap_servers: str, *, supports_idempotence: bool = True) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.supports_idempotence = supports_idempotence

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing to stop: we did not start it."""

    def restart(self) -> None:
        raise DevstackError(f"cannot restart {self.bootstrap_servers}: we did not start it")

    def __repr__(self) -> str:
        return f"ExternalKafka({self.bootstrap_servers})"


async def broker_answers(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """Whether a broker answers a metadata request and lists at least one broker."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()


def broker_answers_blocking(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    # A closed port is answered without aiokafka, which would log each refused connection.
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    if not port_is_open(host.strip("[]"), int(port)):
        return False
    return run_blocking(lambda: broker_answers(bootstrap_servers, timeout), timeout + 5)


def wait_for_broker(bootstrap_servers: str, timeout: float = 60.0) -> None:
    """Block until a broker we did not start answers (e.g. a container)."""
    deadline = time.monotonic() + timeout
    while not broker_answers_blocking(bootstrap_servers):
        if time.monotonic() >= deadline:
            raise DevstackError(f"Kafka at {bootstrap_servers} not answering after {timeout:.0f}s")
        time.sleep(0.5)


async def create_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    replication: int = 1,
    *,
    configs: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics {name: partitions} that do not exist yet; return the new ones.

    Existing topics are left as they are (even with another partition count). Returns once
    every partition of every named topic has a leader, so producers can send at once.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication, topic_configs=dict(configs or {}))
                for name, partitions in topics.items()
            ],
            timeout_ms=int(timeout * 1000),
        )
        created: list[str] = []
        for error in response.topic_errors:
            name, code, message = error[0], error[1], error[2] if len(error) > 2 else None
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise for_code(code)(f"creating topic {name!r}: {message}")
        await _wait_for_leaders(admin, list(topics), timeout)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics(names)
        missing = [
            topic["topic"]
            for topic in described
            if topic["error_code"] != 0
            or not topic["partitions"]
            or any(partition["leader"] < 0 for partition in topic["partitions"])
        ]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise DevstackError(f"topics without partition leaders after {timeout:.0f}s: {missing}")
        await asyncio.sleep(0.2)


def create_topics_blocking(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    replication: int = 1,
    *,
    configs: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """create_topics() for synchronous callers (fixtures, CLI)."""
    return run_blocking(
        lambda: create_topics(
            bootstrap_servers, topics, replication, configs=configs, timeout=timeout
        ),
        timeout + 10,
    )
