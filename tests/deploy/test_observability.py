"""Dashboards and alerts query metrics the services really export, with labels they really
carry; the Kubernetes rules are the compose ones; Prometheus scrapes every API and worker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from deploy.observability import sync_rules
from shared.observability import metrics
from shared.platform import DEFAULT_PORTS, SERVICES

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# What an operator must see on the dashboard (the list), by metric.
DASHBOARD_MUST_SHOW = {
    "HTTP latency": "crm_http_request_duration_seconds_bucket",
    "events per second": "crm_events_consumed_total",
    "consumer lag": "crm_consumer_lag",
    "outbox backlog": "crm_outbox_backlog",
    "SLA breaches": "crm_sla_breaches_total",
}


def exported() -> dict[str, set[str]]:
    """Series name -> label names, for every metric in shared/observability/metrics.py."""
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name  # without the _total suffix of counters
            labels = set(metric._labelnames)
            for suffix in SUFFIXES[metric._type]:
                series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def expressions() -> dict[str, str]:
    alerts = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    found = {r["alert"]: r["expr"] for g in alerts["groups"] for r in g["rules"]}
    dashboard = json.loads((OBSERVABILITY / "grafana" / "crm-overview.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    return found


@pytest.mark.parametrize("where, expr", sorted(expressions().items()))
def test_queries_use_exported_metrics_and_labels(where: str, expr: str) -> None:
    series = exported()
    used = set(re.findall(r"\b(crm_[a-z_]+)\b", expr))
    assert used or "up{" in expr, where
    assert used <= set(series), (where, used - set(series))
    labels = set().union(*(series[m] for m in used)) if used else {"job", "instance"}
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        assert {g.strip() for g in group.split(",")} <= labels, (where, group)
    for label in re.findall(r"[{,]\s*([a-z_]+)\s*[=!]~?", expr):
        assert label in labels | {"job"}, (where, label)


def test_the_dashboard_shows_what_operators_need() -> None:
    panels = " ".join(e for w, e in expressions().items() if w.startswith("panel"))
    for what, series in DASHBOARD_MUST_SHOW.items():
        assert series in panels, what


def test_every_exported_metric_is_on_the_dashboard_or_alerted_on() -> None:
    text = " ".join(expressions().values())
    for name in {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}:
        assert name in text, name


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    source = yaml.safe_load((OBSERVABILITY / "grafana" / "datasources.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads((OBSERVABILITY / "grafana" / "crm-overview.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}


def test_kubernetes_rules_are_the_compose_alerts() -> None:
    path = REPO / "deploy/k8s/components/prometheus-operator/prometheus-rule.yaml"
    assert path.read_text() == sync_rules.render(), (
        "run `python deploy/observability/sync_rules.py`"
    )


def test_prometheus_scrapes_every_api_and_worker_of_compose(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    expected = {f"{s}-{role}:{DEFAULT_PORTS[s]}" for s in SERVICES for role in ("api", "worker")}
    assert targets == expected
    assert expected <= {
        f"{name}:{DEFAULT_PORTS[name.rsplit('-', 1)[0]]}"
        for name in compose["services"]
        if name.rsplit("-", 1)[0] in SERVICES
    }
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/observability/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_grafana_is_provisioned_from_the_files_in_the_repository(compose: dict[str, Any]) -> None:
    for volume in compose["services"]["grafana"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).is_file(), source
