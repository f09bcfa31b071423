"""The containers of our image in docker-compose.yml and in rendered Kubernetes manifests, seen
the same way (service, role, `crm` arguments, environment, Secret references), and the
environment variables each service's settings class reads. Used by tests/deploy."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from shared.platform import SERVICES
from shared.settings import ServiceSettings

IMAGE = "crm-lifecycle"


@dataclass
class Container:
    """One container of our image, wherever it is declared."""

    target: str  # "compose", "dev" or "prod"
    workload: str  # compose service name, or Kind/name in Kubernetes
    service: str | None  # profile, lifecycle, complaints, scoring; None for tools
    role: str  # api, worker, migration, toolbox, topics, tools
    argv: list[str]  # the arguments given to `crm`
    env: dict[str, str | None]  # value, or None where it comes from a Secret
    secret_refs: dict[str, tuple[str, str]] = field(default_factory=dict)  # env -> (secret, key)
    spec: dict[str, Any] = field(default_factory=dict)  # the container (k8s) or service (compose)
    pod: dict[str, Any] = field(default_factory=dict)  # the pod spec (k8s)
    labels: dict[str, str] = field(default_factory=dict)  # pod labels (k8s)


_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{service}.config")
    (cls,) = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, ServiceSettings)
        and v is not ServiceSettings
        and v.__module__ == module.__name__
    ]
    return cls


def env_names(cls: type[ServiceSettings]) -> set[str]:
    """The environment variables a settings class reads: each field's validation_alias (or the
    field's own name, which pydantic-settings reads when there is no alias)."""
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(name.upper())
        elif isinstance(alias, str):
            names.add(alias)
        else:
            choices = getattr(alias, "choices", [])
            names.update(c for c in choices if isinstance(c, str))
    return names


def compose_containers(compose: dict[str, Any]) -> list[Container]:
    found = []
    for name, svc in compose["services"].items():
        if not str(svc.get("image", "")).startswith("${CRM_IMAGE"):
            continue
        service, _, suffix = name.rpartition("-")
        role = {"api": "api", "worker": "worker", "migrate": "migration"}.get(suffix)
        if role is None or service not in SERVICES:
            service, role = None, "tools"
        env = {k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        found.append(
            Container(
                target="compose",
                workload=name,
                service=service,
                role=role,
                argv=[str(a) for a in svc.get("command", [])],
                env=dict(env),
                spec=svc,
            )
        )
    return found


def k8s_containers(target: str, docs: list[dict[str, Any]]) -> list[Container]:
    config_maps = {
        d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"
    }
    found = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        template = doc["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        for container in template["spec"]["containers"]:
            if not container["image"].split(":")[0].endswith(IMAGE):
                continue
            env: dict[str, str | None] = {}
            secret_refs = {}
            for source in container.get("envFrom", []):
                assert "configMapRef" in source, f"{doc['metadata']['name']}: envFrom {source}"
                env.update(config_maps[source["configMapRef"]["name"]])
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_refs[item["name"]] = (ref["name"], ref["key"])
                    env[item["name"]] = None
                else:
                    env[item["name"]] = item.get("value", "")
            name = labels.get("app.kubernetes.io/name")
            found.append(
                Container(
                    target=target,
                    workload=f"{doc['kind']}/{doc['metadata']['name']}",
                    service=name if name in SERVICES else None,
                    role=labels.get("app.kubernetes.io/component", "?"),
                    argv=[str(a) for a in container.get("args", container.get("command", []))],
                    env=env,
                    secret_refs=secret_refs,
                    spec=container,
                    pod=template["spec"],
                    labels=labels,
                )
            )
    return found
