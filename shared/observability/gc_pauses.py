"""Pauses of the cyclic garbage collector: a histogram per generation (wall time: what the
process's tasks waited), and a warning when a collection itself took long (its CPU time, so that
a process merely preempted on a busy machine does not blame the collector). While it runs, every
task of the process waits (consumers, relay, HTTP), so a long collection shows up as a burst of
slow events; this names it."""

from __future__ import annotations

import gc
import time
from typing import Any

import structlog

from shared.observability import metrics

log = structlog.get_logger("gc")

LONG_PAUSE_SECONDS = 0.05


class GcPauses:
    def __init__(self, service: str, long_pause: float = LONG_PAUSE_SECONDS) -> None:
        self.service = service
        self.long_pause = long_pause
        self._started: float | None = None
        self._cpu_started = 0.0
        self._children = {g: metrics.GC_PAUSE.labels(service, str(g)) for g in (0, 1, 2)}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
            return
        if self._started is None:
            return
        pause = time.perf_counter() - self._started
        cpu = time.thread_time() - self._cpu_started
        self._started = None
        generation = info.get("generation", 2)
        self._children[generation].observe(pause)
        if cpu >= self.long_pause:
            log.warning(
                "gc.long_pause",
                generation=generation,
                pause_ms=round(pause * 1000, 1),
                cpu_ms=round(cpu * 1000, 1),
                collected=info.get("collected"),
                uncollectable=info.get("uncollectable"),
                frozen=gc.get_freeze_count(),
            )


def watch_gc_pauses(service: str) -> GcPauses:
    """Install the callback (once per process) and return it."""
    for callback in gc.callbacks:
        if isinstance(callback, GcPauses):
            return callback
    watcher = GcPauses(service)
    gc.callbacks.append(watcher)
    return watcher
