"""Kafka as deployed: the topics (compose script, Strimzi KafkaTopics, the dev `crm topics` Job)
are the contract's, and each service's Kafka user may do exactly what its worker does."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.inventory import Container, settings_class
from shared.clock import SystemClock
from shared.events import registry, topics
from shared.messaging import dlq
from shared.messaging.kafka import DEFAULT_PARTITIONS
from shared.platform import SERVICES

REPO = Path(__file__).resolve().parents[2]
DOMAIN_TOPICS = set(topics.ALL) - {topics.INGEST_ORDERS, topics.DLQ}


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


class RecordingRuntime:
    """Stands in for ServiceRuntime while a worker's start() says what it will run."""

    def __init__(self, service: str) -> None:
        self.settings = settings_class(service)()
        self.service = service
        self.clock = SystemClock()
        self.consumers: list[tuple[str, list[str]]] = []

    def run_consumer(self, *, topics: list[str], group_id: str | None = None, **_: Any) -> None:
        self.consumers.append((group_id or self.service, list(topics)))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # run_relay, run_periodic, ...


def worker_plan(service: str) -> RecordingRuntime:
    runtime = RecordingRuntime(service)
    importlib.import_module(f"services.{service}.worker").start(runtime)  # type: ignore[arg-type]
    return runtime


def acl_set(user: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (
            rule["resource"]["type"],
            rule["resource"].get("name", ""),
            rule["resource"]["patternType"],
            op,
        )
        for rule in user["spec"]["authorization"]["acls"]
        for op in rule["operations"]
    }


def test_strimzi_topics_are_the_contract_topics(rendered: dict[str, list[dict[str, Any]]]) -> None:
    declared = {
        t["spec"]["topicName"]: t["spec"] for t in of_kind(rendered["prod"], "KafkaTopic").values()
    }
    assert set(declared) == set(topics.ALL)
    for name, spec in declared.items():
        assert spec["partitions"] == DEFAULT_PARTITIONS[name], name
        assert (
            spec["replicas"] >= 3 and spec["config"]["min.insync.replicas"] == spec["replicas"] - 1
        )
    # `crm replay <service>` rebuilds from the log: the domain topics keep everything.
    for name in DOMAIN_TOPICS:
        assert declared[name]["config"]["retention.ms"] == -1, name
    assert declared[topics.DLQ]["config"]["retention.ms"] > 0


def test_the_dev_overlay_creates_topics_with_crm_topics(containers: list[Container]) -> None:
    (job,) = [c for c in containers if c.target == "dev" and c.role == "topics"]
    assert job.argv == ["topics"]
    assert set(DEFAULT_PARTITIONS) == set(topics.ALL)


def _run_topic_script(tmp_path: Path, **env: str) -> list[list[str]]:
    """deploy/compose/kafka/create-topics.sh with stand-ins for Kafka's CLI that log their args."""
    log = tmp_path / "calls"
    for tool in ("kafka-topics.sh", "kafka-configs.sh"):
        stub = tmp_path / tool
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    subprocess.run(
        ["bash", str(REPO / "deploy/compose/kafka/create-topics.sh")],
        env={
            "PATH": os.environ["PATH"],
            "KAFKA_BIN_DIR": str(tmp_path),
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
            **env,
        },
        check=True,
        capture_output=True,
    )
    return [line.split() for line in log.read_text().splitlines()]


def _option(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_compose_topic_job_creates_the_contract_topics_from_configuration(tmp_path: Path) -> None:
    calls = _run_topic_script(tmp_path, CRM_TOPIC_PARTITIONS="12", CRM_DLQ_RETENTION_MS="86400000")
    created = {_option(c, "--topic"): c for c in calls if c[0] == "kafka-topics.sh"}
    assert set(created) == set(topics.ALL)
    for name, call in created.items():
        assert "--if-not-exists" in call
        assert _option(call, "--bootstrap-server") == "kafka:9092"
        assert _option(call, "--partitions") == ("1" if name == topics.DLQ else "12")
    assert _option(created[topics.DLQ], "--config") == "retention.ms=86400000"
    for name in DOMAIN_TOPICS:
        assert _option(created[name], "--config") == "retention.ms=-1"
    # Retention is re-applied to existing topics on every run.
    altered = {_option(c, "--entity-name") for c in calls if c[0] == "kafka-configs.sh"}
    assert altered == set(topics.ALL)


def test_compose_topic_job_defaults_match_the_code(tmp_path: Path) -> None:
    calls = _run_topic_script(tmp_path)
    created = {
        _option(c, "--topic"): int(_option(c, "--partitions"))
        for c in calls
        if c[0] == "kafka-topics.sh"
    }
    assert created == DEFAULT_PARTITIONS


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_kafka_user_may_do_exactly_what_its_worker_does(
    rendered: dict[str, list[dict[str, Any]]], service: str
) -> None:
    plan = worker_plan(service)
    consumed = {t for _, ts in plan.consumers for t in ts}
    produced = {spec.topic for spec in registry.EVENTS.values() if spec.producer == service}
    groups = {group for group, _ in plan.consumers} | {f"{service}-replay"}
    assert consumed and produced
    assert all(g == service or g.startswith(f"{service}-") for g in groups), groups

    expected = {("topic", t, "literal", op) for t in consumed for op in ("Read", "Describe")}
    # Produced events, and dead letters: every consumer may write the DLQ.
    expected |= {
        ("topic", t, "literal", op) for t in produced | {topics.DLQ} for op in ("Write", "Describe")
    }
    expected.add(("group", service, "prefix", "Read"))

    user = of_kind(rendered["prod"], "KafkaUser")[f"crm-{service}"]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert acl_set(user) == expected


def test_the_ops_user_can_list_and_replay_the_dlq(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    acls = acl_set(of_kind(rendered["prod"], "KafkaUser")["crm-ops"])
    assert ("topic", topics.DLQ, "literal", "Read") in acls
    assert ("group", dlq.REPLAYER_GROUP, "literal", "Read") in acls
    # Replay re-publishes to the origin topic, which may be any of ours.
    assert ("topic", "crm.", "prefix", "Write") in acls
    assert all(name.startswith("crm") for _, name, _, _ in acls)


def test_production_talks_sasl_ssl_to_the_strimzi_tls_listener(containers: list[Container]) -> None:
    for c in (c for c in containers if c.target == "prod"):
        assert c.env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", c.workload
        assert c.env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert c.env["KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093")
    for c in (c for c in containers if c.target in ("compose", "dev")):
        assert c.env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", c.workload
