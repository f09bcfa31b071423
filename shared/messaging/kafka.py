"""aiokafka clients configured from ServiceSettings: producer (acks=all, idempotent when the
broker supports it), consumers, admin (topic creation), and a readiness probe."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2

from shared.events import topics
from shared.observability.logging import get_logger
from shared.settings import ServiceSettings

log = get_logger(__name__)

# Partitions per topic for development and tests; production sizes them in deploy/ (KafkaTopic).
DEFAULT_PARTITIONS = {t: 6 for t in topics.ALL} | {topics.DLQ: 1}


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


@functools.lru_cache(maxsize=100_000)
def _key_hash(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key, as the Java client), the hash cached
    per key: it is pure Python in aiokafka, and a relay sends each customer's key again and again."""
    if key is None:
        chosen: int = DefaultPartitioner()(key, all_partitions, available)
        return chosen
    return all_partitions[_key_hash(key) % len(all_partitions)]


def _producer(settings: ServiceSettings, *, idempotent: bool) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        partitioner=key_partitioner,
        client_id=f"{settings.service_name}-producer",
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=15000,
    )


async def start_producer(
    settings: ServiceSettings, *, probe_timeout: float = 8.0
) -> AIOKafkaProducer:
    """Start a producer; with KAFKA_ENABLE_IDEMPOTENCE=auto, fall back to plain acks=all when the
    broker refuses InitProducerId (e.g. the embedded Tansu broker) — duplicates are then absorbed
    by the consumers' inbox."""
    mode = settings.kafka_enable_idempotence
    if mode == "false":
        producer = _producer(settings, idempotent=False)
        await producer.start()
        return producer
    producer = _producer(settings, idempotent=True)
    try:
        await asyncio.wait_for(producer.start(), timeout=probe_timeout if mode == "auto" else None)
        return producer
    except Exception as exc:
        await _quiet_stop(producer)
        if mode == "true":
            raise
        log.warning("kafka.idempotence_unavailable", error=repr(exc), fallback="acks=all")
    producer = _producer(settings, idempotent=False)
    await producer.start()
    return producer


async def _quiet_stop(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.stop(), timeout=5)


def producer_is_broken(producer: AIOKafkaProducer, error: BaseException) -> bool:
    """Whether `producer` must be replaced rather than retried after `error`.

    An idempotent producer that got OutOfOrderSequenceNumber, UnknownProducerId or a fenced
    epoch (e.g. after a broker restart lost the tail of a partition) keeps its producer id and
    sequence numbers, so every later batch fails the same way: only a new producer (a new id,
    sequences from 0) gets through. The same for one whose sender task died. Timeouts and
    retriable errors (broker down, leader moving) heal with the same producer.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and task.done():
        return True
    if isinstance(error, KafkaTimeoutError):
        return False
    if isinstance(error, KafkaError):
        return not error.retriable
    return True


async def stop_producer(producer: AIOKafkaProducer, *, timeout: float = 10.0) -> None:
    """Stop a producer, flushing what it holds; one that cannot flush in time (broker gone,
    fatal error) is abandoned: its sender is cancelled and awaited, so nothing it still holds is
    delivered after its replacement started sending (which would reorder a partition)."""
    try:
        await asyncio.wait_for(producer.stop(), timeout=timeout)
        return
    except Exception as exc:
        log.warning("kafka.producer_abandoned", error=repr(exc))
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        # The sender awaits its in-flight requests on cancel: bounded by their request timeout.
        await asyncio.wait([task], timeout=60)
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:  # what was never sent fails now (and the flush waiting on it ends)
        accumulator.fail_all(ProducerClosed())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), timeout=5)


def make_consumer(
    settings: ServiceSettings, *, group_id: str | None, topics_: list[str], **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "client_id": f"{settings.service_name}-consumer",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.consumer_batch_size,
        "fetch_max_wait_ms": 50,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(300, settings.kafka_session_timeout_ms // 10),
        "max_poll_interval_ms": 300000,
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics_, **options)


async def ensure_topics(
    settings: ServiceSettings, partitions: dict[str, int] | None = None, replication: int = 1
) -> list[str]:
    """Create missing topics (idempotent). Returns the names created."""
    wanted = partitions or DEFAULT_PARTITIONS
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, n, replication) for t, n in wanted.items() if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


class KafkaProbe:
    """Readiness check: can we fetch cluster metadata? Cached briefly so probes stay cheap."""

    def __init__(self, producer: AIOKafkaProducer | None, ttl: float = 2.0) -> None:
        self.producer = producer
        self.ttl = ttl
        self._last: tuple[float, bool, str] = (0.0, False, "not checked")

    async def check(self) -> tuple[bool, str]:
        at, ok, why = self._last
        if time.monotonic() - at < self.ttl:
            return ok, why
        if self.producer is None:
            ok, why = False, "kafka producer not started"
        else:
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2)
                ok, why = True, "ok"
            except Exception as exc:
                ok, why = False, f"kafka unreachable: {type(exc).__name__}"
        self._last = (time.monotonic(), ok, why)
        return ok, why


async def partitions_of(consumer: AIOKafkaConsumer, *topics_: str) -> list[TopicPartition]:
    """All partitions of the topics, fetching fresh metadata (a new client knows none yet)."""
    cluster = await consumer._client.fetch_all_metadata()
    return [
        TopicPartition(t, p) for t in topics_ for p in sorted(cluster.partitions_for_topic(t) or [])
    ]
