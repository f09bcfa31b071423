"""`crm`: the platform's command line (contract: up, token, import purchases, dlq, replay, migrate).

This is the composition root: it may import every service (lazily); services never import each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup


def operational_error(exc: BaseException) -> str | None:
    """What to tell the operator when a command fails on its environment (bad settings, a
    database, broker or service that does not answer, a server that cannot start), not on a bug:
    one line, not a traceback. None: a bug, whose traceback is shown."""
    import asyncpg
    import httpx
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError
    from sqlalchemy import exc as sa_exc

    from shared.devstack import DevstackError

    if isinstance(exc, ValidationError) and exc.title.endswith("Settings"):
        # The messages only: pydantic's text repeats every input, secrets included.
        reasons = [
            ": ".join(
                filter(None, [".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, ")])
            )
            for e in exc.errors()
        ]
        return "invalid settings: " + "; ".join(reasons)
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return f"the database refused: {exc.orig}"  # the driver's message, not the statement
    if isinstance(exc, httpx.TransportError):
        try:
            where = f" from {exc.request.url}"
        except RuntimeError:  # raised without a request
            where = ""
        return f"no answer{where}: {str(exc) or type(exc).__name__}"
    if isinstance(exc, KafkaError):
        return f"Kafka: {exc}"
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return f"cannot connect: {str(exc) or type(exc).__name__}"
    if isinstance(exc, OSError | DevstackError):
        return str(exc) or type(exc).__name__
    connecting = (
        asyncpg.InvalidAuthorizationSpecificationError,  # wrong role or password
        asyncpg.InvalidCatalogNameError,  # no such database
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    )
    if isinstance(exc, connecting):
        return f"the database refused: {exc}"
    return None


class CrmCommands(TyperGroup):
    """Turns failures on the environment into `Error: <what>` on stderr and exit code 1."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context is narrower than the base's Context
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if not reader_gone(sys.stdout):
                _fail(exc)  # a connection's pipe, not stdout's
            # Whoever read stdout stopped (`crm dlq list | head -1`): no connection failed, and
            # stdout goes nowhere so that Python's flush at exit does not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:
            _fail(exc)


def _fail(exc: Exception) -> NoReturn:
    message = operational_error(exc)
    if message is None:
        raise exc
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1) from exc


def reader_gone(stream: Any) -> bool:
    """Whether `stream` is a pipe whose reading end was closed (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's capture)
        return False


app = typer.Typer(
    help="Customer lifecycle platform command line.", no_args_is_help=True, cls=CrmCommands
)
dlq_app = typer.Typer(
    help="Inspect and replay the dead-letter queue (crm.dlq.v1).", no_args_is_help=True
)
import_app = typer.Typer(help="Bulk imports.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(import_app, name="import")

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("profile", "lifecycle", "complaints", "scoring")
ALL_SCOPES = (
    "customers:read customers:write pii:read complaints:read complaints:write lifecycle:read "
    "lifecycle:admin scores:read scores:admin"
)


def _settings(service: str) -> Any:
    module = importlib.import_module(f"services.{service}.config")
    cls = next(
        v for k, v in vars(module).items() if k.endswith("Settings") and k != "ServiceSettings"
    )
    return cls()


def _check_service(service: str) -> str:
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
    return service


# Allocations between collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="profile | lifecycle | complaints | scoring")],
    role: Annotated[str, typer.Option(help="api | worker | all")] = "all",
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: the service's contract port")] = None,
    workers: Annotated[
        int, typer.Option(help="HTTP worker processes: 1 (scale with more processes or replicas)")
    ] = 1,
) -> None:
    """Run one service: its HTTP API, its worker (consumers, relay, schedules), or both."""
    import uvicorn

    from shared.observability.gc_pauses import watch_gc_pauses
    from shared.platform import DEFAULT_PORTS
    from shared.runtime import Role

    _check_service(service)
    if workers != 1:
        # Never passed to uvicorn before: `--workers 4` silently served with one process.
        raise typer.BadParameter(
            "one process per `crm serve`: run more of them (replicas) to scale",
            param_hint="'--workers'",
        )
    if role not in set(Role):
        raise typer.BadParameter(
            f"{role!r} is not one of: {', '.join(Role)}", param_hint="'--role'"
        )
    chosen = Role(role)
    module = importlib.import_module(f"services.{service}.main")
    application = module.create_app(role=chosen)
    # Everything imported so far lives as long as the process: keep it out of the cyclic GC's
    # scans (they cost a consumer about a fifth of its CPU per event).
    gc.freeze()
    # A batch of events allocates tens of thousands of short-lived containers, nearly all freed
    # by reference counting; collecting the youngest generation every 700 of them (the default)
    # cost the lifecycle consumer a further fifth of its CPU (0.129 -> 0.104 ms per event).
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    watch_gc_pauses(service)
    port = port or DEFAULT_PORTS[service]
    try:
        uvicorn.run(
            application,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=20,
        )
    except SystemExit as exited:  # uvicorn's way to say the server did not start (code 3)
        if exited.code in (0, None):
            raise
        typer.echo(f"Error: {service} did not start on {host}:{port}: its log says why", err=True)
        raise typer.Exit(1) from None


@app.command()
def migrate(
    services: Annotated[list[str] | None, typer.Argument(help="Default: all four")] = None,
) -> None:
    """Upgrade each service's database to the latest migration (Alembic, one history per service)."""
    from shared.db import migrate as run

    for service in services or SERVICES:
        _check_service(service)
        url = _settings(service).database_url
        started = time.perf_counter()
        run(service, url)
        typer.echo(f"migrated {service} ({time.perf_counter() - started:.1f}s)")


