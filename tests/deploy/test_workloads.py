"""The workloads as deployed: per service an API, a worker and a migration, on the contract's
ports and health endpoints, hardened, sized, reachable by what needs them and nothing else."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from deploy.inventory import Container, interpolate
from shared.platform import DEFAULT_PORTS, SERVICES

K8S = ("dev", "prod")
REPO = Path(__file__).resolve().parents[2]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def serve_argv(service: str, role: str) -> list[str]:
    port = str(DEFAULT_PORTS[service])
    return ["serve", service, "--role", role, "--host", "0.0.0.0", "--port", port]


@pytest.mark.parametrize("target", ["compose", *K8S])
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_api_worker_and_migration(
    containers: list[Container], target: str, service: str
) -> None:
    mine = {c.role: c for c in containers if c.target == target and c.service == service}
    assert mine["api"].argv == serve_argv(service, "api")
    assert mine["worker"].argv == serve_argv(service, "worker")
    assert mine["migration"].argv == ["migrate", service]


@pytest.mark.parametrize("target", K8S)
def test_pods_are_probed_on_the_health_endpoints(containers: list[Container], target: str) -> None:
    for c in (c for c in containers if c.target == target and c.role in ("api", "worker")):
        port = DEFAULT_PORTS[c.service or ""]
        assert c.spec["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        probes = {
            kind: c.spec[kind]["httpGet"]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probes["startupProbe"]["path"] == "/health/live"
        assert probes["livenessProbe"]["path"] == "/health/live"
        assert probes["readinessProbe"]["path"] == "/health/ready"
        assert all(p["port"] == "http" for p in probes.values())


@pytest.mark.parametrize("target", K8S)
def test_every_pod_is_scraped_where_it_serves_metrics(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    for deployment in of_kind(rendered[target], "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") not in ("api", "worker"):
            continue
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert (
            int(annotations["prometheus.io/port"])
            == DEFAULT_PORTS[labels["app.kubernetes.io/name"]]
        )


@pytest.mark.parametrize("target", K8S)
def test_every_pod_is_hardened_and_sized(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    for workload in (
        d for d in rendered[target] if d["kind"] in ("Deployment", "StatefulSet", "Job")
    ):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, name
            assert set(container["resources"]["limits"]) == {"cpu", "memory"}, name
            if container["image"].split(":")[0].endswith("crm-lifecycle"):
                assert security["readOnlyRootFilesystem"] is True, name
                assert pod["securityContext"]["runAsUser"] == 10001, name
                assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name


@pytest.mark.parametrize("target", K8S)
def test_services_hpas_and_budgets_point_at_the_right_pods(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    docs = rendered[target]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in of_kind(docs, "Deployment")
    }
    for service in SERVICES:
        (svc,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == service]
        assert [
            n
            for n, labels in pods.items()
            if selects({"matchLabels": svc["spec"]["selector"]}, labels)
        ] == [f"{service}-api"]
        assert svc["spec"]["ports"] == [
            {
                "name": "http",
                "port": DEFAULT_PORTS[service],
                "targetPort": "http",
                "protocol": "TCP",
            }
        ]
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert targets == {f"{s}-api" for s in SERVICES}
    budgets = of_kind(docs, "PodDisruptionBudget")
    for service in SERVICES:
        for role in ("api", "worker"):
            matching = [
                b for b in budgets if selects(b["spec"]["selector"], pods[f"{service}-{role}"])
            ]
            assert len(matching) == 1, (service, role)
    for deployment in of_kind(docs, "Deployment"):
        assert selects(
            deployment["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
        )


@pytest.mark.parametrize("target", K8S)
def test_every_pod_of_ours_has_a_network_policy(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    policies = of_kind(rendered[target], "NetworkPolicy")
    for workload in (
        d for d in rendered[target] if d["kind"] in ("Deployment", "Job", "StatefulSet")
    ):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert matching, workload["metadata"]["name"]


@pytest.mark.parametrize("target", K8S)
def test_only_the_ingress_controller_and_monitoring_reach_the_services(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    policies = {
        p["metadata"]["name"]: p["spec"] for p in of_kind(rendered[target], "NetworkPolicy")
    }
    for service in SERVICES:
        port = DEFAULT_PORTS[service]
        sources = {
            role: [
                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in policies[f"{service}-{role}"]["ingress"]
                for peer in rule["from"]
            ]
            for role in ("api", "worker")
        }
        assert sorted(sources["api"]) == ["ingress-nginx", "monitoring"]
        assert sources["worker"] == ["monitoring"]
        for role in ("api", "worker"):
            for rule in policies[f"{service}-{role}"]["ingress"]:
                assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
            egress_ports = {
                p["port"] for rule in policies[f"{service}-{role}"]["egress"] for p in rule["ports"]
            }
            allowed = {53, 5432, 9092, 9093} | (
                {443} if target == "prod" and role == "api" else set()
            )
            assert egress_ports == allowed, (service, role, egress_ports)
        assert policies[f"{service}-migration"]["ingress"] == []


def test_production_trusts_the_kafka_and_postgres_cas_it_is_told_to(
    containers: list[Container],
) -> None:
    for c in (c for c in containers if c.target == "prod"):
        mounts = {m["mountPath"]: m["name"] for m in c.spec["volumeMounts"]}
        volumes = {v["name"]: v for v in c.pod["volumes"]}
        for variable, secret in (
            ("KAFKA_SSL_CAFILE", "crm-kafka-cluster-ca-cert"),
            ("PGSSLROOTCERT", "crm-postgres-ca"),
        ):
            directory, _, filename = (c.env[variable] or "").rpartition("/")
            volume = volumes[mounts[directory]]
            assert volume["secret"]["secretName"] == secret, c.workload
            assert {"key": "ca.crt", "path": filename} in volume["secret"]["items"]


def test_workers_scale_within_the_partitions_in_production(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for deployment in of_kind(rendered["prod"], "Deployment"):
        if (
            deployment["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            == "worker"
        ):
            assert 2 <= deployment["spec"]["replicas"] <= 6
    for hpa in of_kind(rendered["prod"], "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("target", K8S)
def test_one_namespace_and_one_image(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    expected = {"dev": "crm-dev", "prod": "crm"}[target]
    for doc in rendered[target]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == expected, doc["metadata"]["name"]
    images = {
        c["image"]
        for d in rendered[target]
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1 and ":" in images.pop()


def test_compose_starts_services_after_their_migration_topics_and_broker(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for service in SERVICES:
        migrate = services[f"{service}-migrate"]
        assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        for role in ("api", "worker"):
            depends = services[f"{service}-{role}"]["depends_on"]
            assert depends == {
                "kafka": {"condition": "service_healthy"},
                "kafka-topics": {"condition": "service_completed_successfully"},
                f"{service}-migrate": {"condition": "service_completed_successfully"},
            }
            assert services[f"{service}-{role}"]["healthcheck"]["test"][-1] == "--ready"
        assert services[f"{service}-api"]["ports"] == [
            f"${{CRM_BIND_ADDRESS:-127.0.0.1}}:{DEFAULT_PORTS[service]}:{DEFAULT_PORTS[service]}"
        ]
    assert services["postgres"]["healthcheck"] and services["kafka"]["healthcheck"]


def test_compose_keeps_state_in_named_volumes(compose: dict[str, Any]) -> None:
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("kafka", "/var/lib/kafka/data")):
        volume = next(v for v in compose["services"][name]["volumes"] if v.endswith(mount))
        assert volume.split(":")[0] in compose["volumes"]


def test_compose_kafka_is_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_and_the_dev_cluster_create_the_databases_alike() -> None:
    compose_script = REPO / "deploy/compose/postgres/init-databases.sh"
    dev_script = REPO / "deploy/k8s/overlays/dev/init-databases.sh"
    assert dev_script.read_text() == compose_script.read_text(), "copy the compose script over"
    assert '--set role="crm_${service}"' in compose_script.read_text()
    assert "for service in " + " ".join(SERVICES) + "; do" in compose_script.read_text()


def test_kraft_cluster_ids_are_base64url_uuids(
    compose: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """kafka-storage.sh format refuses anything else, and the broker never starts."""
    ids = [compose["services"]["kafka"]["environment"]["CLUSTER_ID"]]
    for statefulset in of_kind(rendered["dev"], "StatefulSet"):
        for container in statefulset["spec"]["template"]["spec"]["containers"]:
            ids += [e["value"] for e in container.get("env", []) if e["name"] == "CLUSTER_ID"]
    assert len(ids) == 2
    for cluster_id in ids:
        value = interpolate(cluster_id)
        assert len(value) == 22 and len(base64.urlsafe_b64decode(value + "==")) == 16, value
