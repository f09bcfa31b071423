"""bench/results.json -> bench/results.png (matplotlib, Agg). `python chart.py RESULTS PNG`.

A plain script (no import of our code): it may run in the helper venv that has matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def throughput(ax: Any, results: dict[str, Any]) -> None:
    for path, colour in (("ingest", "tab:blue"), ("http", "tab:orange")):
        steps = get(results, path, "steps") or []
        if not steps:
            continue
        offered = [s["offered_rps"] for s in steps]
        achieved = [s["achieved_rps"] for s in steps]
        ax.plot(offered, achieved, "o-", color=colour, label=f"{path}: sustained (all projections)")
        for stage, style in (("lifecycle", ":"), ("scoring", "--")):
            ax.plot(
                offered,
                [s["stage_rps"].get(stage, 0) for s in steps],
                style,
                color=colour,
                alpha=0.6,
                label=f"{path}: {stage} done",
            )
    top = max(
        [1.0]
        + [s["offered_rps"] for p in ("ingest", "http") for s in get(results, p, "steps") or []]
    )
    ax.plot([1, top], [1, top], color="grey", lw=0.8, label="offered = sustained")
    for key, colour, label in (
        ("raw", "tab:green", "raw aiokafka"),
        ("batched", "tab:red", "batched-consumer baseline"),
    ):
        value = get(results, "baselines", key, "rps")
        if value:
            ax.axhline(value, color=colour, lw=1, ls="-.", label=f"{label} {value:,.0f}/s")
    ax.axhline(5000, color="black", lw=1, ls="--", label="target 5,000/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered purchases/s")
    ax.set_ylabel("sustained purchases/s (reconciled)")
    ax.set_title("End-to-end throughput until saturation")
    ax.legend(fontsize=6, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)


def latency(ax: Any, results: dict[str, Any]) -> None:
    labels, p50, p95, p99 = [], [], [], []
    for path, start in (
        ("ingest", "produce"),
        ("ingest_new_customers", "produce (new\ncustomers only)"),
        ("http", "HTTP ack"),
    ):
        for key, event in (
            ("stage_changed_ms", "stage_changed"),
            ("value_scored_ms", "value.scored"),
        ):
            p = get(results, "latency", path, key) or {}
            if p.get("p50") is None:
                continue
            labels.append(f"{start}\n-> {event}")
            p50.append(p["p50"])
            p95.append(p["p95"])
            p99.append(p["p99"])
    if labels:
        xs = range(len(labels))
        width = 0.27
        ax.bar([x - width for x in xs], p50, width, label="p50")
        ax.bar(list(xs), p95, width, label="p95")
        ax.bar([x + width for x in xs], p99, width, label="p99")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7)
    ax.axhline(250, color="black", ls="--", lw=1, label="target p99 250 ms")
    ax.set_ylabel("ms")
    ax.set_title("End-to-end latency at 50% of saturation")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)


def ratios(ax: Any, results: dict[str, Any]) -> None:
    bars: list[tuple[str, float, float | None]] = []
    ingest, batched = (
        get(results, "ingest", "saturation_rps"),
        get(results, "baselines", "batched", "rps"),
    )
    if ingest and batched:
        bars.append(("e2e ingest\n/ batched", ingest / batched, 0.4))
    ratio = get(results, "profile", "view_360", "ratio_to_baseline")
    if ratio:
        bars.append(("360 / FastAPI\n+asyncpg", ratio, 0.7))
    ratio = get(results, "complaints", "intake", "ratio_to_baseline")
    if ratio:
        bars.append(("complaint intake\n/ insert+outbox", ratio, None))
    # Consumers against the batched-consumer baseline: raw consumption is in the table.
    for key, label in (
        ("profile_ingest", "profile ingest"),
        ("lifecycle", "lifecycle"),
        ("scoring", "scoring"),
    ):
        rps = get(results, "consumers", key, "rps")
        if batched and rps:
            bars.append((f"{label} consumer\n/ batched", rps / batched, None))
    if bars:
        xs = range(len(bars))
        ax.bar(list(xs), [b[1] * 100 for b in bars], color="tab:purple")
        for x, (_, value, target) in zip(xs, bars, strict=True):
            ax.text(x, value * 100, f"{value:.0%}", ha="center", va="bottom", fontsize=7)
            if target is not None:
                ax.plot([x - 0.4, x + 0.4], [target * 100] * 2, color="black", ls="--", lw=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([b[0] for b in bars], fontsize=6)
    ax.set_ylabel("% of baseline (dashed: target)")
    ax.set_title("Against baselines measured in the same run")
    ax.grid(True, axis="y", alpha=0.3)


def durations(ax: Any, results: dict[str, Any]) -> None:
    labels, ours, theirs = [], [], []
    for size, row in (get(results, "scoring", "models", "sizes") or {}).items():
        labels.append(f"fit {int(size) // 1000}k")
        ours.append(row.get("bgnbd_fit_s", 0) + row.get("gamma_gamma_fit_s", 0))
        lt = row.get("lifetimes") or {}
        theirs.append((lt.get("bgnbd_fit_s") or 0) + (lt.get("gamma_gamma_fit_s") or 0))
        labels.append(f"refit+score {int(size) // 1000}k")
        ours.append(row.get("refit_and_rescore_s", 0))
        theirs.append(0)
    for label, path, base in (
        ("import", ("profile", "import", "finished_s"), None),
        ("SLA eval", ("complaints", "sla", "evaluate_s"), ("complaints", "sla", "baseline_scan_s")),
        ("lifecycle sweep", ("lifecycle", "evaluate_s"), ("lifecycle", "baseline_scan_s")),
        (
            "recompute",
            ("scoring", "recompute", "recompute_s"),
            ("scoring", "recompute", "baseline_scan_s"),
        ),
    ):
        value = get(results, *path)
        if value is not None:
            labels.append(label)
            ours.append(value)
            theirs.append(get(results, *base) or 0 if base else 0)
    if labels:
        xs = range(len(labels))
        width = 0.4
        ax.bar([x - width / 2 for x in xs], ours, width, label="ours")
        ax.bar([x + width / 2 for x in xs], theirs, width, label="lifetimes / plain SQL scan")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=6, rotation=20)
    ax.axhline(60, color="black", ls="--", lw=1, label="60 s")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylabel("seconds")
    ax.set_title("Batch work: ours vs reference")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    figure, axes = plt.subplots(2, 2, figsize=(14, 10))
    throughput(axes[0][0], results)
    latency(axes[0][1], results)
    ratios(axes[1][0], results)
    durations(axes[1][1], results)
    kafka = get(results, "infrastructure", "kafka")
    figure.suptitle(
        f"crm bench {results.get('date')} commit {str(results.get('commit'))[:10]} "
        f"({results.get('mode')}, kafka={kafka}, {get(results, 'machine', 'cpus')} CPUs)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