@app.command()
def token(
    scopes: Annotated[str, typer.Option(help="Space-separated scopes")] = ALL_SCOPES,
    subject: Annotated[str, typer.Option(help="The `sub` claim (shown as the actor)")] = "dev-user",
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds")] = 12 * 3600,
) -> None:
    """Print a development token signed with JWT_SECRET (never for production)."""
    from shared.http.auth import SCOPES, issue_dev_token
    from shared.settings import ServiceSettings

    wanted = scopes.split()
    if not wanted:  # a token that every endpoint refuses (403)
        raise typer.BadParameter(
            f"no scope given; known (space-separated): {' '.join(SCOPES)}", param_hint="'--scopes'"
        )
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise typer.BadParameter(
            f"unknown scope(s) {unknown}; known (space-separated): {' '.join(SCOPES)}",
            param_hint="'--scopes'",
        )
    typer.echo(issue_dev_token(ServiceSettings(), scopes=wanted, subject=subject, ttl_seconds=ttl))


@app.command()
def topics() -> None:
    """Create the contract's Kafka topics where missing."""
    from shared.messaging.kafka import ensure_topics
    from shared.settings import ServiceSettings

    created = asyncio.run(ensure_topics(ServiceSettings()))
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@app.command()
def docs(
    check: Annotated[bool, typer.Option(help="Fail if docs/ is stale instead of writing")] = False,
    asyncapi_schema: Annotated[
        Path | None, typer.Option(help="With --check: validate against this AsyncAPI 3 JSON Schema")
    ] = None,
) -> None:
    """Write (or check) docs/asyncapi.yaml and docs/events/*.schema.json from the event registry."""
    from shared.events import catalog

    docs_dir = REPO / "docs"
    if not check:
        for path in catalog.write(docs_dir):
            typer.echo(f"wrote {path.relative_to(REPO)}")
        return
    stale = []
    if (docs_dir / "asyncapi.yaml").read_text() != catalog.render_asyncapi():
        stale.append("docs/asyncapi.yaml")
    for event_type in sorted(catalog.json_schemas()):
        path = docs_dir / "events" / f"{event_type}.schema.json"
        if not path.exists() or path.read_text() != catalog.render_schema(event_type):
            stale.append(str(path.relative_to(REPO)))
    if stale:
        typer.echo("stale: " + ", ".join(stale) + " — run `make docs` and commit", err=True)
        raise typer.Exit(1)
    typer.echo("docs are current")
    if asyncapi_schema is not None:
        errors = catalog.validate_asyncapi(docs_dir / "asyncapi.yaml", asyncapi_schema)
        for error in errors[:20]:
            typer.echo(error, err=True)
        if errors:
            typer.echo(
                f"docs/asyncapi.yaml: {len(errors)} error(s) against the AsyncAPI 3 schema",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo("docs/asyncapi.yaml is valid AsyncAPI 3.0.0")


#: `crm import purchases` exit status when some rows were rejected and the rest imported.
IMPORT_ROWS_REJECTED = 3


def _refusal(response: Any) -> str:
    """A refused request in one line: the problem's detail, else the body."""
    try:
        problem = response.json()
        detail = problem.get("detail") or problem.get("title")
    except ValueError:
        detail = None
    return f"the import was refused (HTTP {response.status_code}): {detail or response.text}"


#: How often `crm import purchases` asks where a running import stands.
IMPORT_POLL_SECONDS = 0.5
#: Polls that may fail in a row (a service restarting) before the command gives up following.
IMPORT_POLL_FAILURES = 10


def _import_progress(state: dict[str, Any], elapsed: float) -> str:
    """Where a running import stands, in one line."""
    total, done = state.get("orders_total") or 0, state.get("orders_done") or 0
    if not total:
        return f"reading the file ... {elapsed:.0f}s"
    line = f"written {done:,} of {total:,} orders ({100 * done // total}%), {elapsed:.0f}s"
    if 0 < done < total:
        line += f", about {elapsed * (total - done) / done:.0f}s left"
    return line


def _follow_import(
    status_url: str, *, bearer: str, running: dict[str, Any], started: float
) -> dict[str, Any]:
    """Poll a running import until it ends, showing its progress on stderr: one line rewritten
    on a terminal, else a line at each tenth of the orders (a log stays short)."""
    import httpx

    on_terminal = sys.stderr.isatty()
    typer.echo(f"import {running['id']} running; following it at {status_url}", err=True)
    shown: int | None = None  # the tenth of the orders last shown (-1: reading the file)
    failures = 0
    try:
        while running.get("status") == "running":
            line = _import_progress(running, time.perf_counter() - started)
            total = running.get("orders_total") or 0
            step = (10 * (running.get("orders_done") or 0) // total) if total else -1
            if on_terminal:
                typer.echo(f"\r\033[K{line}", err=True, nl=False)
            elif step != shown:
                typer.echo(line, err=True)
                shown = step
            time.sleep(IMPORT_POLL_SECONDS)
            try:
                response = httpx.get(
                    status_url, headers={"Authorization": f"Bearer {bearer}"}, timeout=30
                )
            except httpx.TransportError as error:
                failures += 1
                if failures >= IMPORT_POLL_FAILURES:
                    _import_lost(status_url, f"the service does not answer ({error})")
                continue
            if response.status_code >= 400:
                _import_lost(status_url, _refusal(response).replace("import was", "progress was"))
            running, failures = response.json(), 0
    except KeyboardInterrupt:
        _import_lost(status_url, "stopped following it (Ctrl-C)", code=130)
    if on_terminal:
        typer.echo("\r\033[K", err=True, nl=False)
    return running


def _import_lost(status_url: str, why: str, *, code: int = 1) -> NoReturn:
    typer.echo(
        f"\nError: {why}. The import goes on in the service, or stopped and says why: "
        f"GET {status_url} (a token with customers:read) shows where it stands.",
        err=True,
    )
    raise typer.Exit(code)


@import_app.command("purchases")
def import_purchases(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file")],
    url: Annotated[str, typer.Option(help="Profile service URL")] = "http://127.0.0.1:8001",
    token_: Annotated[
        str | None, typer.Option("--token", help="Bearer token (default: a dev token)")
    ] = None,
) -> None:
    """Import historical purchases from CSV (external_ref,order_id,occurred_at,amount,currency[,sku,category,quantity])."""
    import httpx

    from shared.http.auth import issue_dev_token
    from shared.settings import ServiceSettings

    url = url.rstrip("/")  # `http://127.0.0.1:8001/` was a 404
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="'--url'")
    bearer = token_ or issue_dev_token(
        ServiceSettings(), scopes=["customers:write", "customers:read"]
    )
    size = file.stat().st_size
    # Progress on stderr: stdout is the summary alone, one JSON document for scripts.
    typer.echo(
        f"uploading {file} ({size / 1e6:.1f} MB) to {url}/v1/imports/purchases ...", err=True
    )
    started = time.perf_counter()
    with file.open("rb") as body:
        response = httpx.post(
            f"{url}/v1/imports/purchases",
            content=body.read(),
            # No limit on the wait for the answer: a service that does not answer at once (one
            # older than `respond-async`) answers when every row is written, which takes longer
            # than 10 minutes at its size limit; a service that stops closes the connection.
            timeout=httpx.Timeout(60, read=None),
            headers={
                "Authorization": f"Bearer {bearer}",
                "Content-Type": "text/csv",
                "Prefer": "respond-async",
            },
        )
    if response.status_code >= 400:
        hint = f" (is {url} the profile service?)" if response.status_code == 404 else ""
        typer.echo(f"Error: {_refusal(response)}{hint}", err=True)
        raise typer.Exit(1)
    summary = response.json()
    if response.status_code == 202:
        # Not its `Location`: that path lacks the prefix of a proxy that `--url` may include.
        summary = _follow_import(
            f"{url}/v1/imports/{summary['id']}",
            bearer=bearer,
            running=summary,
            started=started,
        )
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"done in {time.perf_counter() - started:.1f}s", err=True)
    if summary.get("status") == "failed":
        typer.echo(f"Error: the import failed: {summary.get('error')}", err=True)
        raise typer.Exit(1)
    rejected, rows = summary.get("rejected") or 0, summary.get("rows_read") or 0
    if rejected:
        listed = len(summary.get("rejections") or [])
        where = "are" if listed >= rejected else f"of the first {listed} are"
        rest = "the other rows were imported" if rejected < rows else "no row was imported"
        # Not an error of the command, but a script must be able to tell: exit 3.
        typer.echo(
            f"{rejected} of {rows} rows were rejected (the lines and reasons {where} under "
            f"`rejections` above); {rest}. Fix those rows and import the file again: imported "
            "orders count as duplicates.",
            err=True,
        )
        raise typer.Exit(IMPORT_ROWS_REJECTED)


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, the oldest first")] = 50,
    group: Annotated[str | None, typer.Option(help="Only those of this consumer group")] = None,
) -> None:
    """Show what is in the DLQ: origin, group, error (payloads are not printed: they may hold personal data)."""
    from shared.messaging import dlq

    letters = asyncio.run(dlq.read_all())
    groups = sorted({str(letter.summary()["group"]) for letter in letters})
    entries = [e for e in letters if group is None or e.summary()["group"] == group]
    for entry in entries[:limit]:
        typer.echo(json.dumps(entry.summary()))
    # The notes on stderr: stdout stays one JSON object per line for scripts.
    if len(entries) > limit:
        typer.echo(
            f"the oldest {limit} of {len(entries)} dead letters: --limit {len(entries)} shows all",
            err=True,
        )
    if not letters:
        typer.echo(
            f"crm.dlq.v1 holds nothing{f' of group {group}' if group else ''}: the DLQ is empty",
            err=True,
        )
    elif not entries:
        typer.echo(
            f"crm.dlq.v1 holds {len(letters)} dead letter(s), none of group {group} "
            f"(their groups: {', '.join(groups)})",
            err=True,
        )


