"""`crm` as a newcomer or an operator uses it: what it prints, where (stdout stays for scripts),
and its exit codes, for the mistakes found by an audit of the command line."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from shared import cli
from shared.cli import app
from shared.messaging import dlq


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())  # out of Typer's wrapped error box


def test_serve_refuses_an_unknown_role_without_a_traceback() -> None:
    """`--role bogus` ended in a ValueError traceback."""
    result = invoke("serve", "profile", "--role", "bogus")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "'bogus' is not one of: api, worker, all" in flat(result.output)


def test_a_service_that_does_not_start_is_one_error_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port in use or a database down at start-up: uvicorn's exit code 3 and no `Error:` line."""
    import uvicorn

    def cannot_start(*_: object, **__: object) -> None:
        raise SystemExit(3)  # what uvicorn.run does when the server did not start

    monkeypatch.setattr(uvicorn, "run", cannot_start)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not in the test process
    monkeypatch.setattr(gc, "set_threshold", lambda *_: None)
    monkeypatch.setattr("shared.observability.gc_pauses.watch_gc_pauses", lambda _: None)
    result = invoke("serve", "profile", "--role", "api", "--port", "18001")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Error: profile did not start on 127.0.0.1:18001" in result.stderr


@pytest.mark.parametrize("scopes", ["", "   "])
def test_token_refuses_no_scope(scopes: str) -> None:
    """`--scopes "$UNSET"` printed a token that every endpoint refuses, and exited 0."""
    result = invoke("token", "--scopes", scopes)
    assert result.exit_code == 2
    assert "no scope given" in flat(result.output) and result.stdout == ""


def fake_post(calls: list[dict[str, Any]], status: int, body: dict[str, Any]) -> Any:
    def post(url: str, **options: Any) -> httpx.Response:
        calls.append({"url": url, **options})
        return httpx.Response(status, json=body, request=httpx.Request("POST", url))

    return post


SUMMARY: dict[str, Any] = {
    "id": "2518e293-4482-49f6-839f-709e66dadc51",
    "status": "done",
    "rows_read": 4,
    "orders_total": 4,
    "purchases_created": 4,
    "duplicates": 0,
    "rejected": 0,
    "rejections": [],
    "error": None,
}


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "purchases.csv"
    path.write_text("external_ref,order_id,occurred_at,amount,currency\n")
    return path


def test_import_stdout_is_the_summary_alone(monkeypatch: pytest.MonkeyPatch, csv: Path) -> None:
    """`uploading ...` and `done in ...` were on stdout: `crm import purchases f.csv | jq` broke."""
    monkeypatch.setattr(httpx, "post", fake_post([], 200, SUMMARY))
    result = invoke("import", "purchases", str(csv))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == SUMMARY
    assert "uploading" in result.stderr and "done in" in result.stderr


