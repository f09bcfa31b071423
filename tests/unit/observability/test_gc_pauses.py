"""The garbage collector's pauses: observed per generation, and a long one logged."""

from __future__ import annotations

import gc

import pytest
import structlog

from shared.observability import metrics
from shared.observability.gc_pauses import GcPauses, watch_gc_pauses


def count(service: str, generation: int) -> float:
    for metric in metrics.GC_PAUSE.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == {
                "service": service,
                "generation": str(generation),
            }:
                return sample.value
    return 0.0


def test_each_collection_is_observed_under_its_generation() -> None:
    watcher = GcPauses("gc-test")
    gc.callbacks.append(watcher)
    try:
        before = [count("gc-test", g) for g in (0, 1, 2)]
        gc.collect(1)
        gc.collect(2)
        after = [count("gc-test", g) for g in (0, 1, 2)]
    finally:
        gc.callbacks.remove(watcher)
    assert after[0] == before[0]
    assert after[1] == before[1] + 1
    assert after[2] == before[2] + 1


def test_a_collection_long_in_cpu_is_logged_and_a_short_or_preempted_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three collections: long in CPU; short; long in wall time only (the process was preempted).
    wall = iter([10.0, 10.2, 20.0, 20.001, 30.0, 30.3])
    cpu = iter([1.0, 1.15, 2.0, 2.001, 3.0, 3.002])
    monkeypatch.setattr("shared.observability.gc_pauses.time.perf_counter", lambda: next(wall))
    monkeypatch.setattr("shared.observability.gc_pauses.time.thread_time", lambda: next(cpu))
    watcher = GcPauses("gc-test", long_pause=0.05)
    with structlog.testing.capture_logs() as logs:
        for generation in (2, 0, 1):
            watcher("start", {"generation": generation})
            watcher("stop", {"generation": generation, "collected": 7, "uncollectable": 0})
    assert [(e["event"], e["generation"], e["pause_ms"], e["cpu_ms"]) for e in logs] == [
        ("gc.long_pause", 2, 200.0, 150.0)
    ]


def test_watching_twice_installs_one_callback() -> None:
    first = watch_gc_pauses("gc-test-twice")
    try:
        assert watch_gc_pauses("gc-test-twice") is first
        assert sum(isinstance(c, GcPauses) for c in gc.callbacks) == 1
    finally:
        gc.callbacks.remove(first)