@dlq_app.command("replay")
def dlq_replay(
    group: Annotated[str | None, typer.Option(help="Only those of this consumer group")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be replayed")] = False,
) -> None:
    """Re-publish dead-lettered messages to their origin topic (consumers' inboxes drop what was applied)."""
    from shared.messaging import dlq

    count = asyncio.run(dlq.replay(group=group, dry_run=dry_run))
    typer.echo(f"{'would replay' if dry_run else 'replayed'} {count} message(s)")


@app.command()
def replay(
    service: Annotated[str, typer.Argument(help="The service whose projections to rebuild")],
) -> None:
    """Rebuild a service's state from the Kafka log (earliest offsets). Stop its workers first."""
    from shared.messaging import replay as replay_mod

    _check_service(service)
    try:
        summary = asyncio.run(replay_mod.rebuild(service, _settings(service), progress=typer.echo))
    except replay_mod.ReplayRefused as refused:  # a worker runs, or its outbox is not empty
        typer.echo(f"Error: {refused}", err=True)
        raise typer.Exit(1) from refused
    typer.echo(json.dumps(summary))


KAFKA_CHOICES = ("tansu", "apache", "auto", "external")


@app.command()
def up(
    kafka: Annotated[
        str,
        typer.Option(
            help="tansu (embedded, default) | apache (jars; needs Java) | auto (apache when Java "
            "is there) | external (KAFKA_BOOTSTRAP_SERVERS)"
        ),
    ] = os.environ.get("CRM_KAFKA", "tansu"),
    data_dir: Annotated[
        Path, typer.Option(help="PostgreSQL's data, the Apache broker's, the logs")
    ] = REPO / ".data",
    pg_port: Annotated[int, typer.Option(help="Embedded PostgreSQL port")] = 54320,
    kafka_port: Annotated[int, typer.Option(help="Embedded broker port")] = 9092,
) -> None:
    """Start everything on embedded defaults: PostgreSQL, a broker, topics, migrations, the four services."""
    from shared.platform import DATABASES, Platform, database_env
    from shared.stack import run_stack

    if kafka not in KAFKA_CHOICES:
        raise typer.BadParameter(
            f"{kafka!r} is not one of: {', '.join(KAFKA_CHOICES)}", param_hint="'--kafka'"
        )
    if kafka == "external" and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        raise typer.BadParameter(
            "external needs KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port]) in the environment",
            param_hint="'--kafka'",
        )
    sys.exit(
        run_stack(
            kafka=kafka,
            data_dir=data_dir,
            pg_port=pg_port,
            kafka_port=kafka_port,
            databases=DATABASES,
            database_env=database_env,
            platform_cls=Platform,
            echo=typer.echo,
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
