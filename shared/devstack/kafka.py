"""A real Apache Kafka 4.x broker (KRaft, single node) run from its Maven Central jars.

No distribution tarball and no Docker: ``shared/devstack/kafka/pom.xml`` names
``org.apache.kafka:kafka_2.13`` plus a log4j2 binding, and
``mvn -B -q dependency:copy-dependencies`` copies the runtime class path (about 45 MB) into
``<repo>/.cache/kafka/<version>/jars`` once (``~/.m2`` is Maven's own cache). Then:

1. ``server.properties``: one process that is both broker and controller
   (``process.roles=broker,controller``, static quorum ``1@127.0.0.1:<controller port>``),
   PLAINTEXT on 127.0.0.1:<port>, replication factors 1, ``num.partitions`` (default 3),
   ``group.initial.rebalance.delay.ms=0``, 16 MiB segments, small internal topics.
   ``auto.create.topics.enable=false`` by default: topics are created explicitly
   (``create_topics``), as in production, so a misspelt topic fails instead of appearing.
2. ``kafka.tools.StorageTool format`` with a random cluster id, only when the data
   directory is new (a restart or the next ``make run`` keeps topics and offsets).
3. ``java -Xmx512m -cp '<jars>/*' kafka.Kafka server.properties``, logging to
   ``<work_dir>/broker.log`` (log4j2) and ``<work_dir>/broker.out`` (JVM stdout/stderr).
4. Ready when an aiokafka metadata request lists the broker. Stop: SIGTERM (controlled
   shutdown), then SIGKILL after the timeout.

Needs Java 17+ (Kafka 4 brokers do) and, for the first download only, ``mvn``.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from shared.devstack.broker import broker_answers_blocking
from shared.devstack.process import DevstackError, ManagedProcess, free_port, log_tail

KAFKA_VERSION = "4.2.0"
POM = Path(__file__).parent / "kafka" / "pom.xml"
# In kafka_2.13 (core) for every 4.x release so far; checked for 4.1.1 and 4.2.0.
STORAGE_TOOL = "kafka.tools.StorageTool"
BROKER_MAIN = "kafka.Kafka"
MINIMUM_JAVA = 17


def default_cache_dir() -> Path:
    """``<repo>/.cache/kafka`` in a checkout, else the user's cache directory."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "kafka"
    return Path.home() / ".cache" / "crm-devstack" / "kafka"


