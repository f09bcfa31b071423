"""The event loop's lag: every wake-up observed, a long one logged (at most once per period,
with how many it stands for), and a loop held by a callback measured as such."""

from __future__ import annotations

import asyncio
import time

import structlog

from shared.observability import metrics
from shared.observability.loop_lag import LoopLag


def observed(service: str) -> tuple[float, float]:
    """(count, sum) of the service's lag histogram."""
    count = total = 0.0
    for metric in metrics.EVENT_LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.labels.get("service") != service:
                continue
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


def test_long_lags_are_logged_once_per_period_with_how_many_they_stand_for() -> None:
    lag = LoopLag("lag-test-log", long_lag=0.25, warn_every=10.0)
    with structlog.testing.capture_logs() as logs:
        lag.observe(0.001, cpu=0.001, now=100.0)  # on time: counted, not logged
        lag.observe(0.30, cpu=0.29, now=101.0)  # logged
        lag.observe(0.40, cpu=0.01, now=102.0)  # within the period: kept for the next warning
        lag.observe(0.26, cpu=0.25, now=105.0)  # still within it
        lag.observe(0.27, cpu=0.02, now=111.5)  # past it: logged, standing for three
        lag.observe(-0.0001, cpu=0.0, now=112.0)  # a timer a hair early counts as no lag
    assert [
        (e["event"], e["lag_ms"], e["cpu_ms"], e["long_lags"], e["worst_ms"], e["since_s"])
        for e in logs
    ] == [
        ("event_loop.lag", 300.0, 290.0, 1, 300.0, None),
        ("event_loop.lag", 270.0, 20.0, 3, 400.0, 10),
    ]
    count, total = observed("lag-test-log")
    assert count == 6
    assert abs(total - (0.001 + 0.30 + 0.40 + 0.26 + 0.27)) < 1e-9


def test_a_callback_that_holds_the_loop_shows_as_lag_with_its_cpu() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        lag = LoopLag("lag-test-run", interval=0.01, long_lag=0.1)
        watching = asyncio.create_task(lag.run(stop))
        await asyncio.sleep(0.05)  # a few wake-ups on time
        with structlog.testing.capture_logs() as logs:
            spin_until = time.perf_counter() + 0.2
            while time.perf_counter() < spin_until:  # holds the loop, on the CPU
                pass
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(watching, timeout=1)
        [warning] = [e for e in logs if e["event"] == "event_loop.lag"]
        assert warning["lag_ms"] >= 150
        # The loop thread spent the wait on the CPU: our code held it, not the machine.
        assert warning["cpu_ms"] >= 0.3 * warning["lag_ms"]

    before, _ = observed("lag-test-run")
    asyncio.run(scenario())
    after, _ = observed("lag-test-run")
    assert after >= before + 5


def hold_the_loop(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_a_loop_blocked_for_long_is_logged_once_with_the_stack_that_holds_it() -> None:
    async def scenario() -> list[dict[str, object]]:
        stop = asyncio.Event()
        lag = LoopLag("lag-test-blocked", interval=0.01, long_lag=10.0, blocked_after=0.15)
        with structlog.testing.capture_logs() as logs:
            watching = asyncio.create_task(lag.run(stop))
            await asyncio.sleep(0.05)
            hold_the_loop(0.5)  # one stall of 0.5 s: logged once, not every 10 ms of it
            await asyncio.sleep(0.1)  # short waits after it: nothing more
            stop.set()
            await asyncio.wait_for(watching, timeout=1)
        return [e for e in logs if e["event"] == "event_loop.blocked"]

    [blocked] = asyncio.run(scenario())
    assert 150 <= blocked["blocked_ms"] < 500  # type: ignore[operator]
    stack = blocked["frames"]
    assert isinstance(stack, list)
    assert "hold_the_loop" in stack[-1] and "test_loop_lag.py" in stack[-1]
    assert any("scenario" in frame for frame in stack)
    # The development console renders it too (a `stack` key was a TypeError there, which
    # ended the watchdog thread).
    rendered = structlog.dev.ConsoleRenderer(colors=False)(None, "warning", dict(blocked))
    assert "hold_the_loop" in str(rendered)