def test_import_waits_for_the_answer_however_long_the_import_takes(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    """The answer comes when every row is written: 20 s per 100,000 rows on a busy machine, so a
    file near the 200 MB limit outlasted the fixed 600 s timeout (an error while it went on)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(httpx, "post", fake_post(calls, 200, SUMMARY))
    assert invoke("import", "purchases", str(csv)).exit_code == 0
    timeout = calls[0]["timeout"]
    assert isinstance(timeout, httpx.Timeout) and timeout.read is None
    assert timeout.connect is not None


def test_import_url_with_a_trailing_slash_or_without_a_scheme(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    """`--url http://127.0.0.1:8001/` posted to `//v1/imports/purchases`: 404 Not Found."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(httpx, "post", fake_post(calls, 200, SUMMARY))
    assert invoke("import", "purchases", str(csv), "--url", "http://127.0.0.1:8001/").exit_code == 0
    assert calls[0]["url"] == "http://127.0.0.1:8001/v1/imports/purchases"

    result = invoke("import", "purchases", str(csv), "--url", "localhost:8001")
    assert result.exit_code == 2 and len(calls) == 1
    assert "'localhost:8001' is not an http:// or https:// URL" in flat(result.output)


def test_import_at_another_service_says_so(monkeypatch: pytest.MonkeyPatch, csv: Path) -> None:
    not_found = {"title": "Not Found", "status": 404}
    monkeypatch.setattr(httpx, "post", fake_post([], 404, not_found))
    result = invoke("import", "purchases", str(csv), "--url", "http://127.0.0.1:8002")
    assert result.exit_code == 1
    assert "(is http://127.0.0.1:8002 the profile service?)" in result.stderr


def test_the_rejection_note_says_what_the_summary_holds(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    """1,500 rejected rows of 1,500: it said all lines were listed (the first 1,000 are) and that
    `the other rows were imported` (there were none)."""
    rejections = [{"line": n, "reason": "amount: 'abc'"} for n in range(2, 1002)]
    summary = {**SUMMARY, "rows_read": 1500, "rejected": 1500, "rejections": rejections}
    monkeypatch.setattr(httpx, "post", fake_post([], 200, summary))
    result = invoke("import", "purchases", str(csv))
    assert result.exit_code == 3
    note = flat(result.stderr)
    assert "1500 of 1500 rows were rejected" in note
    assert "of the first 1000 are under `rejections`" in note
    assert "no row was imported" in note and "the other rows" not in note


RUNNING: dict[str, Any] = {**SUMMARY, "status": "running", "orders_total": 0, "orders_done": 0}


def follow(
    monkeypatch: pytest.MonkeyPatch, states: list[dict[str, Any] | Exception | int]
) -> list[str]:
    """The service answers 202 with the import running, then each poll with the next state
    (an exception: the service does not answer; an int: that HTTP status); the URLs polled."""
    polled: list[str] = []
    monkeypatch.setattr(httpx, "post", fake_post([], 202, RUNNING))
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)

    def get(url: str, **options: Any) -> httpx.Response:
        polled.append(url)
        state = states.pop(0)
        if isinstance(state, Exception):
            raise state
        request = httpx.Request("GET", url)
        if isinstance(state, int):
            return httpx.Response(state, json={"detail": "insufficient scope"}, request=request)
        return httpx.Response(200, json=state, request=request)

    monkeypatch.setattr(httpx, "get", get)
    return polled


def test_import_asks_to_be_answered_at_once_and_shows_the_progress(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    """The command said nothing between `uploading` and `done in`: a minute or more for a large
    file, with no way to tell progress from a hang."""
    calls: list[dict[str, Any]] = []
    polled = follow(
        monkeypatch,
        [
            {**RUNNING, "orders_total": 4000, "orders_done": 0},
            {**RUNNING, "orders_total": 4000, "orders_done": 1000},
            {**RUNNING, "orders_total": 4000, "orders_done": 1000},
            {**RUNNING, "orders_total": 4000, "orders_done": 3000},
            SUMMARY,
        ],
    )
    monkeypatch.setattr(httpx, "post", fake_post(calls, 202, RUNNING))
    result = invoke("import", "purchases", str(csv), "--url", "http://proxy.example/crm/profile")
    assert result.exit_code == 0, result.output
    assert calls[0]["headers"]["Prefer"] == "respond-async"
    # The id, under the URL given: a proxy's prefix kept.
    assert set(polled) == {f"http://proxy.example/crm/profile/v1/imports/{SUMMARY['id']}"}
    assert len(polled) == 5
    assert json.loads(result.stdout) == SUMMARY  # stdout: the final summary alone
    progress = [
        line for line in result.stderr.splitlines() if line.startswith(("reading", "written"))
    ]
    # Off a terminal a line per tenth of the orders, not per poll: 1,000 of 4,000 shown once.
    assert [line.split(",")[0] for line in progress] == [
        "reading the file ... 0s",
        "written 0 of 4",
        "written 1",
        "written 3",
    ]
    assert "written 1,000 of 4,000 orders (25%)" in progress[2]
    assert "left" in progress[2] and "left" not in progress[1]


def test_import_follows_through_a_restarting_service_and_says_where_to_look_when_it_gives_up(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    follow(monkeypatch, [httpx.ConnectError("refused"), {**SUMMARY, "status": "done"}])
    assert invoke("import", "purchases", str(csv)).exit_code == 0

    follow(monkeypatch, [httpx.ConnectError("refused")] * cli.IMPORT_POLL_FAILURES)
    result = invoke("import", "purchases", str(csv))
    assert result.exit_code == 1 and result.stdout == ""
    note = flat(result.stderr)
    assert "Error: the service does not answer (refused)" in note
    assert f"GET http://127.0.0.1:8001/v1/imports/{SUMMARY['id']}" in note
    assert "The import goes on in the service, or stopped and says why" in note

    follow(monkeypatch, [403])
    result = invoke("import", "purchases", str(csv), "--token", "write-only")
    assert result.exit_code == 1
    assert "the progress was refused (HTTP 403): insufficient scope" in flat(result.stderr)


def test_import_of_a_service_that_answers_when_done_needs_no_following(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    """A service older than `respond-async` ignores the preference and answers 200 at the end."""
    polled = follow(monkeypatch, [])
    monkeypatch.setattr(httpx, "post", fake_post([], 200, SUMMARY))
    result = invoke("import", "purchases", str(csv))
    assert result.exit_code == 0 and polled == []
    assert json.loads(result.stdout) == SUMMARY


def test_a_failed_import_that_was_followed_exits_1_with_its_error(
    monkeypatch: pytest.MonkeyPatch, csv: Path
) -> None:
    failed = {**SUMMARY, "status": "failed", "error": "the service stopped after 2000 of 4000"}
    follow(monkeypatch, [failed])
    result = invoke("import", "purchases", str(csv))
    assert result.exit_code == 1
    assert json.loads(result.stdout) == failed
    assert "Error: the import failed: the service stopped after 2000 of 4000" in result.stderr


def letter(offset: int, group: str) -> dlq.DeadLetter:
    headers = {"dlq.consumer.group": group, "dlq.origin.topic": "crm.purchases.v1"}
    return dlq.DeadLetter(0, offset, b"k", b"v", headers)


LETTERS = [letter(0, "lifecycle"), letter(1, "scoring"), letter(2, "lifecycle")]


async def read_all(*, limit: int | None = None, group: str | None = None) -> list[dlq.DeadLetter]:
    letters = [x for x in LETTERS if group is None or x.headers["dlq.consumer.group"] == group]
    return letters[:limit] if limit is not None else letters


def test_dlq_list_of_another_group_does_not_call_the_dlq_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--group profile` (or a misspelt `lifecycl`) said `the DLQ is empty` with 60 letters in it."""
    monkeypatch.setattr(dlq, "read_all", read_all)
    result = invoke("dlq", "list", "--group", "lifecycl")
    assert result.exit_code == 0 and result.stdout == ""
    assert "the DLQ is empty" not in result.stderr
    assert "holds 3 dead letter(s), none of group lifecycl" in result.stderr
    assert "lifecycle, scoring" in result.stderr


def test_dlq_list_says_when_it_shows_only_some(monkeypatch: pytest.MonkeyPatch) -> None:
    """60 letters showed as 50 (the default --limit) with nothing to tell there were more."""
    monkeypatch.setattr(dlq, "read_all", read_all)
    result = invoke("dlq", "list", "--limit", "1", "--group", "lifecycle")
    assert result.exit_code == 0
    assert [json.loads(line)["dlq_offset"] for line in result.stdout.splitlines()] == ["0:0"]
    assert "the oldest 1 of 2 dead letters: --limit 2 shows all" in result.stderr
    result = invoke("dlq", "list")
    assert len(result.stdout.splitlines()) == 3 and result.stderr == ""


def test_a_reader_that_stops_reading_is_not_a_connection_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`crm dlq list | head -1` ended with `Error: cannot connect: [Errno 32] Broken pipe`."""
    import typer

    echo = typer.echo

    def closed_stdout(message: str = "", *, err: bool = False, **options: Any) -> None:
        if not err:
            raise BrokenPipeError(32, "Broken pipe")
        echo(message, err=err, **options)

    monkeypatch.setattr(dlq, "read_all", read_all)
    monkeypatch.setattr(typer, "echo", closed_stdout)
    monkeypatch.setattr(cli, "reader_gone", lambda stream: True)  # the runner's capture is no pipe
    result = invoke("dlq", "list")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr == ""


def test_a_broken_pipe_that_is_not_stdout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a closed stdout exits quietly: a connection's broken pipe says what failed."""

    async def broken(**_: Any) -> list[Any]:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(dlq, "read_all", broken)
    monkeypatch.setattr(cli, "reader_gone", lambda stream: False)
    result = invoke("dlq", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "Broken pipe" in result.stderr


def test_a_pipe_whose_reader_closed_is_told_from_an_open_one() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as stream:
        assert not cli.reader_gone(stream)
        os.close(read_end)
        assert cli.reader_gone(stream)
