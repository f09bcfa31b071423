"""The soak report's drift verdicts: first vs last quarter, with per-series tolerances."""

from __future__ import annotations

from typing import Any

from soak.soak import drift, parse_metrics


def samples(series: str, values: list[float]) -> list[dict[str, Any]]:
    return [{"t": 10.0 * i, "values": {series: v}} for i, v in enumerate(values)]


def verdict(series: str, values: list[float]) -> dict[str, Any]:
    (row,) = drift(samples(series, values))
    return row


def test_memory_that_keeps_growing_is_flagged() -> None:
    row = verdict("profile.rss_mb", [100, 102, 110, 120, 130, 140, 150, 160])
    assert row["first_quarter"] == 101.0 and row["last_quarter"] == 155.0
    assert row["verdict"] == "growing"


def test_memory_settling_after_warm_up_is_stable() -> None:
    row = verdict("profile.rss_mb", [100, 118, 120, 121, 120, 121, 122, 121])
    assert row["verdict"] == "stable"


def test_a_small_absolute_change_is_not_growth_however_large_in_percent() -> None:
    # 2 -> 6 connections is +200% but within the absolute tolerance of 4.
    row = verdict("lifecycle.db_connections", [2, 2, 4, 4, 5, 5, 6, 6])
    assert row["change_pct"] == 200.0 and row["verdict"] == "stable"


def test_series_without_a_tolerance_are_informative_only() -> None:
    assert verdict("profile.recorded_per_s", [1, 1, 1, 1, 9, 9, 9, 9])["verdict"] == "info"


def test_too_few_samples_give_no_table() -> None:
    assert drift(samples("profile.rss_mb", [1, 2, 3])) == []


def test_prometheus_text_is_parsed_with_labels() -> None:
    text = (
        "# HELP crm_consumer_lag Messages behind\n"
        'crm_consumer_lag{service="profile",topic="crm.ingest.orders.v1",partition="0"} 42.0\n'
        "process_open_fds 17\n"
    )
    assert parse_metrics(text) == [
        (
            "crm_consumer_lag",
            {"service": "profile", "topic": "crm.ingest.orders.v1", "partition": "0"},
            42.0,
        ),
        ("process_open_fds", {}, 17.0),
    ]
