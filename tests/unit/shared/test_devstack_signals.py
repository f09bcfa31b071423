"""SIGTERM or Ctrl-C during the bench or the soak: the load's tasks stop cleanly, then `Stop`."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from shared.devstack.process import Stop, stoppable


@pytest.fixture(autouse=True)
def restored_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


async def _load_with_a_producer(closed: list[str], signum: signal.Signals) -> None:
    """Like the soak's ingest load: a task that stops on an event, waits for its sends in flight
    (tasks of their own) and then closes its producer, awaited by the main task's `finally`.
    Were every task cancelled at once, the wait for a cancelled send would end its `finally`
    before the producer is closed ("Unclosed AIOKafkaProducer")."""
    stop = asyncio.Event()

    async def send() -> None:
        await stop.wait()
        await asyncio.sleep(0.01)  # the broker's acknowledgement

    async def load() -> None:
        in_flight = asyncio.create_task(send())
        try:
            await stop.wait()
        finally:
            await in_flight
            closed.append("producer")

    task = asyncio.create_task(load())
    try:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signum)
        await asyncio.sleep(10)
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_tasks_cleanly_then_raises_stop(signum: signal.Signals) -> None:
    closed: list[str] = []
    with pytest.raises(Stop, match=signum.name):
        asyncio.run(stoppable(_load_with_a_producer(closed, signum)))
    assert closed == ["producer"]
    # Back to the synchronous handlers: a signal now raises Stop wherever the main thread is.
    with pytest.raises(Stop, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.5)  # the handler runs at the next bytecode


def test_without_a_signal_the_result_comes_back() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(stoppable(work())) == 7


def test_a_cancellation_that_is_not_a_signal_stays_a_cancellation() -> None:
    async def main() -> None:
        async def cancelled_from_inside() -> None:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(1)

        await stoppable(cancelled_from_inside())

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
