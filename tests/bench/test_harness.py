"""Fast checks of the benchmark harness's own logic (the benchmark itself is `make bench`)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import loadgen, report
from bench.common import percentiles, run_json
from bench.e2e import (
    EventWatch,
    Step,
    add_hop_totals,
    background_near,
    hop_means,
    latency_summary,
    steady_rate,
    tail_bursts,
)
from bench.population import (
    DAY,
    BgNbdTruth,
    GammaGammaTruth,
    generate,
    seasonality,
    simulate_summary,
)
from bench.report import behind_consumers

END = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def test_percentiles_use_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    result = percentiles(values)
    assert (result["p50"], result["p95"], result["p99"], result["max"]) == (50.0, 95.0, 99.0, 100.0)
    assert percentiles([])["p99"] is None


def test_population_is_seeded_and_ordered_in_time() -> None:
    first = generate(500, seed=5, end=END)
    again = generate(500, seed=5, end=END)
    other = generate(500, seed=6, end=END)
    assert np.array_equal(first.orders.at, again.orders.at)
    assert not np.array_equal(first.orders.at[:50], other.orders.at[:50])
    assert np.all(np.diff(first.orders.at) >= 0)
    assert first.orders.at.max() <= END
    # every customer's first order is their acquisition: all of them bought at least once
    assert len(np.unique(first.orders.customer)) == 500


def test_order_documents_satisfy_the_ingest_contract() -> None:
    population = generate(50, seed=1, end=END)
    document = population.order_document(0, "run")
    item: dict[str, Any] = document["items"][0]  # type: ignore[index]
    assert document["currency"] == "USD"
    assert str(document["occurred_at"]).endswith("Z")
    total = round(float(item["unit_price"]) * item["quantity"], 2)
    assert float(str(document["amount"])) == pytest.approx(total)


def test_seasonality_peaks_on_saturday_evenings_in_december() -> None:
    saturday_evening_dec = datetime(2025, 12, 6, 19, tzinfo=UTC).timestamp()
    tuesday_night_jun = datetime(2025, 6, 3, 3, tzinfo=UTC).timestamp()
    peak, trough = seasonality(np.array([saturday_evening_dec, tuesday_night_jun]))
    assert peak > 3 * trough
    # mean 1 over whole weeks of a year: seasonality reshapes demand, it does not add any
    hours = (
        np.arange(0, 364 * 24, dtype=np.float64) * 3600.0
        + datetime(2025, 1, 6, tzinfo=UTC).timestamp()
    )
    assert seasonality(hours).mean() == pytest.approx(1.0, abs=0.02)


def test_simulated_orders_follow_the_weekly_pattern() -> None:
    population = generate(4000, seed=11, end=END)
    weekday = ((population.orders.at // DAY).astype(np.int64) + 3) % 7
    counts = np.bincount(weekday, minlength=7)
    assert counts[5] > counts[6] * 1.3  # Saturday well above Sunday, as _WEEKLY says


def test_summary_simulation_matches_the_bgnbd_mean() -> None:
    truth = BgNbdTruth(r=0.25, alpha=4.0, a=0.8, b=2.5)
    summary = simulate_summary(20_000, seed=3, bgnbd=truth, spend=GammaGammaTruth(), max_T=52.0)
    assert np.all(summary.t_x <= summary.T)
    assert np.all(summary.t_x[summary.x == 0] == 0)
    # E[X(t)] for BG/NBD (Fader et al. 2005, eq. 9) averaged over the T drawn
    from scipy.special import hyp2f1

    r, alpha, a, b = truth.r, truth.alpha, truth.a, truth.b
    t = summary.T
    expected = (
        (a + b - 1)
        / (a - 1)
        * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))
    )
    assert summary.x.mean() == pytest.approx(expected.mean(), rel=0.05)


def test_a_step_that_did_not_drain_is_saturated() -> None:
    assert Step(
        path="ingest", offered_rps=1000, orders=10, drained=False, achieved_rps=1000
    ).saturated
    assert Step(
        path="ingest", offered_rps=1000, orders=10, drained=True, achieved_rps=700
    ).saturated
    assert not Step(
        path="ingest", offered_rps=1000, orders=10, drained=True, achieved_rps=950
    ).saturated


def test_a_step_whose_backlog_drains_slowly_is_saturated() -> None:
    def step(lag: float) -> Step:
        return Step(
            path="ingest",
            offered_rps=1000,
            orders=10_000,
            produce_s=10.0,
            drained=True,
            achieved_rps=990,
            drain_lag_s=lag,
        )

    assert not step(1.5).saturated  # the pipeline's latency, no backlog
    assert step(4.0).saturated  # a backlog of seconds when offering ended


def _bench(*, sample_every_step: bool) -> Any:
    from bench.run import QUICK, Bench

    return Bench(None, QUICK, 1, {}, sample_every_step=sample_every_step)  # type: ignore[arg-type]


def _kept_up(rate: float, kept_up: bool) -> Step:
    return Step(
        path="ingest", offered_rps=rate, orders=10, drained=True, achieved_rps=rate * kept_up
    )


async def test_the_sampled_step_repeats_the_highest_rate_that_kept_up() -> None:
    ran: list[tuple[float, bool]] = []

    async def run_step(rate: float, sample: bool) -> Step:
        ran.append((rate, sample))
        return _kept_up(rate, True)

    steps = [_kept_up(500, True), _kept_up(1000, True), _kept_up(2000, False)]
    sampled = await _bench(sample_every_step=False).sampled_step(steps, run_step)
    assert ran == [(1000, True)]
    assert sampled is not None and sampled["offered_rps"] == 1000
    # Nothing kept up: half the first rate. With --profile every step was sampled already.
    ran.clear()
    await _bench(sample_every_step=False).sampled_step([_kept_up(800, False)], run_step)
    assert ran == [(400, True)]
    ran.clear()
    assert await _bench(sample_every_step=True).sampled_step(steps, run_step) is None
    assert ran == []


def test_a_cpu_profile_without_sampling_starts_no_sampler(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from bench import profiling
    from bench.profiling import CpuProfile, cpu_seconds

    monkeypatch.setattr(profiling, "py_spy", lambda: "/bin/true")  # as if py-spy were installed
    profile = CpuProfile(os.getpid(), tmp_path / "samples.txt", sample=False)
    assert profile.process is None and profile.cpu_at_start is not None
    while (cpu_seconds(os.getpid()) or 0) - profile.cpu_at_start < 0.05:  # /proc counts in ticks
        sum(i * i for i in range(100_000))
    usage = profile.stop()
    assert usage is not None and usage["cpu_s"] is not None and usage["cpu_s"] > 0
    assert "error" not in usage and not (tmp_path / "samples.txt").exists()


def test_the_steady_rate_leaves_out_the_pipeline_latency_and_the_drain() -> None:
    # 1,000 orders offered at 200/s: each stage lags ~1.5 s behind, then drains.
    series = [
        (t / 2, *(max(0, min(1000, int((t / 2 - lag) * 200))) for lag in (0.5, 1.0, 1.5)))
        for t in range(0, 15)
    ]
    rate = steady_rate(series, 1000)
    assert rate is not None and 190 <= rate <= 210
    assert steady_rate(series[:3], 1000) is None  # never reached 90%: no steady rate


def test_latency_matches_events_per_customer() -> None:
    watch = EventWatch("unused:9092")
    watch.growth = {"a": 10.100, "b": 10.300}
    watch.scored = [("a", 9.0), ("a", 10.150), ("b", 10.500)]  # a's 9.0 predates its purchase
    summary = latency_summary({"a": 10.0, "b": 10.0, "c": 10.0}, watch)
    assert summary["stage_changed_ms"]["p50"] == pytest.approx(100.0)
    assert summary["value_scored_ms"]["max"] == pytest.approx(500.0)
    assert summary["value_scored_ms"]["p50"] == pytest.approx(150.0)
    assert (summary["missing_stage_changed"], summary["missing_value_scored"]) == (1, 1)


def test_tail_bursts_group_the_slowest_orders_by_when_they_started() -> None:
    # 200 orders, one every 0.1 s, at 50 ms, but for a stall at 5.0-5.2 s and one slow order at 15 s.
    timed = [(100.0 + i / 10, 50.0) for i in range(200)]
    timed[50], timed[51] = (105.0, 400.0), (105.1, 380.0)
    timed[150] = (115.0, 300.0)
    bursts = tail_bursts(timed, share=0.015)  # the slowest 3
    assert [(b["at_s"], b["orders"], b["worst_ms"]) for b in bursts] == [
        (5.0, 2, 400.0),
        (15.0, 1, 300.0),
    ]
    assert bursts[0]["span_s"] == pytest.approx(0.1)
    assert bursts[0]["epoch"] == pytest.approx(105.0)
    assert tail_bursts([]) == []
    first_hop = {105.0: 350.0, 105.1: 40.0}  # the stall was upstream; 115.0's hop unknown
    with_hops = tail_bursts(timed, share=0.015, first_hop=first_hop.get)
    assert [b.get("first_hop_worst_ms") for b in with_hops] == [350.0, None]


def test_a_burst_names_the_background_work_that_overlapped_it() -> None:
    # Orders started at 100.0-100.4 s, the worst 600 ms late: the window is 99.5-101.0 s.
    burst = {"epoch": 100.0, "span_s": 0.4, "worst_ms": 600.0}
    quiet = {"epoch": 200.0, "span_s": 0.0, "worst_ms": 300.0}
    seen = [
        (99.0, "autovacuum crm_scoring: VACUUM public.customer_values"),  # ended before
        (99.75, "crm_lifecycle: VACUUM outbox"),
        (100.5, "crm_lifecycle: VACUUM outbox"),  # the same, sampled again: named once
        (101.25, "autovacuum crm_profile: ANALYZE public.purchases"),  # after the window
    ]
    spans = [
        (100.75, 103.0, "lifecycle schedule sweep moving 900 in 1 chunks"),
        (150.0, 151.0, "lifecycle schedule sweep moving 0 in 0 chunks"),
    ]
    background_near([burst, quiet], seen, spans)
    assert burst["with"] == [
        "crm_lifecycle: VACUUM outbox (-0.2 s)",
        "lifecycle schedule sweep moving 900 in 1 chunks (+0.8 s)",
    ]
    assert quiet["with"] == []
    printed = report._burst({**burst, "at_s": 12.0, "orders": 9, "first_hop_worst_ms": 80.0})
    assert printed == (
        "at 12 s (9 over 0.4 s, 600 ms, first hop 80 ms; with crm_lifecycle: VACUUM outbox "
        "(-0.2 s), lifecycle schedule sweep moving 900 in 1 chunks (+0.8 s))"
    )
    assert report._burst({**quiet, "at_s": 3.0, "orders": 1}).endswith("; nothing beside it)")


def test_hop_means_are_of_what_was_observed_between_the_scrapes() -> None:
    before = {
        ("lifecycle", "lifecycle"): {"batch_ms": (10.0, 0.5), "oldest_event_age_ms": (10.0, 2.0)},
        ("lifecycle", "relay"): {"relay_ms": (4.0, 0.1)},
    }
    after = {
        ("lifecycle", "lifecycle"): {"batch_ms": (14.0, 0.7), "oldest_event_age_ms": (14.0, 2.4)},
        ("lifecycle", "relay"): {"relay_ms": (4.0, 0.1)},  # nothing relayed meanwhile
        ("profile", "profile-ingest"): {"batch_ms": (2.0, 0.06)},  # new since the first scrape
    }
    assert hop_means(before, after) == {
        "lifecycle/lifecycle": {"batch_ms": 50.0, "batches": 4.0, "oldest_event_age_ms": 100.0},
        "profile/profile-ingest": {"batch_ms": 30.0, "batches": 2.0},
    }


def test_hop_figures_are_read_from_the_metrics_text_with_the_event_loops_late_wakeups() -> None:
    def exposition(lags: list[float], batches: list[float]) -> str:
        registry = CollectorRegistry()
        loop = Histogram(
            "crm_event_loop_lag_seconds",
            "",
            ["service"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25),
        )
        batch = Histogram("crm_consumer_batch_seconds", "", ["service", "group"], registry=registry)
        for lag in lags:
            loop.labels("lifecycle").observe(lag)
        for seconds in batches:
            batch.labels("lifecycle", "lifecycle").observe(seconds)
        return generate_latest(registry).decode()

    before: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    add_hop_totals(before, "lifecycle", exposition([0.001] * 8, [0.02]))
    after: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    # since the first scrape: 10 more wake-ups, 2 of them 50 ms late or more; two batches
    add_hop_totals(
        after, "lifecycle", exposition([0.001] * 14 + [0.002] * 2 + [0.07, 0.3], [0.02, 0.03, 0.05])
    )
    assert hop_means(before, after) == {
        "lifecycle/lifecycle": {"batch_ms": 40.0, "batches": 2.0},
        "lifecycle/loop": {"loop_lag_ms": 38.0, "loop_late_pct": 20.0, "loop_long_pct": 10.0},
    }


def test_a_latency_run_over_a_consumers_capacity_says_so() -> None:
    hops = {
        "lifecycle/lifecycle": {"batch_ms": 105.3, "batches": 179.0, "oldest_event_age_ms": 1201.1},
        "profile/profile": {"batch_ms": 89.0, "batches": 172.0, "oldest_event_age_ms": 307.1},
        "profile/relay": {"relay_ms": 102.8},
    }
    assert behind_consumers(hops) == [("lifecycle/lifecycle", 1201.1)]
    line = report.latency_line({"hops": hops, "offered_rps": 1119})
    assert "NOT AT HALF LOAD: over the capacity of lifecycle/lifecycle" in line
    hops["lifecycle/lifecycle"]["oldest_event_age_ms"] = 164.1
    assert behind_consumers(hops) == []
    assert "NOT AT HALF LOAD" not in report.latency_line({"hops": hops, "offered_rps": 986})


def test_latency_at_a_fixed_rate_is_shown_without_the_half_load_verdict() -> None:
    run = {"stage_changed_ms": {"p50": 120.0, "p99": 400.0}, "offered_rps": 900}
    http = {"stage_changed_ms": {"p50": 20.0, "p99": 50.0}, "offered_rps": 100}
    half = {"latency": {"ingest": run, "http": http, "ingest_rate_basis": "half_saturation"}}
    fixed = {"latency": {**half["latency"], "ingest_rate_basis": "fixed"}}

    def stage_changed(results: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        return {r[0]: r[1:] for r in report.rows(results) if "stage_changed" in r[0]}

    assert stage_changed(half) == {
        "latency produce -> stage_changed @50% (p50 / p99)": (
            "120 / 400 ms",
            "at 900/s",
            "p99 <= 250 ms",
            "NOT MET",
        ),
        "latency HTTP ack -> stage_changed @50% (p50 / p99)": (
            "20 / 50 ms",
            "at 100/s",
            "p99 <= 250 ms",
            "MET",
        ),
    }
    shown = stage_changed(fixed)
    assert shown["latency produce -> stage_changed @fixed rate (p50 / p99)"][-1] == ""
    assert shown["latency HTTP ack -> stage_changed @50% (p50 / p99)"][-1] == "MET"


async def _serve(responses: list[bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_loadgen_reads_sized_and_chunked_responses_on_one_connection() -> None:
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    empty = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    server, port = await _serve([sized, chunked, empty])
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = loadgen.render("127.0.0.1", port, "GET", "/x", None, {})
        statuses = [await loadgen.exchange(reader, writer, request) for _ in range(3)]
        writer.close()
    assert statuses == [200, 201, 404]


def test_loadgen_refuses_other_hosts() -> None:
    with pytest.raises(SystemExit):
        asyncio.run(
            loadgen.run({"host": "example.com", "port": 80, "requests": "/dev/null", "duration": 1})
        )


async def test_a_helper_result_larger_than_a_pipe_arrives_whole(tmp_path: Any) -> None:
    """The HTTP latency step's acknowledgements (~130 KB) were cut at 64 KiB after uvloop ran:
    `json.loads` failed and the whole latency section with it."""
    script = tmp_path / "helper.py"
    script.write_text(
        "import asyncio, sys, uvloop\n"
        f"sys.path.insert(0, {str(loadgen.__file__.rsplit('/', 1)[0])!r})\n"
        "from loadgen import write_json_stdout\n"
        "uvloop.install()\n"
        "asyncio.run(asyncio.sleep(0))\n"
        "write_json_stdout({'acks': [[i, 1.5] for i in range(40000)]})\n"
    )
    result = await run_json([sys.executable, str(script)], timeout=60)
    assert len(result["acks"]) == 40000 and result["acks"][-1] == [39999, 1.5]
