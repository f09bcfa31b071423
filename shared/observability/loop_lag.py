"""How late the event loop runs what is due: a timer asks to wake every `interval` and the
overshoot is the lag every task of the process saw at that moment (a consumer's next batch, the
relay's publish, an HTTP request). A histogram per service, and a warning when one wake-up came
long after it was due, with the loop thread's CPU time over that wait: CPU near the wait means
our own code held the loop (a long callback between two awaits); CPU near zero means the
process waited for a core or on a blocking call.

What held it: a watchdog thread looks at the loop's last wake-up, and when the loop has not
woken for `blocked_after` (1 s), it logs the loop thread's stack at that moment
(`event_loop.blocked`, once per stall): the code that holds the loop, or the loop's own poll
when the process only waited for a core.

One wake-up per `interval` (50 ms) costs a few microseconds: about 0.01% of a core, and as much
again for the watchdog.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback

import structlog

from shared.observability import metrics

log = structlog.get_logger("event_loop")

INTERVAL_SECONDS = 0.05
LONG_LAG_SECONDS = 0.25
# A loop that stays blocked would log every wake-up: at most one warning per this many seconds,
# with how many long lags it stands for.
WARN_EVERY_SECONDS = 10.0
BLOCKED_AFTER_SECONDS = 1.0
STACK_FRAMES = 12  # the innermost ones


class LoopLag:
    def __init__(
        self,
        service: str,
        *,
        interval: float = INTERVAL_SECONDS,
        long_lag: float = LONG_LAG_SECONDS,
        warn_every: float = WARN_EVERY_SECONDS,
        blocked_after: float = BLOCKED_AFTER_SECONDS,
    ) -> None:
        self.interval = interval
        self.long_lag = long_lag
        self.warn_every = warn_every
        self.blocked_after = blocked_after
        self._woke = time.monotonic()  # the loop's last wake-up
        self._reported = self._woke  # the wake-up after which a stall was last logged
        self._loop_thread: int | None = None
        self._histogram = metrics.EVENT_LOOP_LAG.labels(service)
        self._last_warning = float("-inf")
        self._unreported = 0
        self._worst = 0.0

    def observe(self, lag: float, cpu: float, now: float) -> None:
        """One wake-up `lag` seconds late, the loop thread having used `cpu` seconds since the
        previous one."""
        lag = max(lag, 0.0)
        self._histogram.observe(lag)
        if lag < self.long_lag:
            return
        self._unreported += 1
        self._worst = max(self._worst, lag)
        if now - self._last_warning < self.warn_every:
            return
        log.warning(
            "event_loop.lag",
            lag_ms=round(lag * 1000, 1),
            cpu_ms=round(cpu * 1000, 1),
            long_lags=self._unreported,
            worst_ms=round(self._worst * 1000, 1),
            since_s=None
            if self._last_warning == float("-inf")
            else round(now - self._last_warning),
        )
        self._last_warning, self._unreported, self._worst = now, 0, 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self._loop_thread, self._woke = threading.get_ident(), time.monotonic()
        done = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(done,), name="loop-lag-watchdog", daemon=True
        )
        watchdog.start()
        try:
            while not stop.is_set():
                started, cpu_started = time.perf_counter(), time.thread_time()
                await asyncio.sleep(self.interval)
                now = time.perf_counter()
                self._woke = time.monotonic()
                self.observe(now - started - self.interval, time.thread_time() - cpu_started, now)
        finally:
            done.set()

    def _watch(self, done: threading.Event) -> None:
        while not done.wait(self.interval):
            try:
                self.check_blocked(time.monotonic())
            except Exception:  # a failing log line must not end the watch for the process
                log.exception("event_loop.watchdog_failed")

    def check_blocked(self, now: float) -> None:
        """Log the loop thread's stack if the loop has not woken for `blocked_after` (once per
        stall)."""
        woke = self._woke
        if now - woke < self.blocked_after or self._reported == woke:
            return
        self._reported = woke
        frame = sys._current_frames().get(self._loop_thread or -1)
        frames = [
            f"{f.filename}:{f.lineno} {f.name}"
            for f in (traceback.extract_stack(frame)[-STACK_FRAMES:] if frame else [])
        ]
        # Not `stack`: structlog's console renderer takes that key for stack_info's text.
        log.warning("event_loop.blocked", blocked_ms=round((now - woke) * 1000), frames=frames)
