"""The four services as child processes over given PostgreSQL and Kafka: used by `crm up`,
the end-to-end tests and the benchmarks."""

from __future__ import annotations

import functools
import os
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.devstack.process import ManagedProcess

SERVICES = ("profile", "lifecycle", "complaints", "scoring")
DEFAULT_PORTS = {"profile": 8001, "lifecycle": 8002, "complaints": 8003, "scoring": 8004}
DATABASES = {s: f"crm_{s}" for s in SERVICES}


def database_env(server_url: str) -> dict[str, str]:
    """{PROFILE_DATABASE_URL: ..., ...} for a server URL like postgresql+asyncpg://u@h:p/postgres."""
    base = server_url.rsplit("/", 1)[0]
    return {f"{s.upper()}_DATABASE_URL": f"{base}/{DATABASES[s]}" for s in SERVICES}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Platform:
    env: Mapping[str, str]
    log_dir: Path
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    role: str = "all"
    services: tuple[str, ...] = SERVICES
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, **self.env}
        for service in self.services:
            self.start_service(service, env)
        deadline = time.monotonic() + timeout
        for service in self.services:
            process = self.processes[service]
            process.wait_until(
                functools.partial(_ready, f"{self.url(service)}/health/ready"),
                timeout=max(1.0, deadline - time.monotonic()),
                what="ready",
            )

    def start_service(self, service: str, env: Mapping[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(
            service,
            [
                sys.executable,
                "-m",
                "shared.cli",
                "serve",
                service,
                "--role",
                self.role,
                "--port",
                str(self.ports[service]),
            ],
            self.log_dir / f"{service}.log",
            env=env or {**os.environ, **self.env},
        )
        process.start()
        self.processes[service] = process
        return process

    def check_alive(self) -> list[str]:
        return [name for name, p in self.processes.items() if not p.is_running()]

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop(timeout=30)
        self.processes.clear()
