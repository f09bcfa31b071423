"""Servers started by the devstack never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.devstack import DevstackError, free_port
from shared.devstack.process import ManagedProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

SUPERVISOR = """
import sys, time
from pathlib import Path
from shared.devstack import EmbeddedPostgres, TansuBroker, free_port
work = Path(sys.argv[1])
postgres = EmbeddedPostgres(work / "postgres", free_port(), durable=False)
postgres.start()
broker = TansuBroker(work, free_port())
broker.start()
print(postgres._process.pid, broker._process.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_when_their_parent_is_killed(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stdout is not None
        children = [int(pid) for pid in supervisor.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
    finally:
        supervisor.kill()
        supervisor.wait(10)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)]


def test_stop_escalates_to_sigkill_when_the_stop_signal_is_ignored(tmp_path: Path) -> None:
    stubborn = ManagedProcess(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring ' + 'SIGTERM', flush=True); time.sleep(60)",
        ],
        tmp_path / "stubborn.log",
    )
    stubborn.start()
    # The marker is built at run time, so the argv echoed into the log does not match it.
    stubborn.wait_until(
        lambda: "ignoring SIGTERM" in (tmp_path / "stubborn.log").read_text(),
        timeout=10,
        what="ignoring SIGTERM",
    )
    started = time.monotonic()
    stubborn.stop(timeout=1)
    assert not stubborn.is_running()
    assert stubborn.exit_code() == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_wait_until_times_out_with_the_log_tail(tmp_path: Path) -> None:
    sleeper = ManagedProcess(
        "sleeper",
        [
            sys.executable,
            "-c",
            "print('still warming up', flush=True); import time; time.sleep(60)",
        ],
        tmp_path / "sleeper.log",
    )
    sleeper.start()
    try:
        with pytest.raises(DevstackError) as failure:
            sleeper.wait_until(lambda: False, timeout=1, what="ready")
    finally:
        sleeper.stop(timeout=5)
    assert "not ready after 1s" in str(failure.value)
    assert "still warming up" in str(failure.value)


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536
