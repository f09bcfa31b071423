"""The four services as processes (`crm serve <svc> --role all`) on the session's PostgreSQL and
Kafka, with fresh migrated databases, for the schemathesis runs of `fuzzing.py`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from chaos.harness import Services, provision, service_env

from shared.devstack import Broker, PostgresServer
from shared.platform import SERVICES

# A subset while fuzzing one service by hand: CRM_FUZZ_SERVICES=profile,complaints
SELECTED = tuple(os.environ.get("CRM_FUZZ_SERVICES", ",".join(SERVICES)).split(","))


# Package scope (tests/fuzz is a package for it): the services stop after the last fuzz test,
# so suites run after it in the same session (`pytest` alone collects tests/fuzz before
# tests/integration) do not share their consumer groups with them.
@pytest.fixture(scope="package")
def fuzz_services(
    postgres_server: PostgresServer,
    kafka_broker: Broker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Services]:
    urls = provision(
        postgres_server, kafka_broker.bootstrap_servers, suffix=f"fz{uuid.uuid4().hex[:6]}"
    )
    env = service_env(
        urls,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        idempotence="true" if kafka_broker.supports_idempotence else "false",
        session_timeout_ms=3000 if kafka_broker.kind == "tansu" else 6000,
        extra={"LOG_LEVEL": "WARNING"},
    )
    log_dir = tmp_path_factory.mktemp("fuzz-logs")
    services = Services(env=env, log_dir=log_dir, split=False, services=SELECTED)
    try:
        services.start(timeout=180)
        yield services
    finally:
        services.stop()
    # A request that kills a service process is a finding too.
    assert not services.unexpected_exits, [
        f"{e.name} exited ({e.code}):\n{e.log_tail}" for e in services.unexpected_exits
    ]


@pytest.fixture(scope="package")
def service_url(fuzz_services: Services) -> Any:
    """service_url("profile") -> base URL of the running service."""

    def url(service: str) -> str:
        if service not in fuzz_services.services:
            pytest.fail(f"{service} is not started (CRM_FUZZ_SERVICES={','.join(SELECTED)})")
        return fuzz_services.url(service)

    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Name each schemathesis item after its operation (`test_profile_api[POST /v1/customers]`):
    schemathesis 4.32 builds the item with `originalname`, which pytest 9 alone uses for the id."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label and item.parent is not None and item.nodeid.endswith(f"::{item.originalname}"):  # type: ignore[attr-defined]
            item._id = item.parent.id.child(item.originalname).with_params(label)  # type: ignore[attr-defined]
