"""The printed table (figures, baselines, ratios, targets) and the chart (via chart.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO

HELPER_PYTHON = REPO / ".cache" / "bench-venv" / "bin" / "python"


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "--"
    return f"{value:,.{digits}f}{unit}"


def _pct(value: Any) -> str:
    return "--" if value is None else f"{value:.0%}"


def latency_line(summary: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("stage_changed_ms", "stage_changed"),
        ("value_scored_ms", "value.scored"),
        ("purchase_recorded_ms", "first hop, purchase.recorded"),
    ):
        p = summary.get(key) or {}
        parts.append(
            f"{label} p50/p95/p99 {_num(p.get('p50'))}/{_num(p.get('p95'))}/{_num(p.get('p99'))} ms"
            f" (n={p.get('n', 0)})"
        )
    missing = (summary.get("missing_stage_changed"), summary.get("missing_value_scored"))
    line = (
        "; ".join(parts)
        + f" at {_num(summary.get('offered_rps'))}/s; missing {missing[0]}/{missing[1]}"
    )
    share = summary.get("autovacuum_share")
    if share:
        tables = ", ".join(summary.get("autovacuum_tables") or [])
        line += f"; autovacuum at work {share:.0%} of the time ({tables})"
    for kind, bursts in (summary.get("tail_bursts") or {}).items():
        if bursts:
            line += f"\n    slowest 1% of {kind}: {sum(b['orders'] for b in bursts)} orders in " + (
                f"{len(bursts)} bursts; worst: " + ", ".join(_burst(b) for b in bursts[:4])
            )
    hops = summary.get("hops")
    if hops:
        line += "\n    per hop, means while offered: " + "; ".join(
            f"{where} " + ", ".join(f"{k.removesuffix('_ms')} {v:g}" for k, v in figures.items())
            for where, figures in sorted(hops.items())
        )
        if behind := behind_consumers(hops):
            line += "\n    NOT AT HALF LOAD: over the capacity of " + ", ".join(
                f"{where} (its batches started {_num(age)} ms after their oldest event)"
                for where, age in behind
            )
    return line


# A consumer whose batches start this long after their oldest event, on average, is not
# keeping up with the offered rate (read-model consumers linger 200 ms by design).
BEHIND_MS = 1_000.0


def behind_consumers(hops: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """The consumers that fell behind during a latency run, with their mean oldest event age:
    that run's latencies are of a backlog, not of the rate it was meant to measure."""
    return [
        (where, figures["oldest_event_age_ms"])
        for where, figures in sorted(hops.items())
        if figures.get("oldest_event_age_ms", 0.0) > BEHIND_MS
    ]


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("MET" if ok else "NOT MET")


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, baseline / comparison, target, verdict)."""
    out: list[tuple[str, str, str, str, str]] = []
    raw = _get(results, "baselines", "raw", "rps")
    batched = _get(results, "baselines", "batched", "rps")
    ingest = _get(results, "ingest", "saturation_rps")
    http = _get(results, "http", "saturation_rps")
    out.append(("baseline: raw aiokafka produce->consume", _num(raw, "/s"), "", "", ""))
    out.append(("baseline: batched inbox+upsert+outbox", _num(batched, "/s"), "", "", ""))
    out.append(
        (
            "e2e ingest -> profile -> lifecycle+scoring",
            _num(ingest, "/s"),
            f"{_pct(ingest / batched if ingest and batched else None)} of batched",
            ">= 5,000/s, >= 40%",
            _verdict(
                None
                if ingest is None
                else ingest >= 5000 and bool(batched) and ingest / batched >= 0.4
            ),
        )
    )
    out.append(("e2e HTTP POST purchases -> lifecycle+scoring", _num(http, "/s"), "", "", ""))
    for path, label in (
        ("ingest", "produce"),
        ("ingest_new_customers", "produce, all new customers,"),
        ("http", "HTTP ack"),
    ):
        for key, event in (
            ("stage_changed_ms", "stage_changed"),
            ("value_scored_ms", "value.scored"),
        ):
            if _get(results, "latency", path) is None:
                continue
            p99 = _get(results, "latency", path, key, "p99")
            p50 = _get(results, "latency", path, key, "p50")
            # --latency-rate: a load chosen to compare runs, not half load: no verdict.
            fixed = path != "http" and _get(results, "latency", "ingest_rate_basis") == "fixed"
            out.append(
                (
                    f"latency {label} -> {event} {'@fixed rate' if fixed else '@50%'} (p50 / p99)",
                    f"{_num(p50)} / {_num(p99)} ms",
                    f"at {_num(_get(results, 'latency', path, 'offered_rps'))}/s",
                    "p99 <= 250 ms",
                    _verdict(None if fixed or p99 is None else p99 <= 250),
                )
            )
    view = _get(results, "profile", "view_360")
    if isinstance(view, dict):
        ratio = view.get("ratio_to_baseline")
        p99 = _get(view, "half_peak", "p99_ms")
        out.append(
            (
                "profile GET 360 peak, 32 client connections",
                _num(_get(view, "peak", "rps"), "/s"),
                f"{_pct(ratio)} of {_num(_get(view, 'baseline_peak', 'rps'), '/s')}",
                ">= 70%",
                _verdict(None if ratio is None else ratio >= 0.7),
            )
        )
        out.append(
            (
                "profile GET 360 peak, 8 client connections",
                _num(_get(view, "peak_8_connections", "rps"), "/s"),
                f"{_pct(view.get('ratio_to_baseline_8_connections'))} of "
                f"{_num(_get(view, 'baseline_peak_8_connections', 'rps'), '/s')}",
                "",
                "",
            )
        )
        out.append(
            (
                "profile GET 360 p99 @ half peak",
                _num(p99, " ms", 1),
                f"baseline {_num(_get(view, 'baseline_half_peak', 'p99_ms'), ' ms', 1)}",
                "< 50 ms",
                _verdict(None if p99 is None else p99 < 50),
            )
        )
    imported = _get(results, "profile", "import")
    if isinstance(imported, dict) and "finished_s" in imported:
        out.append(
            (
                f"profile CSV import {imported.get('rows', 0):,} rows",
                _num(imported.get("finished_s"), " s", 1),
                f"downstream {_num(imported.get('downstream_reflected_s'), ' s', 1)}",
                "well under 60 s",
                _verdict(
                    imported.get("finished_s") is not None
                    and imported["finished_s"] < 60
                    and imported.get("status") in (200, 201, 202)
                ),
            )
        )
    consumers = results.get("consumers")
    if isinstance(consumers, dict) and "raw_consume" in consumers:
        raw_consume = _get(consumers, "raw_consume", "rps")
        for service, key in (
            ("profile ingest", "profile_ingest"),
            ("lifecycle", "lifecycle"),
            ("scoring", "scoring"),
        ):
            rps = _get(consumers, key, "rps")
            out.append(
                (
                    f"{service} consumer alone (backlog drain)",
                    _num(rps, "/s"),
                    f"{_pct(rps / raw_consume if rps and raw_consume else None)} of raw consume, "
                    f"{_pct(rps / batched if rps and batched else None)} of batched",
                    "",
                    "",
                )
            )
    intake = _get(results, "complaints", "intake")
    if isinstance(intake, dict):
        out.append(
            (
                "complaints intake peak (1 worker)",
                _num(_get(intake, "peak", "rps"), "/s"),
                f"{_pct(intake.get('ratio_to_baseline'))} of {_num(_get(intake, 'baseline_peak', 'rps'), '/s')}",
                "",
                "",
            )
        )
    sla = _get(results, "complaints", "sla")
    if isinstance(sla, dict) and "evaluate_s" in sla:
        out.append(
            (
                f"complaints SLA backlog, {sla['open_complaints']:,} open",
                _num(sla["evaluate_s"], " s", 1),
                f"scan {_num(sla['baseline_scan_s'], ' s', 2)} "
                f"(x{_num(sla.get('ratio_to_baseline_scan'), '', 1)}); "
                f"{sla['overdue']:,} overdue, {_num(sla.get('escalations_per_s'), '/s')} escalated",
                "",
                "",
            )
        )
        if sla.get("interval_evaluate_s") is not None:
            out.append(
                (
                    "complaints SLA check, one interval later",
                    _num(sla["interval_evaluate_s"], " s", 2),
                    f"x{_num(sla.get('interval_ratio_to_baseline_scan'), '', 1)} of the scan",
                    "",
                    "",
                )
            )
    sweep = results.get("lifecycle")
    if isinstance(sweep, dict) and "evaluate_s" in sweep:
        out.append(
            (
                f"lifecycle sweep, {sweep['customers']:,} customers",
                _num(sweep["evaluate_s"], " s", 1),
                f"scan {_num(sweep['baseline_scan_s'], ' s', 2)}",
                "",
                "",
            )
        )
    sizes = _get(results, "scoring", "models", "sizes") or {}
    for size, row in sizes.items():
        theirs = row.get("lifetimes") or {}
        agreement = row.get("agreement") or {}
        worst = max((agreement.get("bgnbd_relative_difference") or {"-": float("nan")}).values())
        their_fit = (
            (theirs.get("bgnbd_fit_s") or 0) + (theirs.get("gamma_gamma_fit_s") or 0)
            if "bgnbd_fit_s" in theirs
            else None
        )
        out.append(
            (
                f"scoring fit BG/NBD+GG, {int(size):,} customers",
                _num(row.get("bgnbd_fit_s", 0) + row.get("gamma_gamma_fit_s", 0), " s", 2),
                f"lifetimes {_num(their_fit, ' s', 2)}; max param diff {worst:.1e}",
                "",
                "",
            )
        )
        out.append(
            (
                f"scoring refit + re-score (maths), {int(size):,}",
                _num(row.get("refit_and_rescore_s"), " s", 2),
                "",
                "< 60 s (1M)" if int(size) >= 1_000_000 else "",
                _verdict(row.get("refit_and_rescore_s", 1e9) < 60)
                if int(size) >= 1_000_000
                else "",
            )
        )
    recompute = _get(results, "scoring", "recompute")
    if isinstance(recompute, dict) and "recompute_s" in recompute:
        out.append(
            (
                f"scoring POST recompute, {recompute['customers']:,} customers",
                _num(recompute["recompute_s"], " s", 1)
                if recompute.get("finished", True)
                else f"> {recompute['recompute_s']:.0f} s ({_pct(_get(recompute, 'run', 'progress'))} done)",
                f"scan {_num(recompute.get('baseline_scan_s'), ' s', 2)}",
                "< 60 s" if recompute["customers"] >= 1_000_000 else "",
                _verdict(recompute["recompute_s"] < 60 and recompute.get("finished", True))
                if recompute["customers"] >= 1_000_000
                else "",
            )
        )
    for row in _get(results, "history", "by_history") or []:
        out.append(
            (
                f"handlers per event, {row['orders_before']} orders of history",
                f"scoring {_num(row['scoring_us'], ' us')}",
                f"whole history read {_num(row['scoring_without_summaries_us'], ' us')}; "
                f"lifecycle {_num(row['lifecycle_us'], ' us')}",
                "",
                "",
            )
        )
    totals = results.get("reconciliation")
    if isinstance(totals, dict) and "profile" in totals:
        out.append(
            (
                "reconciliation (every purchase once everywhere)",
                f"profile {totals['profile']:,}",
                f"lifecycle {totals.get('lifecycle_inbox', 0):,} scoring {totals.get('scoring_inbox', 0):,}",
                "equal, outbox empty",
                _verdict(bool(totals.get("reconciled"))),
            )
        )
    return out


def table(results: dict[str, Any]) -> str:
    header = ("figure", "measured", "baseline / comparison", "target", "")
    body = rows(results)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(5)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    errors = [
        f"  {name}: {value['error']}"
        for name, value in results.items()
        if isinstance(value, dict) and "error" in value
    ]
    missing = [f"  {name}: {value['missing']}" for name, value in _walk_missing(results)]
    lines = [
        f"crm bench  {results.get('date')}  commit {str(results.get('commit'))[:12]}  "
        f"kafka={_get(results, 'infrastructure', 'kafka')}  mode={results.get('mode')}  {results.get('duration_s')}s",
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in body),
    ]
    if errors:
        lines += ["sections that failed:", *errors]
    if missing:
        lines += ["not measurable yet (missing in the services):", *missing]
    return "\n".join(lines)


def _walk_missing(node: Any, name: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "missing" in node and isinstance(node["missing"], str):
            found.append((name, node))
        for key, value in node.items():
            found += _walk_missing(value, f"{name}.{key}" if name else key)
    return found


def chart(results_path: Path, png_path: Path) -> str | None:
    """Draw with a Python that has matplotlib (ours, else .cache/bench-venv); None if none."""
    if importlib.util.find_spec("matplotlib") is not None:
        python = sys.executable
    elif HELPER_PYTHON.exists():
        python = str(HELPER_PYTHON)
    else:
        print("no matplotlib: install the bench extra (or make bench creates .cache/bench-venv)")
        return None
    done = subprocess.run(
        [python, str(Path(__file__).with_name("chart.py")), str(results_path), str(png_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        print(f"chart failed: {done.stderr[-1500:]}")
        return None
    return str(png_path.relative_to(REPO) if png_path.is_relative_to(REPO) else png_path)


def _burst(burst: dict[str, Any]) -> str:
    """One burst of the latency tail: when, how many, how slow, and what ran beside it."""
    text = (
        f"at {burst['at_s']:g} s ({burst['orders']} over {burst['span_s']:g} s, "
        f"{_num(burst['worst_ms'])} ms"
    )
    if "first_hop_worst_ms" in burst:
        text += f", first hop {_num(burst['first_hop_worst_ms'])} ms"
    if "with" in burst:
        text += f"; with {', '.join(burst['with'])}" if burst["with"] else "; nothing beside it"
    return text + ")"
