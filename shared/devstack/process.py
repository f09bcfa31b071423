"""Child processes that cannot outlive us: own process group, parent-death signal, log file.

Every server the devstack starts (PostgreSQL, the Kafka JVM, Tansu) is a direct child of
the Python process that calls ``start()``:

- it runs in its own process group, so Ctrl-C in a terminal reaches only our supervisor,
  which then stops the children in order;
- on Linux it gets ``prctl(PR_SET_PDEATHSIG, <signal>)`` in ``preexec_fn``, so the kernel
  signals it when we die, even by ``kill -9``. The kernel ties this to the *thread* that
  forked the child, so a ``start()`` called off the main thread (``asyncio.to_thread``)
  forks from one long-lived spawner thread instead of the short-lived caller;
- its stdout and stderr go to a log file, whose tail is put into every error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


class DevstackError(RuntimeError):
    """A development server could not be prepared, started or stopped."""


class Stop(KeyboardInterrupt):
    """SIGTERM or Ctrl-C as an exception: it leaves an event loop at once, and the `finally`
    blocks on its way stop what was started."""


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGINT raise `Stop` (in the main thread; call it from there)."""

    def on_signal(signum: int, _: Any) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


@contextlib.asynccontextmanager
async def cancel_on_signals() -> AsyncIterator[None]:
    """Inside a running loop: SIGTERM or Ctrl-C cancel the task that entered, so that the tasks
    it started are stopped by its `finally` blocks like on any cancellation (their producers and
    connections closed), and then `Stop` is raised from here.

    `Stop` raised by a signal handler lands in whichever task runs at that moment: the event
    loop then cancels every task at once, and a `finally` that waits for another task is cut
    short. On the way out the handlers of `stop_on_signals` are back; further signals while the
    cancelled task cleans up are ignored (a second Ctrl-C must not cut that short either)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[str] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signal.Signals(signum).name)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    except asyncio.CancelledError:
        if received:
            raise Stop(received[0]) from None
        raise
    else:
        if received:  # after the body's last wait: its cancellation has not been delivered
            task.uncancel()
            raise Stop(received[0])
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        stop_on_signals()


async def stoppable(work: Awaitable[T]) -> T:
    """`work` under `cancel_on_signals`: `asyncio.run(stoppable(main()))`."""
    async with cancel_on_signals():
        return await work


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """While stopping: another Ctrl-C or SIGTERM must not cut the clean-up short. After it,
    the signals do what they do by default."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            # Reading the last 64 KiB is enough for 40 lines and bounded for huge logs.
            log.seek(max(0, log.tell() - 65536))
            text = log.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_blocking(coroutine_factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run a coroutine to completion from synchronous code, on a private event loop.

    A separate thread keeps this usable while the caller's thread has a running loop
    (e.g. inside pytest-asyncio) and leaves that thread's current event loop untouched.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def runner() -> None:
        try:
            outcome.append(asyncio.run(asyncio.wait_for(coroutine_factory(), timeout)))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=runner, name="devstack-blocking", daemon=True)
    thread.start()
    # The coroutine is bounded by wait_for; the margin covers loop start-up and teardown.
    thread.join(timeout + 10)
    if thread.is_alive():
        raise DevstackError(f"blocking call did not finish within {timeout + 10:.0f}s")
    if failure:
        raise failure[0]
    return outcome[0]


def _parent_death_hook(death_signal: int) -> Callable[[], None] | None:
    """A preexec_fn that asks the kernel to send death_signal to the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), death_signal)

    return hook


def _in_long_lived_thread(spawn: Callable[[], T]) -> T:
    """Run spawn() in the main thread or in the process-wide spawner thread."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return spawn()
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devstack-spawner")
    return _spawner.submit(spawn).result()


class ManagedProcess:
    """One long-running child process, its log file and how to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        uid: int | None = None,
        gid: int | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.uid = uid
        self.gid = gid
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.is_running():
            raise DevstackError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._popen = _in_long_lived_thread(
                    lambda: subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=self.env,
                        cwd=self.cwd,
                        user=self.uid,
                        group=self.gid,
                        extra_groups=[] if self.uid is not None else None,
                        process_group=0,
                        preexec_fn=_parent_death_hook(self.death_signal),
                    )
                )
            except OSError as error:
                raise DevstackError(
                    f"could not run {self.name} ({self.argv[0]}): {error}"
                ) from error

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def fail(self, message: str) -> DevstackError:
        """An error carrying the tail of the process log, to raise at the caller."""
        return DevstackError(
            f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    def wait_until(
        self, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2
    ) -> None:
        """Poll ready() until it is true; fail early if the process exits, late on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exit_code()
            if code is not None:
                raise self.fail(f"exited with code {code} before it was {what}")
            if ready():
                return
            if time.monotonic() >= deadline:
                raise self.fail(f"not {what} after {timeout:.0f}s")
            time.sleep(interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Send the stop signal, wait, then SIGKILL the whole process group."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(self.stop_signal)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its pid still names our process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)