def java_major_version() -> int | None:
    """The major version of ``java`` on PATH, or None without one."""
    java = shutil.which("java")
    if java is None:
        return None
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # e.g. 'openjdk version "17.0.15" 2025-04-15' or 'java version "1.8.0_402"'
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def jars_dir(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / version / "jars"


def jars_present(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> bool:
    return (jars_dir(version, cache_dir) / f"kafka_2.13-{version}.jar").is_file()


def apache_kafka_available(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> bool:
    """Java 17+ on PATH, and either the jars cached or mvn on PATH to fetch them."""
    if not (jars_present(version, cache_dir) or shutil.which("mvn")):
        return False
    java = java_major_version()
    return java is not None and java >= MINIMUM_JAVA


def ensure_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """The directory of the broker's jars, downloaded with Maven unless already cached."""
    target = jars_dir(version, cache_dir)
    if jars_present(version, cache_dir):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevstackError(f"Kafka {version} jars are not in {target} and mvn is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several test sessions may start at once: one downloads, the others wait for it.
    with (target.parent / "download.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_present(version, cache_dir):
            return target
        partial = target.with_name(f"jars.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        maven_log = target.parent / "mvn.log"
        with maven_log.open("w") as log:
            result = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={version}",
                    f"-DoutputDirectory={partial}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        if result.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").is_file():
            shutil.rmtree(partial, ignore_errors=True)
            raise DevstackError(
                f"mvn could not fetch Kafka {version} (exit {result.returncode}); "
                f"see {maven_log}:\n{maven_log.read_text()[-3000:]}"
            )
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own Uuid.randomUuid() never returns ids starting with "-" (they parse as flags).
        if not cluster_id.startswith("-"):
            return cluster_id


_LOG4J2 = """\
status = warn
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


class ApacheKafka:
    """One Apache Kafka node (broker + controller) with its data under work_dir/data."""

    kind = "apache"
    supports_idempotence = True
    persistent = True
    restartable = True

    def __init__(
        self,
        work_dir: Path,
        port: int,
        *,
        controller_port: int | None = None,
        host: str = "127.0.0.1",
        version: str = KAFKA_VERSION,
        cache_dir: Path | None = None,
        num_partitions: int = 3,
        auto_create_topics: bool = False,
        heap: str = "512m",
        log_level: str = "INFO",
        start_timeout: float = 120.0,
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.port = port
        self.controller_port = controller_port or free_port(host)
        self.host = host
        self.version = version
        self.cache_dir = cache_dir
        self.num_partitions = num_partitions
        self.auto_create_topics = auto_create_topics
        self.heap = heap
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "broker.log"
        self._process: ManagedProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Fetch the jars if needed, write the config, format new storage, start, wait."""
        if self._process is not None and self._process.is_running():
            return
        classpath = str(ensure_jars(self.version, self.cache_dir) / "*")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        properties = self.work_dir / "server.properties"
        properties.write_text(self._server_properties())
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(level=self.log_level, path=self.log_path))
        java = shutil.which("java")
        if java is None:
            raise DevstackError("java is not on PATH (Kafka 4 needs Java 17+)")
        jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true"]
        if not (self.data_dir / "meta.properties").is_file():
            self._format(jvm, classpath, properties)
        self._process = ManagedProcess(
            "kafka",
            [
                *jvm,
                f"-Xmx{self.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-cp",
                classpath,
                BROKER_MAIN,
                str(properties),
            ],
            self.work_dir / "broker.out",
        )
        self._process.start()
        try:
            self._process.wait_until(
                lambda: broker_answers_blocking(self.bootstrap_servers, timeout=3),
                timeout=self.start_timeout,
                what=f"answering on {self.bootstrap_servers} (log: {self.log_path})",
                interval=0.5,
            )
        except DevstackError as error:
            self._process.stop(timeout=10)
            # The JVM's stdout is nearly empty: the reason is in the log4j file, often
            # followed by many lines of orderly shutdown.
            raise DevstackError(
                f"{error}\n--- first errors in {self.log_path} ---\n{self._first_errors()}"
                f"\n--- last lines of {self.log_path} ---\n{log_tail(self.log_path, 15)}"
            ) from None

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is not None:
            self._process.stop(timeout)

    def restart(self) -> None:
        """Stop and start on the same ports; topics, messages and offsets stay."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def _first_errors(self, limit: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(none)"
        errors = [line for line in lines if "] ERROR " in line or line.startswith("Caused by")]
        return "\n".join(errors[:limit]) or "(none)"

    def _format(self, jvm: list[str], classpath: str, properties: Path) -> None:
        format_log = self.work_dir / "format.log"
        with format_log.open("w") as log:
            result = subprocess.run(
                [
                    *jvm,
                    "-Xmx256m",
                    "-cp",
                    classpath,
                    STORAGE_TOOL,
                    "format",
                    "--cluster-id",
                    random_cluster_id(),
                    "--config",
                    str(properties),
                    "--ignore-formatted",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise DevstackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {result.returncode}):\n"
                f"{format_log.read_text()[-3000:]}"
            )

    def _server_properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.num_partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "group.initial.rebalance.delay.ms": "0",
            # Internal topics: one replica, few partitions (50 offsets partitions slow start-up).
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "4",
            # Small segments and sparse indexes keep a development data dir small.
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.index.size.max.bytes": str(1024 * 1024),
            "log.retention.hours": "168",
            # Committed offsets outlive a paused development stack (Kafka keeps them 7 days).
            "offsets.retention.minutes": "43200",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def __repr__(self) -> str:
        return f"ApacheKafka({self.version}, {self.bootstrap_servers}, work_dir={self.work_dir})"
