"""Smoke test of the image's installed venv, without Docker: what the migration Jobs and the
service containers run, against a throw-away PostgreSQL (the project's embedded one).

    python deploy/smoke.py .cache/deploy/image-venv

For each service: `crm migrate <service>` must succeed; `crm serve <service> --role api` (the
image's environment, CRM_ENV=production, run outside the source tree) must answer the image's
HEALTHCHECK as live, and report not ready, since no Kafka broker is reachable (port 1).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.devstack import EmbeddedPostgres, free_port
from shared.platform import SERVICES

HEALTHCHECK = Path(__file__).resolve().parent / "healthcheck.py"
START_TIMEOUT = 60.0


def image_env(venv: Path, **settings: str) -> dict[str, str]:
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CRM_ENV": "production",
        "LOG_FORMAT": "json",
        "JWT_SECRET": secrets.token_urlsafe(32),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        **settings,
    }


def healthcheck(venv: Path, port: int, *flags: str) -> int:
    env = {"CRM_HEALTH_PORT": str(port), "PATH": "/usr/bin:/bin"}
    command = [str(venv / "bin" / "python"), str(HEALTHCHECK), *flags]
    return subprocess.run(command, env=env, timeout=30, check=False).returncode


def serve(venv: Path, service: str, env: dict[str, str], workdir: Path, log: Path) -> str | None:
    """None when the service came up live and not ready; else what went wrong."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "crm"),
                "serve",
                service,
                "--role",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while healthcheck(venv, port) != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                return f"never live (exit {process.poll()}):\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        if healthcheck(venv, port, "--ready") == 0:
            return "ready although no Kafka broker is reachable"
        return None
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(venv: Path) -> int:
    venv = venv.resolve()
    failures = []
    with tempfile.TemporaryDirectory(prefix="crm-smoke-") as scratch:
        workdir = Path(scratch)
        postgres = EmbeddedPostgres(workdir / "postgres", free_port(), durable=False)
        postgres.start()
        try:
            for service in SERVICES:
                database = f"crm_{service}"
                postgres.create_database(database)
                env = image_env(venv, **{f"{service.upper()}_DATABASE_URL": postgres.url(database)})
                migrated = subprocess.run(
                    [str(venv / "bin" / "crm"), "migrate", service],
                    env=env,
                    cwd=workdir,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                if migrated.returncode != 0:
                    failures.append(f"crm migrate {service}:\n{migrated.stdout}{migrated.stderr}")
                    continue
                problem = serve(venv, service, env, workdir, workdir / f"{service}.log")
                if problem:
                    failures.append(f"crm serve {service}: {problem}")
                else:
                    print(
                        f"{service}: migrated; serving: /health/live 200, /health/ready 503 without Kafka"
                    )
        finally:
            postgres.stop()
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: python deploy/smoke.py VENV", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
