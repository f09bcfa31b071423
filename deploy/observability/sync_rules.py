"""Write deploy/k8s/components/prometheus-operator/prometheus-rule.yaml from alerts.yml (the one
source of the alerts): `python deploy/observability/sync_rules.py`."""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULE = HERE.parent / "k8s" / "components" / "prometheus-operator" / "prometheus-rule.yaml"


def render() -> str:
    alerts = yaml.safe_load((HERE / "alerts.yml").read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "crm-lifecycle"},
        "spec": alerts,
    }
    header = (
        "# Generated from deploy/observability/alerts.yml by deploy/observability/sync_rules.py.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=100)


if __name__ == "__main__":
    RULE.write_text(render())
    print(f"wrote {RULE}")
