"""`crm up` / `make run`: embedded PostgreSQL + broker + topics + migrations + the four services.

Ctrl-C or SIGTERM stops everything it started (services first, then the broker, then PostgreSQL);
every child also dies with this process (PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.devstack import create_topics_blocking, start_kafka, start_postgres
from shared.devstack.process import log_tail

_PR_SET_PDEATHSIG = 1


class _Stop(Exception):
    pass


def _die_with_parent() -> None:
    """If `make` (our parent) is killed, we get SIGTERM and shut down cleanly too."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_stack(
    *,
    kafka: str,
    data_dir: Path,
    pg_port: int,
    kafka_port: int,
    databases: Mapping[str, str],
    database_env: Callable[[str], dict[str, str]],
    platform_cls: Any,
    echo: Callable[[str], None],
) -> int:
    from shared.db import migrate
    from shared.http.auth import issue_dev_token
    from shared.messaging.kafka import DEFAULT_PARTITIONS
    from shared.settings import ServiceSettings

    def on_signal(signum: int, _: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    _die_with_parent()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.perf_counter()
    postgres = broker = platform = None
    code = 0
    try:
        echo(f"starting PostgreSQL on 127.0.0.1:{pg_port} (data in {data_dir / 'postgres'}) ...")
        postgres = start_postgres(data_dir / "postgres", pg_port, ephemeral=False)
        for name in databases.values():
            postgres.create_database(name)
        if kafka == "external":
            bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
            idempotence = os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "auto")
            echo(f"using the Kafka cluster at {bootstrap}")
        else:
            echo(f"starting the {kafka} broker on 127.0.0.1:{kafka_port} ...")
            broker = start_kafka(kafka, data_dir / f"kafka-{kafka}", kafka_port)  # type: ignore[arg-type]
            bootstrap = broker.bootstrap_servers
            idempotence = "true" if broker.supports_idempotence else "false"
        create_topics_blocking(bootstrap, DEFAULT_PARTITIONS)
        env = {
            **database_env(postgres.url("postgres")),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": idempotence,
        }
        if broker is not None and broker.kind == "tansu":
            env["KAFKA_SESSION_TIMEOUT_MS"] = "3000"
        os.environ.update(env)
        for service in databases:
            migrate(service, env[f"{service.upper()}_DATABASE_URL"])
        echo("migrated the four databases; starting the services ...")
        platform = platform_cls(env=env, log_dir=data_dir / "logs")
        platform.start()
        token = issue_dev_token(
            ServiceSettings(),
            scopes=[
                "customers:read",
                "customers:write",
                "pii:read",
                "complaints:read",
                "complaints:write",
                "lifecycle:read",
                "lifecycle:admin",
                "scores:read",
                "scores:admin",
            ],
        )
        echo("")
        echo(f"The platform is up ({time.perf_counter() - started:.1f}s):")
        for service in platform.services:
            echo(f"  {service:<11} {platform.url(service)}   docs: {platform.url(service)}/docs")
        echo(f"  kafka       {bootstrap}    postgres: {postgres.url('postgres')}")
        echo(f"  logs        {data_dir / 'logs'}/<service>.log")
        echo("")
        echo("Development token (all scopes, 12 h):")
        echo(f"  export TOKEN={token}")
        echo("")
        echo("Ctrl-C stops everything.")
        while True:
            time.sleep(0.5)
            dead = platform.check_alive()
            if dead:
                for name in dead:
                    echo(f"{name} exited unexpectedly; last lines of its log:")
                    echo(log_tail(platform.processes[name].log_path))
                code = 1
                break
    except _Stop as stop:
        echo(f"\n{stop} received: stopping ...")
    except KeyboardInterrupt:
        echo("\nstopping ...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if platform is not None:
            platform.stop()
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
        echo("stopped.")
    return code
