"""`crm` fails on its environment with one line and exit code 1, not a traceback; options that
cannot work are refused before anything starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli import app


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    flat = " ".join(result.output.replace("│", " ").split())  # out of Typer's wrapped error box
    return result.exit_code, flat, exception


def test_invalid_settings_are_named_without_a_traceback_or_the_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "-1")
    code, output, exception = run("token")
    assert (code, exception) == (1, None)
    assert "Error: invalid settings: DB_POOL_SIZE: Input should be greater than or equal to 1" in (
        output
    )
    monkeypatch.delenv("DB_POOL_SIZE")
    monkeypatch.setenv("CRM_ENV", "production")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "the-kafka-password")
    code, output, exception = run("token")
    assert (code, exception) == (1, None)
    assert "CRM_ENV=production needs JWT_JWKS_URL" in output
    assert "the-kafka-password" not in output


def test_migrate_says_it_cannot_reach_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/crm_profile"
    monkeypatch.setenv("PROFILE_DATABASE_URL", url)
    code, output, exception = run("migrate", "profile")
    assert (code, exception) == (1, None)
    assert "Error: cannot connect:" in output


def test_import_names_the_service_that_does_not_answer(tmp_path: Path) -> None:
    csv = tmp_path / "purchases.csv"
    csv.write_text("external_ref,order_id,occurred_at,amount,currency\n")
    url = f"http://127.0.0.1:{closed_port()}"
    code, output, exception = run("import", "purchases", str(csv), "--url", url)
    assert (code, exception) == (1, None)
    assert f"Error: no answer from {url}/v1/imports/purchases" in output


def test_up_refuses_an_unknown_or_unconfigured_broker_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    data = tmp_path / "data"
    code, output, exception = run("up", "--kafka", "external", "--data-dir", str(data))
    assert (code, exception) == (2, None)
    assert "KAFKA_BOOTSTRAP_SERVERS" in output
    code, output, exception = run("up", "--kafka", "kafak", "--data-dir", str(data))
    assert (code, exception) == (2, None)
    assert "'kafak' is not one of: tansu, apache, auto, external" in output
    assert not data.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "profile", "--workers", "4"),  # was accepted and ignored: one process served
        ("token", "--ttl", "-60"),  # an expired token
        ("dlq", "list", "--limit", "0"),
        ("dlq", "list", "--limit", "-1"),  # all but the last
    ],
)
def test_options_that_cannot_work_are_refused(args: tuple[str, ...]) -> None:
    code, _, exception = run(*args)
    assert (code, exception) == (2, None)


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> str:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("shared.http.auth.issue_dev_token", broken)
    code, _, exception = run("token")
    assert code == 1 and isinstance(exception, ZeroDivisionError)


def test_replay_says_why_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.messaging import replay

    async def refuse(*_: object, **__: object) -> None:
        raise replay.ReplayRefused("a lifecycle worker is running (it holds the relay lock)")

    monkeypatch.setattr(replay, "rebuild", refuse)
    code, output, exception = run("replay", "lifecycle")
    assert (code, exception) == (1, None)
    assert "Error: a lifecycle worker is running (it holds the relay lock)" in output


def test_an_empty_dlq_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """`crm dlq list` printed nothing at all when the DLQ was empty: as if it had not run."""
    from shared.messaging import dlq

    async def nothing(**_: object) -> list[object]:
        return []

    monkeypatch.setattr(dlq, "read_all", nothing)
    result = CliRunner().invoke(app, ["dlq", "list"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "the DLQ is empty" in result.stderr
    result = CliRunner().invoke(app, ["dlq", "list", "--group", "lifecycle"])
    assert "holds nothing of group lifecycle" in result.stderr


def answer(status: int, body: dict[str, object]) -> object:
    import httpx

    def post(url: str, **_: object) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("POST", url))

    return post


SUMMARY: dict[str, object] = {
    "status": "done",
    "rows_read": 3,
    "orders_total": 3,
    "purchases_created": 2,
    "rejected": 1,
    "rejections": [{"line": 3, "reason": "'x' is not a plain decimal number"}],
    "error": None,
}


def test_an_import_with_rejected_rows_says_so_and_exits_3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It exited 0 whatever was rejected: a script could not tell a partial import."""
    import httpx

    csv = tmp_path / "purchases.csv"
    csv.write_text("external_ref,order_id,occurred_at,amount,currency\n")
    monkeypatch.setattr(httpx, "post", answer(200, SUMMARY))
    code, output, exception = run("import", "purchases", str(csv))
    assert (code, exception) == (3, None)
    assert "1 of 3 rows were rejected" in output and "'x' is not a plain decimal" in output

    monkeypatch.setattr(httpx, "post", answer(200, {**SUMMARY, "rejected": 0, "rejections": []}))
    assert run("import", "purchases", str(csv))[0] == 0

    failed = {**SUMMARY, "status": "failed", "error": "chunk 2 failed: try again"}
    monkeypatch.setattr(httpx, "post", answer(200, failed))
    code, output, _ = run("import", "purchases", str(csv))
    assert code == 1 and "Error: the import failed: chunk 2 failed: try again" in output


def test_a_refused_import_is_one_error_line_with_the_problem_detail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import httpx

    csv = tmp_path / "purchases.csv"
    csv.write_text("order_id\n")
    problem = {"title": "Invalid input", "status": 422, "detail": "header: missing external_ref"}
    monkeypatch.setattr(httpx, "post", answer(422, problem))
    code, output, exception = run("import", "purchases", str(csv))
    assert (code, exception) == (1, None)
    assert "Error: the import was refused (HTTP 422): header: missing external_ref" in output
